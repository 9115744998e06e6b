//! API tokens: `ak_` + 32 random bytes (base64url), stored only as SHA-256 hashes.
//! Revoking one announces it on [`REVOKED_CHANNEL`], so processes that cache
//! authentications forget it at once.

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

pub use crate::model::Role;

pub const TOKEN_PREFIX: &str = "ak_";

/// Who a request acts as, resolved from its bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub token_id: Uuid,
    pub role: Role,
    pub subject: Option<Uuid>,
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A freshly minted token: the plaintext is shown once and never stored.
pub struct NewToken {
    pub id: Uuid,
    pub token: String,
    pub role: Role,
    pub subject: Option<Uuid>,
}

/// Creates a token for `role`; sellers, buyers and storefronts get `subject` or a new
/// id, and their principal row is created if missing.
pub async fn create_token(
    conn: &mut PgConnection,
    role: Role,
    subject: Option<Uuid>,
) -> Result<NewToken, sqlx::Error> {
    create_token_until(conn, role, subject, None).await
}

/// [`create_token`] for a token that stops working at `expires_at` (a console session).
pub async fn create_token_until(
    conn: &mut PgConnection,
    role: Role,
    subject: Option<Uuid>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<NewToken, sqlx::Error> {
    let subject = match (role.has_subject(), subject) {
        (true, s) => Some(s.unwrap_or_else(Uuid::now_v7)),
        (false, _) => None,
    };
    if let Some(id) = subject {
        ensure_principal(conn, role, id).await?;
    }
    let token = generate_token();
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO api_tokens (id, token_hash, role, subject_id, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(&hash_token(&token)[..])
    .bind(role)
    .bind(subject)
    .bind(expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(NewToken {
        id,
        token,
        role,
        subject,
    })
}

/// Makes the seller, buyer or storefront row `id` if it is missing (admins have none).
pub async fn ensure_principal(
    conn: &mut PgConnection,
    role: Role,
    id: Uuid,
) -> Result<(), sqlx::Error> {
    let insert = match role {
        Role::Seller => "INSERT INTO sellers (id) VALUES ($1) ON CONFLICT DO NOTHING",
        Role::Buyer => "INSERT INTO buyers (id) VALUES ($1) ON CONFLICT DO NOTHING",
        Role::Storefront => "INSERT INTO storefronts (id) VALUES ($1) ON CONFLICT DO NOTHING",
        Role::Admin => return Ok(()),
    };
    sqlx::query(insert).bind(id).execute(conn).await?;
    Ok(())
}

/// Revoked token ids are announced here at commit (payload: the token id).
pub const REVOKED_CHANNEL: &str = "autokey_token_revoked";

/// Revokes a token by id; false when no live token has that id.
pub async fn revoke_token(conn: &mut PgConnection, id: Uuid) -> Result<bool, sqlx::Error> {
    let revoked: i64 = sqlx::query_scalar(
        "WITH r AS (UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
                    RETURNING id)
         SELECT count(*) FROM (SELECT pg_notify($2, id::text) FROM r) n",
    )
    .bind(id)
    .bind(REVOKED_CHANNEL)
    .fetch_one(conn)
    .await?;
    Ok(revoked == 1)
}

pub const AUTHENTICATE: &str = "SELECT id, role, subject_id, expires_at FROM api_tokens
     WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())";

/// Looks a presented token up by its hash; None when unknown, revoked or expired.
pub async fn authenticate(
    conn: &mut PgConnection,
    token: &str,
) -> Result<Option<Principal>, sqlx::Error> {
    Ok(authenticate_until(conn, token).await?.map(|(p, _)| p))
}

/// [`authenticate`], with when the token expires (None: never).
pub async fn authenticate_until(
    conn: &mut PgConnection,
    token: &str,
) -> Result<Option<(Principal, Option<DateTime<Utc>>)>, sqlx::Error> {
    if !token.starts_with(TOKEN_PREFIX) || token.len() > 128 {
        return Ok(None);
    }
    let row: Option<(Uuid, Role, Option<Uuid>, Option<DateTime<Utc>>)> =
        sqlx::query_as(AUTHENTICATE)
            .bind(&hash_token(token)[..])
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(token_id, role, subject, expires_at)| {
        (
            Principal {
                token_id,
                role,
                subject,
            },
            expires_at,
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_long_and_distinct() {
        let a = generate_token();
        let b = generate_token();
        assert!(a.starts_with("ak_"));
        assert!(a.len() >= 3 + 43);
        assert_ne!(a, b);
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
