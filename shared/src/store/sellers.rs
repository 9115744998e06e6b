//! Sellers as an administrator sees them: each with its pools' counts.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};
use utoipa::ToSchema;
use uuid::Uuid;

use super::After;

#[derive(Debug, Clone, Serialize, ToSchema, FromRow)]
#[serde(rename_all = "camelCase")]
pub struct SellerSummary {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub pools: i64,
    pub total_keys: i64,
    pub available_keys: i64,
    pub reserved_keys: i64,
    pub delivered_keys: i64,
    pub invalid_keys: i64,
}

/// Up to `fetch` sellers after `after`, oldest first, with their pools summed (the
/// pools' own counters: one index probe per seller, no key scan).
pub async fn page(
    conn: &mut PgConnection,
    after: Option<After>,
    fetch: i64,
) -> Result<Vec<SellerSummary>, sqlx::Error> {
    let after = after.unwrap_or(After::START);
    sqlx::query_as(
        "SELECT s.id, s.created_at,
                count(p.id) AS pools,
                coalesce(sum(p.total_keys), 0)::bigint AS total_keys,
                coalesce(sum(p.available_keys), 0)::bigint AS available_keys,
                coalesce(sum(p.reserved_keys), 0)::bigint AS reserved_keys,
                coalesce(sum(p.delivered_keys), 0)::bigint AS delivered_keys,
                coalesce(sum(p.invalid_keys), 0)::bigint AS invalid_keys
         FROM (SELECT id, created_at FROM sellers WHERE (created_at, id) > ($1, $2)
               ORDER BY created_at, id LIMIT $3) s
         LEFT JOIN key_pools p ON p.seller_id = s.id
         GROUP BY s.id, s.created_at
         ORDER BY s.created_at, s.id",
    )
    .bind(after.created_at)
    .bind(after.id)
    .bind(fetch)
    .fetch_all(conn)
    .await
}
