//! An issuer's signing keys: found through its discovery document
//! (`/.well-known/openid-configuration` -> `jwks_uri`), kept in memory, fetched again when
//! a token names a `kid` they do not have (a key rotation), but at most once per
//! [`OidcConfig::min_refresh_interval`], so a flood of made-up `kid`s costs the provider one
//! request a minute; and every [`REFRESH_EVERY`] in the background, so a key the provider
//! withdrew stops being accepted.
//!
//! Only keys autokey would verify with are kept: RSA (RS256), P-256 (ES256) and Ed25519
//! (EdDSA) public keys meant for signatures. A symmetric key is never loaded, so an
//! HMAC-signed token has no key to be checked against.
//!
//! [`OidcConfig::min_refresh_interval`]: super::settings::OidcConfig

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use serde::Deserialize;

/// How often the keys are fetched again whatever the tokens say.
pub const REFRESH_EVERY: Duration = Duration::from_secs(15 * 60);
/// After a failed fetch with no keys at all, the next may come this soon.
const RETRY_EMPTY_AFTER: Duration = Duration::from_secs(5);
/// A discovery document or key set larger than this is refused.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// A public key and the one algorithm it verifies.
pub struct VerifyingKey {
    pub key: DecodingKey,
    pub alg: Algorithm,
}

pub enum Lookup {
    Found(Arc<VerifyingKey>),
    /// The provider does not publish it (after a fetch, or too soon after the last one).
    Unknown,
    /// The keys could not be fetched: not the token's fault.
    Unavailable,
}

#[derive(Default)]
struct Refresh {
    last_attempt: Option<Instant>,
    ever_loaded: bool,
}

pub struct IssuerKeys {
    issuer: String,
    http: reqwest::Client,
    min_refresh_interval: Duration,
    keys: RwLock<Arc<HashMap<String, Arc<VerifyingKey>>>>,
    /// Successful fetches so far: a token verified before the last one is verified again
    /// (its key may have been withdrawn).
    generation: AtomicU64,
    /// Serializes fetches: concurrent requests naming the same new `kid` wait for one.
    refresh: tokio::sync::Mutex<Refresh>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct KeySet {
    keys: Vec<serde_json::Value>,
}

impl IssuerKeys {
    pub fn new(issuer: String, http: reqwest::Client, min_refresh_interval: Duration) -> Self {
        Self {
            issuer,
            http,
            min_refresh_interval,
            keys: RwLock::new(Arc::default()),
            generation: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(Refresh::default()),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn cached(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        self.keys.read().expect("keys lock").get(kid).cloned()
    }

    /// The key `kid`, fetching the issuer's keys again if it is new and the last fetch
    /// is old enough.
    pub async fn find(&self, kid: &str) -> Lookup {
        if let Some(key) = self.cached(kid) {
            return Lookup::Found(key);
        }
        let mut refresh = self.refresh.lock().await;
        // Another request may have fetched them while this one waited.
        if let Some(key) = self.cached(kid) {
            return Lookup::Found(key);
        }
        let wait = if refresh.ever_loaded {
            self.min_refresh_interval
        } else {
            RETRY_EMPTY_AFTER.min(self.min_refresh_interval)
        };
        if refresh.last_attempt.is_some_and(|at| at.elapsed() < wait) {
            return match refresh.ever_loaded {
                true => Lookup::Unknown,
                false => Lookup::Unavailable,
            };
        }
        match self.fetch_now(&mut refresh).await {
            Ok(()) => self.cached(kid).map_or(Lookup::Unknown, Lookup::Found),
            Err(()) => Lookup::Unavailable,
        }
    }

    /// Fetches the keys now (at start and every [`REFRESH_EVERY`]); a failure keeps the
    /// keys already known.
    pub async fn refresh(&self) {
        let mut refresh = self.refresh.lock().await;
        let _ = self.fetch_now(&mut refresh).await;
    }

    async fn fetch_now(&self, refresh: &mut Refresh) -> Result<(), ()> {
        refresh.last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(issuer = %self.issuer, keys = keys.len(), "OpenID provider keys fetched");
                *self.keys.write().expect("keys lock") = Arc::new(keys);
                self.generation.fetch_add(1, Ordering::SeqCst);
                refresh.ever_loaded = true;
                Ok(())
            }
            Err(err) => {
                tracing::warn!(issuer = %self.issuer, error = %err, "cannot fetch the OpenID provider's keys");
                Err(())
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<VerifyingKey>>, String> {
        let discovery: Discovery = self.get_json(&discovery_url(&self.issuer)).await?;
        // OpenID Connect Discovery 1.0, section 4.3: the document names the issuer it is for.
        if discovery.issuer != self.issuer {
            return Err(format!(
                "the discovery document is for issuer {:?}",
                discovery.issuer
            ));
        }
        let set: KeySet = self.get_json(&discovery.jwks_uri).await?;
        Ok(set
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter_map(|jwk| {
                let (kid, key) = verifying_key(&jwk)?;
                Some((kid, Arc::new(key)))
            })
            .collect())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(format!("GET {url}: the document is too large"));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("GET {url}: the document is too large"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: {e}"))
    }
}

/// `<issuer>/.well-known/openid-configuration` (OpenID Connect Discovery 1.0, section 4).
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// The key of a JWK autokey would verify with, by its `kid`; None for any other (no kid,
/// meant for encryption, symmetric, another curve or algorithm).
fn verifying_key(jwk: &Jwk) -> Option<(String, VerifyingKey)> {
    let kid = jwk.common.key_id.clone()?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        Some(_) => return None,
    };
    if declared.is_some_and(|d| d != alg) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, VerifyingKey { key, alg }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(value: serde_json::Value) -> Option<Algorithm> {
        verifying_key(&serde_json::from_value(value).unwrap()).map(|(_, k)| k.alg)
    }

    #[test]
    fn only_signature_keys_of_the_three_algorithms_are_kept() {
        let ed = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "e",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert_eq!(jwk(ed.clone()), Some(Algorithm::EdDSA));
        let mut no_kid = ed.clone();
        no_kid.as_object_mut().unwrap().remove("kid");
        assert_eq!(jwk(no_kid), None);
        let mut for_encryption = ed.clone();
        for_encryption["use"] = "enc".into();
        assert_eq!(jwk(for_encryption), None);
        let mut other_alg = ed;
        other_alg["alg"] = "ES256".into();
        assert_eq!(jwk(other_alg), None);
        // A symmetric key is never a verifying key (no algorithm confusion).
        assert_eq!(
            jwk(serde_json::json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"})),
            None
        );
    }

    #[test]
    fn the_discovery_document_is_under_the_issuer() {
        assert_eq!(
            discovery_url("https://id.example/realms/shop/"),
            "https://id.example/realms/shop/.well-known/openid-configuration"
        );
    }
}
