//! Key pools: a seller's containers of keys, with counters the database keeps
//! transactionally (triggers on `keys` and `orders`), so no count ever needs a scan.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};
use utoipa::ToSchema;
use uuid::Uuid;

/// A key pool as API.md shows it. `totalKeys` = `availableKeys` + `reservedKeys` +
/// `deliveredKeys` + `invalidKeys`, always (a CHECK constraint).
#[derive(Debug, Clone, Serialize, ToSchema, FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    pub id: Uuid,
    pub seller_id: Uuid,
    pub name: String,
    pub low_stock_threshold: i32,
    pub total_keys: i64,
    pub available_keys: i64,
    pub reserved_keys: i64,
    pub delivered_keys: i64,
    pub invalid_keys: i64,
    /// Reports on this pool's keys approved automatically, up to this many per order.
    pub auto_replace_limit: i32,
    pub created_at: DateTime<Utc>,
}

macro_rules! pool_columns {
    () => {
        "id, seller_id, name, low_stock_threshold, total_keys, available_keys, reserved_keys, \
         delivered_keys, invalid_keys, auto_replace_limit, created_at"
    };
}

/// Keys of pool row `p` that can still be sold, never below 0. Keys RESERVED are held for
/// PAID orders, so the units still owed (units of PAID orders, kept in the pool's 16
/// `pool_owed` stripes) are covered by those first and then by AVAILABLE ones: this is
/// API.md's "AVAILABLE minus units paid and not yet delivered" without counting a reserved
/// unit twice.
#[macro_export]
#[doc(hidden)]
macro_rules! sellable_of_pool_p {
    () => {
        "greatest(0, p.available_keys + p.reserved_keys
             - coalesce((SELECT sum(w.units) FROM pool_owed w WHERE w.pool_id = p.id), 0))::bigint"
    };
}

pub async fn create(
    conn: &mut PgConnection,
    seller_id: Uuid,
    name: &str,
    low_stock_threshold: i32,
) -> Result<Pool, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO key_pools (id, seller_id, name, low_stock_threshold)
         VALUES ($1, $2, $3, $4) RETURNING ",
        pool_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(seller_id)
    .bind(name)
    .bind(low_stock_threshold)
    .fetch_one(conn)
    .await
}

/// Up to `fetch` of the seller's pools after `after`, oldest first.
pub async fn page_for_seller(
    conn: &mut PgConnection,
    seller_id: Uuid,
    after: Option<super::After>,
    fetch: i64,
) -> Result<Vec<Pool>, sqlx::Error> {
    let after = after.unwrap_or(super::After::START);
    sqlx::query_as(concat!(
        "SELECT ",
        pool_columns!(),
        " FROM key_pools WHERE seller_id = $1 AND (created_at, id) > ($2, $3)
          ORDER BY created_at, id LIMIT $4"
    ))
    .bind(seller_id)
    .bind(after.created_at)
    .bind(after.id)
    .bind(fetch)
    .fetch_all(conn)
    .await
}

pub const FIND_FOR_SELLER: &str = concat!(
    "SELECT ",
    pool_columns!(),
    " FROM key_pools WHERE id = $1 AND seller_id = $2"
);

/// Pool `pool_id` if `seller_id` owns it (someone else's pool is as missing as a missing one).
pub async fn find_for_seller(
    conn: &mut PgConnection,
    seller_id: Uuid,
    pool_id: Uuid,
) -> Result<Option<Pool>, sqlx::Error> {
    sqlx::query_as(FIND_FOR_SELLER)
        .bind(pool_id)
        .bind(seller_id)
        .fetch_optional(conn)
        .await
}

/// Whether `seller_id` owns pool `pool_id`.
pub async fn owned_by(
    conn: &mut PgConnection,
    seller_id: Uuid,
    pool_id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM key_pools WHERE id = $1 AND seller_id = $2)")
        .bind(pool_id)
        .bind(seller_id)
        .fetch_one(conn)
        .await
}

pub const SELLABLE: &str = concat!(
    "SELECT ",
    sellable_of_pool_p!(),
    " FROM key_pools p WHERE p.id = $1"
);

/// Keys of the pool that can still be sold (0 for an unknown pool).
pub async fn sellable(conn: &mut PgConnection, pool_id: Uuid) -> Result<i64, sqlx::Error> {
    let n: Option<i64> = sqlx::query_scalar(SELLABLE)
        .bind(pool_id)
        .fetch_optional(conn)
        .await?;
    Ok(n.unwrap_or(0))
}

/// [`sellable`] for several pools in one query; unknown pools are absent.
pub async fn sellable_many(
    conn: &mut PgConnection,
    pool_ids: &[Uuid],
) -> Result<HashMap<Uuid, i64>, sqlx::Error> {
    if pool_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(concat!(
        "SELECT p.id, ",
        sellable_of_pool_p!(),
        " FROM key_pools p WHERE p.id = ANY($1)"
    ))
    .bind(pool_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Keys in every pool by status: (available, reserved, delivered, invalid).
pub async fn key_totals(conn: &mut PgConnection) -> Result<(i64, i64, i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT coalesce(sum(available_keys), 0)::bigint, coalesce(sum(reserved_keys), 0)::bigint,
                coalesce(sum(delivered_keys), 0)::bigint, coalesce(sum(invalid_keys), 0)::bigint
         FROM key_pools",
    )
    .fetch_one(conn)
    .await
}

/// Pools with keys to give while some of their PAID orders have waited (backordered)
/// since before `cutoff`: the sweeper makes sure they get a replenishment.
pub async fn starving(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT p.id FROM key_pools p
         WHERE p.available_keys > 0
           AND EXISTS (SELECT 1 FROM orders o WHERE o.pool_id = p.id AND o.status = 'PAID'
                       AND o.backordered_at IS NOT NULL AND o.paid_at < $1)",
    )
    .bind(cutoff)
    .fetch_all(conn)
    .await
}

/// Pool `pool_id` whoever owns it (administration).
pub async fn find(conn: &mut PgConnection, pool_id: Uuid) -> Result<Option<Pool>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        pool_columns!(),
        " FROM key_pools WHERE id = $1"
    ))
    .bind(pool_id)
    .fetch_optional(conn)
    .await
}

/// Sets the pool's automatic replacement limit (the caller checked the pool is its own).
pub async fn set_auto_replace_limit(
    conn: &mut PgConnection,
    pool_id: Uuid,
    limit: i32,
) -> Result<Pool, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE key_pools SET auto_replace_limit = $2 WHERE id = $1 RETURNING ",
        pool_columns!()
    ))
    .bind(pool_id)
    .bind(limit)
    .fetch_one(conn)
    .await
}

/// What a seller may change on its pool; None leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct PoolChanges {
    pub name: Option<String>,
    pub low_stock_threshold: Option<i32>,
    pub auto_replace_limit: Option<i32>,
}

/// Changes the seller's pool; None when it has no such pool. A threshold below 0 violates
/// `key_pools_threshold_check`, a limit outside 0..=100 `key_pools_auto_replace_check`.
pub async fn update_for_seller(
    conn: &mut PgConnection,
    seller_id: Uuid,
    pool_id: Uuid,
    changes: &PoolChanges,
) -> Result<Option<Pool>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE key_pools SET name = coalesce($3, name),
                low_stock_threshold = coalesce($4, low_stock_threshold),
                auto_replace_limit = coalesce($5, auto_replace_limit)
         WHERE id = $1 AND seller_id = $2 RETURNING ",
        pool_columns!()
    ))
    .bind(pool_id)
    .bind(seller_id)
    .bind(changes.name.as_deref())
    .bind(changes.low_stock_threshold)
    .bind(changes.auto_replace_limit)
    .fetch_optional(conn)
    .await
}

/// The pool's automatic replacement limit (0 for an unknown pool).
pub async fn auto_replace_limit(
    conn: &mut PgConnection,
    pool_id: Uuid,
) -> Result<i32, sqlx::Error> {
    let n: Option<i32> =
        sqlx::query_scalar("SELECT auto_replace_limit FROM key_pools WHERE id = $1")
            .bind(pool_id)
            .fetch_optional(conn)
            .await?;
    Ok(n.unwrap_or(0))
}
