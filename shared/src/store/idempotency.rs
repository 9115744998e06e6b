//! `Idempotency-Key` records of order creation: which order a caller's key created, and a
//! digest of the request it came with.

use sqlx::PgConnection;
use uuid::Uuid;

pub const FIND: &str =
    "SELECT request_hash, order_id FROM idempotency_records WHERE scope = $1 AND key = $2";

/// The earlier request with this key in this scope: (its request digest, its order).
pub async fn find(
    conn: &mut PgConnection,
    scope: &str,
    key: &str,
) -> Result<Option<(Vec<u8>, Uuid)>, sqlx::Error> {
    sqlx::query_as(FIND)
        .bind(scope)
        .bind(key)
        .fetch_optional(conn)
        .await
}

pub const RECORD: &str =
    "INSERT INTO idempotency_records (scope, key, request_hash, order_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (scope, key) DO NOTHING";

/// Records the key for a new order. False when a concurrent request with the same key
/// committed first (the caller then rolls back and replays).
pub async fn record(
    conn: &mut PgConnection,
    scope: &str,
    key: &str,
    request_hash: &[u8],
    order_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(RECORD)
        .bind(scope)
        .bind(key)
        .bind(request_hash)
        .bind(order_id)
        .execute(conn)
        .await?;
    Ok(inserted.rows_affected() == 1)
}
