//! The key vault: license keys are stored as AES-256-GCM ciphertexts bound to their
//! row, and deduplicated by an HMAC fingerprint computed with a separate secret.

use std::{collections::HashMap, fmt};

use aes_gcm::{
    Aes256Gcm, Nonce,
    aead::{Aead, KeyInit, Payload},
};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;
use uuid::Uuid;

/// 32 bytes of secret key material; its Debug output never shows the bytes.
pub struct KeyMaterial(SecretBox<[u8; 32]>);

impl KeyMaterial {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
    }
    fn bytes(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial([redacted])")
    }
}

/// A sealed license key as stored in the `keys` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub nonce: [u8; 12],
    pub enc_key_id: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("no encryption key with id {0:?} is configured")]
    UnknownKeyId(String),
    #[error("ciphertext failed authentication (tampered, moved to another row, or wrong key)")]
    Authentication,
    #[error("decrypted key is not valid UTF-8")]
    NotUtf8,
}

pub struct Vault {
    current_id: String,
    ciphers: HashMap<String, Aes256Gcm>,
    fingerprint: KeyMaterial,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("current_id", &self.current_id)
            .finish_non_exhaustive()
    }
}

/// Binds a ciphertext to the row it was written for: decrypting it under another key id
/// or pool fails instead of returning another row's key.
fn aad(key_id: Uuid, pool_id: Uuid) -> [u8; 47] {
    let mut out = [0u8; 47];
    out[..15].copy_from_slice(b"autokey:key:v1:");
    out[15..31].copy_from_slice(key_id.as_bytes());
    out[31..].copy_from_slice(pool_id.as_bytes());
    out
}

/// Binds a sealed secret to its owner, apart from keys' AAD ("autokey:key:v1:...").
fn secret_aad(label: &str, owner: Uuid) -> Vec<u8> {
    let mut out = format!("autokey:secret:v1:{label}:").into_bytes();
    out.extend_from_slice(owner.as_bytes());
    out
}

impl Vault {
    pub fn new(
        current_id: String,
        current: KeyMaterial,
        retired: HashMap<String, KeyMaterial>,
        fingerprint: KeyMaterial,
    ) -> Self {
        let mut ciphers: HashMap<String, Aes256Gcm> = retired
            .iter()
            .map(|(id, k)| (id.clone(), Aes256Gcm::new(k.bytes().into())))
            .collect();
        ciphers.insert(current_id.clone(), Aes256Gcm::new(current.bytes().into()));
        Self {
            current_id,
            ciphers,
            fingerprint,
        }
    }

    /// A vault with random keys, for tests and benchmarks.
    pub fn random() -> Self {
        let mut rng = rand::rngs::OsRng;
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut a);
        rng.fill_bytes(&mut b);
        Self::new(
            "k1".into(),
            KeyMaterial::new(a),
            HashMap::new(),
            KeyMaterial::new(b),
        )
    }

    pub fn current_key_id(&self) -> &str {
        &self.current_id
    }

    /// Whether a key with this id is configured (current or retired).
    pub fn knows(&self, key_id: &str) -> bool {
        self.ciphers.contains_key(key_id)
    }

    /// Encrypts `plaintext` for the row (`key_id`, `pool_id`) with a fresh random nonce.
    pub fn seal(&self, key_id: Uuid, pool_id: Uuid, plaintext: &str) -> Sealed {
        let cipher = &self.ciphers[&self.current_id];
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad(key_id, pool_id),
                },
            )
            .expect("AES-GCM encryption of a short message cannot fail");
        Sealed {
            ciphertext,
            nonce,
            enc_key_id: self.current_id.clone(),
        }
    }

    /// Decrypts a sealed key of row (`key_id`, `pool_id`) with the key it names.
    pub fn open(&self, key_id: Uuid, pool_id: Uuid, sealed: &Sealed) -> Result<String, VaultError> {
        let cipher = self
            .ciphers
            .get(&sealed.enc_key_id)
            .ok_or_else(|| VaultError::UnknownKeyId(sealed.enc_key_id.clone()))?;
        let plain = cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad(key_id, pool_id),
                },
            )
            .map_err(|_| VaultError::Authentication)?;
        String::from_utf8(plain).map_err(|_| VaultError::NotUtf8)
    }

    /// Seals a secret the service must use again later (a webhook endpoint's signing
    /// secret), bound to what it belongs to: `label` names the kind of owner, `owner` its id.
    pub fn seal_secret(&self, label: &str, owner: Uuid, secret: &[u8]) -> Sealed {
        let cipher = &self.ciphers[&self.current_id];
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = secret_aad(label, owner);
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of a short message cannot fail");
        Sealed {
            ciphertext,
            nonce,
            enc_key_id: self.current_id.clone(),
        }
    }

    /// Opens what [`Vault::seal_secret`] sealed for (`label`, `owner`).
    pub fn open_secret(
        &self,
        label: &str,
        owner: Uuid,
        sealed: &Sealed,
    ) -> Result<Vec<u8>, VaultError> {
        let cipher = self
            .ciphers
            .get(&sealed.enc_key_id)
            .ok_or_else(|| VaultError::UnknownKeyId(sealed.enc_key_id.clone()))?;
        cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &secret_aad(label, owner),
                },
            )
            .map_err(|_| VaultError::Authentication)
    }

    /// HMAC-SHA256(FINGERPRINT_KEY, NFC(key)): the global dedupe fingerprint of a trimmed
    /// key, the same for every Unicode spelling of one visible key.
    pub fn fingerprint(&self, key: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.fingerprint.bytes())
            .expect("HMAC accepts any key length");
        mac.update(crate::text::key_identity(key).as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn ids() -> (Uuid, Uuid) {
        (Uuid::now_v7(), Uuid::now_v7())
    }

    #[test]
    fn round_trip() {
        let v = Vault::random();
        let (k, p) = ids();
        let sealed = v.seal(k, p, "ABCDE-12345-FGHIJ");
        assert_eq!(sealed.enc_key_id, "k1");
        assert_ne!(sealed.ciphertext, b"ABCDE-12345-FGHIJ");
        assert_eq!(v.open(k, p, &sealed).unwrap(), "ABCDE-12345-FGHIJ");
    }

    #[test]
    fn every_flipped_bit_fails() {
        let v = Vault::random();
        let (k, p) = ids();
        let sealed = v.seal(k, p, "XXXXX-YYYYY");
        for i in 0..sealed.ciphertext.len() * 8 {
            let mut bad = sealed.clone();
            bad.ciphertext[i / 8] ^= 1 << (i % 8);
            assert_eq!(
                v.open(k, p, &bad),
                Err(VaultError::Authentication),
                "bit {i}"
            );
        }
        for i in 0..96 {
            let mut bad = sealed.clone();
            bad.nonce[i / 8] ^= 1 << (i % 8);
            assert_eq!(
                v.open(k, p, &bad),
                Err(VaultError::Authentication),
                "nonce bit {i}"
            );
        }
    }

    #[test]
    fn ciphertext_moved_to_another_row_fails() {
        let v = Vault::random();
        let (k, p) = ids();
        let sealed = v.seal(k, p, "MOVED-KEY-1");
        assert_eq!(
            v.open(Uuid::now_v7(), p, &sealed),
            Err(VaultError::Authentication)
        );
        assert_eq!(
            v.open(k, Uuid::now_v7(), &sealed),
            Err(VaultError::Authentication)
        );
    }

    #[test]
    fn wrong_key_fails() {
        let a = Vault::random();
        let b = Vault::random();
        let (k, p) = ids();
        let sealed = a.seal(k, p, "WRONG-KEY-1");
        assert_eq!(b.open(k, p, &sealed), Err(VaultError::Authentication));
    }

    #[test]
    fn unknown_key_id_is_an_error() {
        let v = Vault::random();
        let (k, p) = ids();
        let mut sealed = v.seal(k, p, "SOME-KEY-1");
        sealed.enc_key_id = "k9".into();
        assert_eq!(
            v.open(k, p, &sealed),
            Err(VaultError::UnknownKeyId("k9".into()))
        );
    }

    #[test]
    fn retired_key_still_decrypts_and_new_seals_use_current() {
        let old = [7u8; 32];
        let new = [9u8; 32];
        let fp = [1u8; 32];
        let before = Vault::new(
            "k1".into(),
            KeyMaterial::new(old),
            HashMap::new(),
            KeyMaterial::new(fp),
        );
        let (k, p) = ids();
        let sealed = before.seal(k, p, "ROTATE-ME-1");
        let after = Vault::new(
            "k2".into(),
            KeyMaterial::new(new),
            HashMap::from([("k1".to_string(), KeyMaterial::new(old))]),
            KeyMaterial::new(fp),
        );
        assert_eq!(after.open(k, p, &sealed).unwrap(), "ROTATE-ME-1");
        assert_eq!(after.seal(k, p, "x").enc_key_id, "k2");
        // Rotation of the encryption key leaves fingerprints unchanged.
        assert_eq!(
            before.fingerprint("ROTATE-ME-1"),
            after.fingerprint("ROTATE-ME-1")
        );
    }

    #[test]
    fn secrets_are_bound_to_their_owner() {
        let v = Vault::random();
        let owner = Uuid::now_v7();
        let sealed = v.seal_secret("webhook-endpoint", owner, b"whsec-bytes");
        assert_eq!(
            v.open_secret("webhook-endpoint", owner, &sealed).unwrap(),
            b"whsec-bytes"
        );
        assert!(
            v.open_secret("webhook-endpoint", Uuid::now_v7(), &sealed)
                .is_err()
        );
        assert!(v.open_secret("other", owner, &sealed).is_err());
        // Not openable as a key of any row either.
        assert!(v.open(owner, Uuid::nil(), &sealed).is_err());
    }

    #[test]
    fn fingerprint_is_keyed() {
        let a = Vault::random();
        let b = Vault::random();
        assert_eq!(a.fingerprint("KEY-00001"), a.fingerprint("KEY-00001"));
        assert_ne!(a.fingerprint("KEY-00001"), a.fingerprint("KEY-00002"));
        assert_ne!(a.fingerprint("KEY-00001"), b.fingerprint("KEY-00001"));
    }

    #[test]
    fn nonces_are_distinct_over_100k_encryptions() {
        let v = Vault::random();
        let (k, p) = ids();
        let nonces: HashSet<[u8; 12]> = (0..100_000)
            .map(|_| v.seal(k, p, "SAME-KEY-1").nonce)
            .collect();
        assert_eq!(nonces.len(), 100_000);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let m = KeyMaterial::new([0xAB; 32]);
        assert!(!format!("{m:?}").to_lowercase().contains("ab"));
        assert!(!format!("{:?}", Vault::random()).contains("fingerprint"));
    }
}
