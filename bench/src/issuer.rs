//! A minimal OpenID issuer for `http`'s JWT phase: the discovery document and a key set
//! with one ES256 key (the slowest to verify of the three algorithms autokey accepts), made
//! at start, served on a local port; tokens signed with it. The api under test fetches the
//! key once and verifies every request's token against it, which is what the phase measures.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use axum::{Json, Router, routing::get};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::common::*;

pub const AUDIENCE: &str = "https://autokey.bench";
const KID: &str = "bench-es256";

pub struct Issuer {
    pub url: String,
    key: EncodingKey,
    server: tokio::task::JoinHandle<()>,
}

impl Issuer {
    pub async fn start() -> Res<Issuer> {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| err("cannot make an ES256 key"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|_| err("cannot read the ES256 key"))?;
        // An uncompressed point: 0x04, x (32 bytes), y (32 bytes).
        let point = pair.public_key().as_ref();
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KID,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let discovery = serde_json::json!({
            "issuer": url, "jwks_uri": format!("{url}/jwks"),
            "authorization_endpoint": format!("{url}/auth"), "token_endpoint": format!("{url}/token"),
        });
        let keys = serde_json::json!({ "keys": [jwk] });
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || std::future::ready(Json(discovery.clone()))),
            )
            .route("/jwks", get(move || std::future::ready(Json(keys.clone()))));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Issuer {
            url,
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            server,
        })
    }

    /// The api's settings for this issuer.
    pub fn api_env(&self) -> Vec<(String, String)> {
        vec![
            ("OIDC_ISSUERS".into(), self.url.clone()),
            ("OIDC_AUDIENCE".into(), AUDIENCE.into()),
        ]
    }

    /// An access token for `sub` with `role`, valid for an hour.
    pub fn token(&self, sub: &str, role: &str) -> Res<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(KID.into());
        let claims = serde_json::json!({
            "iss": self.url, "sub": sub, "aud": AUDIENCE, "iat": now, "exp": now + 3600,
            "autokey_role": role,
        });
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}
