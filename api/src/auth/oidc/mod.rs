//! JWT access tokens of the marketplace's OpenID Connect provider (API.md, "Sign-in with
//! the marketplace's identity provider"), verified with `jsonwebtoken` against the keys
//! the issuer publishes: RS256, ES256 or EdDSA only; `iss` a configured issuer, `aud`
//! containing `OIDC_AUDIENCE`, `exp` and `nbf` with 60 s of leeway; the role from the
//! configured claim, admin only for the listed subjects; (iss, sub) mapped to one stable
//! autokey id (`store::identities`), so a JWT acts as a seller, buyer or storefront exactly
//! as an autokey token bound to that id would.
//!
//! A refused token gets a reason (`ApiError::InvalidToken`), sent back in the 401's
//! `WWW-Authenticate: Bearer error="invalid_token", error_description="..."`.

pub mod code_flow;
pub mod keys;
mod role;
pub mod settings;

use std::{collections::HashMap, sync::Arc, time::Duration};

use autokey_shared::{
    model::Role,
    store::{identities, tokens::Principal},
};
use base64::{
    Engine,
    alphabet::URL_SAFE,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use self::{
    keys::{IssuerKeys, Lookup},
    settings::OidcConfig,
};
use crate::error::ApiError;

/// What a JWT's header and claims may be checked with; 60 s either side of `exp` and `nbf`.
const LEEWAY_SECS: u64 = 60;
/// Identities remembered (their rows exist: no database round trip for them).
const IDENTITIES: u64 = 100_000;
/// Tokens verified recently, remembered by their SHA-256 so that a storefront's or seller's
/// next request with the same token costs a hash, not a signature check.
const VERIFIED: u64 = 100_000;
const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// A token already verified: good until its `exp` (plus the leeway), while its issuer's
/// keys are the ones it was verified with.
#[derive(Clone)]
struct Remembered {
    principal: Principal,
    exp: i64,
    keys: Arc<IssuerKeys>,
    generation: u64,
}

/// The issuers' keys and the identities seen, one per api process.
pub struct JwtVerifier {
    config: OidcConfig,
    issuers: HashMap<String, Arc<IssuerKeys>>,
    /// (iss, sub, role) -> autokey id, for accounts whose rows are known to exist.
    identities: moka::sync::Cache<(String, String, Role), Uuid>,
    verified: moka::sync::Cache<[u8; 32], Remembered>,
    pub(crate) http: reqwest::Client,
}

/// A verified token's claims, with the issuer that signed it.
pub struct Verified {
    pub issuer: String,
    pub claims: Map<String, Value>,
    /// The issuer's key generation before its key was looked up (a fetch meanwhile only
    /// makes a remembered verification stale).
    generation: u64,
}

impl Verified {
    pub fn str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// `exp`, in seconds since the epoch (present: it is required).
    pub fn expires_at(&self) -> i64 {
        self.claims.get("exp").and_then(Value::as_i64).unwrap_or(0)
    }
}

/// Header fields read before the signature is checked, to say why a token is refused.
#[derive(Deserialize)]
struct PeekHeader {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct PeekClaims {
    iss: Option<Value>,
}

/// A refusal with its reason, cut to 200 characters (it may quote what the token says).
fn refuse(why: impl Into<String>) -> ApiError {
    let mut why: String = why.into();
    if let Some((cut, _)) = why.char_indices().nth(200) {
        why.truncate(cut);
        why.push_str("...");
    }
    ApiError::InvalidToken(why)
}

/// A bearer token shaped like a JWT (three dot-separated parts), not an autokey token.
pub fn looks_like_jwt(token: &str) -> bool {
    !token.starts_with(autokey_shared::store::tokens::TOKEN_PREFIX) && token.split('.').count() == 3
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    const B64: GeneralPurpose = GeneralPurpose::new(
        &URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    serde_json::from_slice(&B64.decode(part).ok()?).ok()
}

impl JwtVerifier {
    /// The verifier of `config`; fetches each issuer's keys now and every
    /// [`keys::REFRESH_EVERY`] in the background.
    pub fn start(config: OidcConfig) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            // Requests to the provider are rare (a key fetch, a sign-in): a connection idle
            // longer may have been closed by the provider (Node's default is 5 s), and a
            // request sent on it would fail.
            .pool_idle_timeout(Duration::from_secs(4))
            .build()
            .expect("HTTP client");
        let issuers: HashMap<String, Arc<IssuerKeys>> = config
            .issuers
            .iter()
            .map(|issuer| {
                let keys =
                    IssuerKeys::new(issuer.clone(), http.clone(), config.min_refresh_interval);
                (issuer.clone(), Arc::new(keys))
            })
            .collect();
        for keys in issuers.values() {
            let weak = Arc::downgrade(keys);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(keys::REFRESH_EVERY);
                loop {
                    tick.tick().await;
                    let Some(keys) = weak.upgrade() else { return };
                    keys.refresh().await;
                }
            });
        }
        Arc::new(Self {
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED)
                .time_to_live(VERIFIED_TTL)
                .build(),
            identities: moka::sync::Cache::builder()
                .max_capacity(IDENTITIES)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            config,
            issuers,
            http,
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// The principal of an access token; a refused one is `ApiError::InvalidToken` with
    /// the reason, unreachable keys or database `ApiError::Unavailable`.
    pub async fn authenticate(&self, pool: &PgPool, token: &str) -> Result<Principal, ApiError> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(seen) = self.verified.get(&hash) {
            let now = chrono::Utc::now().timestamp();
            if now <= seen.exp + LEEWAY_SECS as i64 && seen.keys.generation() == seen.generation {
                return Ok(seen.principal);
            }
            self.verified.invalidate(&hash);
        }
        let verified = self.verify(token, &self.config.audience).await?;
        let keys = self.issuers[&verified.issuer].clone();
        let generation = verified.generation;
        let exp = verified.expires_at();
        let principal = self.principal_of(pool, verified).await?;
        self.verified.insert(
            hash,
            Remembered {
                principal,
                exp,
                keys,
                generation,
            },
        );
        Ok(principal)
    }

    /// The principal of a verified access token: its role and its account's autokey id.
    pub async fn principal_of(
        &self,
        pool: &PgPool,
        verified: Verified,
    ) -> Result<Principal, ApiError> {
        let sub = verified
            .str("sub")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| refuse("the token has no subject (sub)"))?
            .to_owned();
        let role = role::of(&verified.claims, &self.config.role_claim)?;
        if role == Role::Admin
            && !self
                .config
                .admins
                .contains(&(verified.issuer.clone(), sub.clone()))
        {
            return Err(refuse(
                "the admin role is only for the accounts in OIDC_ADMIN_SUBJECTS",
            ));
        }
        let id = self.identity(pool, verified.issuer, sub, role).await?;
        Ok(Principal {
            token_id: id,
            role,
            subject: role.has_subject().then_some(id),
        })
    }

    async fn identity(
        &self,
        pool: &PgPool,
        issuer: String,
        sub: String,
        role: Role,
    ) -> Result<Uuid, ApiError> {
        let key = (issuer, sub, role);
        if let Some(id) = self.identities.get(&key) {
            return Ok(id);
        }
        let mut conn = pool.acquire().await?;
        let id = identities::resolve(&mut conn, &key.0, &key.1, role).await?;
        self.identities.insert(key, id);
        Ok(id)
    }

    /// Checks `token`'s signature with its issuer's key and its `iss`, `aud` (containing
    /// `audience`), `exp` and `nbf`; returns its claims.
    pub async fn verify(&self, token: &str, audience: &str) -> Result<Verified, ApiError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refuse("the token is not a JWT"));
        };
        let header: PeekHeader =
            decode_part(header).ok_or_else(|| refuse("the token's header is malformed"))?;
        let alg = match header.alg.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            "EdDSA" => Algorithm::EdDSA,
            none if none.eq_ignore_ascii_case("none") => {
                return Err(refuse("unsigned tokens (alg none) are refused"));
            }
            hmac if hmac.starts_with("HS") => {
                return Err(refuse(format!(
                    "HMAC-signed tokens ({hmac}) are refused: RS256, ES256 or EdDSA only"
                )));
            }
            other => {
                return Err(refuse(format!(
                    "algorithm {other:?} is refused: RS256, ES256 or EdDSA only"
                )));
            }
        };
        let claims: PeekClaims =
            decode_part(payload).ok_or_else(|| refuse("the token's claims are malformed"))?;
        let issuer = match claims.iss {
            Some(Value::String(iss)) => iss,
            Some(_) => return Err(refuse("the token's issuer (iss) is not a string")),
            None => return Err(refuse("the token has no issuer (iss)")),
        };
        let Some(keys) = self.issuers.get(&issuer) else {
            return Err(refuse(format!(
                "issuer {issuer:?} is not accepted here (OIDC_ISSUERS)"
            )));
        };
        let kid = header
            .kid
            .ok_or_else(|| refuse("the token names no signing key (kid)"))?;
        let generation = keys.generation();
        let key = match keys.find(&kid).await {
            Lookup::Found(key) => key,
            Lookup::Unknown => {
                return Err(refuse(format!(
                    "unknown signing key {kid:?}: the issuer does not publish it"
                )));
            }
            Lookup::Unavailable => return Err(ApiError::Unavailable),
        };
        if key.alg != alg {
            return Err(refuse(format!(
                "key {kid:?} is a {:?} key, the token says {alg:?}",
                key.alg
            )));
        }
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| refuse(reason(e.kind(), audience)))?;
        Ok(Verified {
            issuer,
            claims: data.claims,
            generation,
        })
    }
}

/// Why `jsonwebtoken` refused a token, in one phrase for `error_description`.
fn reason(kind: &ErrorKind, audience: &str) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired (exp)".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidAudience => format!("the token is not for audience {audience:?} (aud)"),
        ErrorKind::InvalidIssuer => "the token's issuer (iss) is not accepted here".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("the token's {claim} claim is malformed"),
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key".into(),
        _ => "the token is malformed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_and_jwts_are_told_from_autokey_tokens() {
        let ApiError::InvalidToken(why) = refuse("é".repeat(500)) else {
            panic!("not a refusal")
        };
        assert_eq!(why.chars().count(), 203);
        assert!(looks_like_jwt("eyJh.eyJi.sig"));
        assert!(!looks_like_jwt("ak_abc.def.ghi"));
        assert!(!looks_like_jwt("opaque-token"));
    }
}
