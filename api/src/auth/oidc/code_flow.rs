//! The console's sign-in at the provider: OpenID Connect's Authorization Code flow for a
//! public client, with PKCE (RFC 7636, S256), `state` (this browser started this sign-in)
//! and `nonce` (this ID token was minted for this sign-in). What a sign-in needs between
//! `GET /seller/login` and `GET /seller/callback` lives in the browser, in a short-lived
//! HttpOnly cookie, so any api process can finish a sign-in another one started.

use autokey_shared::store::tokens::Principal;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use super::{JwtVerifier, keys::discovery_url};
use crate::error::ApiError;

/// The cookie holding a [`Pending`] sign-in (path `/seller/callback`).
pub const LOGIN_COOKIE: &str = "autokey_login";
/// How long a sign-in may take at the provider.
pub const LOGIN_MAX_AGE_SECS: i64 = 600;

#[derive(Deserialize)]
struct Endpoints {
    authorization_endpoint: String,
    token_endpoint: String,
}

/// A sign-in in progress: its random `state`, `nonce` and PKCE verifier.
#[derive(Serialize, Deserialize, Debug)]
pub struct Pending {
    state: String,
    nonce: String,
    verifier: String,
    redirect_uri: String,
}

fn random() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Pending {
    pub fn new(redirect_uri: String) -> Self {
        Self {
            state: random(),
            nonce: random(),
            verifier: random(),
            redirect_uri,
        }
    }

    /// The cookie value.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("JSON"))
    }

    pub fn decode(value: &str) -> Option<Self> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(value).ok()?).ok()
    }

    /// Whether the callback's `state` is this sign-in's.
    pub fn state_matches(&self, state: &str) -> bool {
        same(&self.state, state)
    }
}

async fn endpoints(verifier: &JwtVerifier) -> Result<Endpoints, ApiError> {
    let url = discovery_url(verifier.config().console_issuer());
    let response = verifier.http.get(&url).send().await.map_err(|e| {
        tracing::warn!(error = %e, %url, "cannot read the OpenID provider's discovery document");
        ApiError::Unavailable
    })?;
    response
        .error_for_status()
        .map_err(|e| {
            tracing::warn!(error = %e, %url, "the OpenID provider's discovery document");
            ApiError::Unavailable
        })?
        .json()
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, %url, "the OpenID provider's discovery document is malformed");
            ApiError::Unavailable
        })
}

/// Where to send the browser to sign in.
pub async fn authorize_url(verifier: &JwtVerifier, pending: &Pending) -> Result<String, ApiError> {
    let endpoints = endpoints(verifier).await?;
    let client_id = verifier
        .config()
        .console_client_id
        .as_deref()
        .ok_or_else(ApiError::not_found)?;
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(pending.verifier.as_bytes()));
    let mut url = url::Url::parse(&endpoints.authorization_endpoint).map_err(|e| {
        tracing::warn!(error = %e, "the provider's authorization_endpoint is not a URL");
        ApiError::Unavailable
    })?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", &pending.redirect_uri)
        .append_pair("scope", "openid")
        .append_pair("state", &pending.state)
        .append_pair("nonce", &pending.nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    Ok(url.into())
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    id_token: String,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
}

fn refused(why: impl std::fmt::Display) -> ApiError {
    ApiError::validation(format!("the sign-in failed: {why}"))
}

/// Redeems `code` at the provider; checks the ID token (signature, issuer, audience the
/// console's client, `nonce`) and the access token (as any bearer JWT, for the same
/// account); returns the access token's principal and its `exp`.
pub async fn finish(
    verifier: &JwtVerifier,
    pool: &PgPool,
    pending: &Pending,
    code: &str,
) -> Result<(Principal, i64), ApiError> {
    let config = verifier.config();
    let client_id = config
        .console_client_id
        .as_deref()
        .ok_or_else(ApiError::not_found)?;
    let endpoints = endpoints(verifier).await?;
    let response = verifier
        .http
        .post(&endpoints.token_endpoint)
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &pending.redirect_uri),
            ("client_id", client_id),
            ("code_verifier", &pending.verifier),
        ])
        .send()
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot reach the OpenID provider's token endpoint");
            ApiError::Unavailable
        })?;
    if !response.status().is_success() {
        let status = response.status();
        let error = response
            .json::<TokenError>()
            .await
            .map_or_else(|_| status.to_string(), |e| e.error);
        return Err(refused(format_args!(
            "the identity provider refused the code ({error})"
        )));
    }
    let tokens: TokenResponse = response
        .json()
        .await
        .map_err(|_| refused("the identity provider's answer has no ID and access tokens"))?;
    let id = verifier.verify(&tokens.id_token, client_id).await?;
    if id.issuer != config.console_issuer() {
        return Err(refused("the ID token is from another issuer"));
    }
    if !id.str("nonce").is_some_and(|n| same(n, &pending.nonce)) {
        return Err(refused("the ID token's nonce is not this sign-in's"));
    }
    let access = verifier
        .verify(&tokens.access_token, &config.audience)
        .await?;
    if access.issuer != id.issuer || access.str("sub") != id.str("sub") {
        return Err(refused("the access token is for another account"));
    }
    let expires_at = access.expires_at();
    let principal = verifier.principal_of(pool, access).await?;
    Ok((principal, expires_at))
}
