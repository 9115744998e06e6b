//! `Idempotency-Key` for order creation, Stripe-style: the same key with the same
//! request gives the same order; with another request, 409 `idempotency_mismatch`.

use autokey_shared::store;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{auth::Auth, error::ApiError};

pub const HEADER: &str = "idempotency-key";

/// Validates the header value (1 to 255 visible ASCII characters).
pub fn parse(value: Option<&axum::http::HeaderValue>) -> Result<Option<String>, ApiError> {
    let Some(v) = value else { return Ok(None) };
    let s = v
        .to_str()
        .map_err(|_| ApiError::validation("Idempotency-Key must be visible ASCII"))?
        .trim();
    if s.is_empty() || s.len() > 255 {
        return Err(ApiError::validation(
            "Idempotency-Key must be 1 to 255 characters",
        ));
    }
    Ok(Some(s.to_owned()))
}

/// Keys are per caller: two buyers may use the same key without meeting.
pub fn scope(auth: &Auth) -> String {
    match auth.subject() {
        Some(subject) => format!("{}:{subject}", auth.role()),
        None => format!("{}:{}", auth.role(), auth.0.token_id),
    }
}

/// A digest of what the request asks for (after defaults are applied).
pub fn request_hash(offer_id: Uuid, quantity: i32, buyer_id: Uuid) -> Vec<u8> {
    Sha256::digest(format!("v1|{offer_id}|{quantity}|{buyer_id}")).to_vec()
}

/// The order an earlier request with this key created, if any; 409 when that request
/// was a different one.
pub async fn replay(
    conn: &mut PgConnection,
    scope: &str,
    key: &str,
    hash: &[u8],
) -> Result<Option<Uuid>, ApiError> {
    match store::idempotency::find(conn, scope, key).await? {
        Some((stored, _)) if stored != hash => Err(ApiError::IdempotencyMismatch),
        Some((_, order_id)) => Ok(Some(order_id)),
        None => Ok(None),
    }
}
