//! How many keys of a pool can still be sold (an AUTO_KEY offer's `autoKeyAvailableCount`).
//!
//! Keys RESERVED in a pool are held for PAID orders, so the units still owed to paid
//! orders are covered first by those reserved keys and then by AVAILABLE ones:
//! `available + reserved - paid units` is "AVAILABLE minus units paid and not yet
//! delivered" without counting a reserved unit twice. Read from the pool's counters and
//! the partial index of waiting orders, so it stays cheap for pools of millions of keys.

use std::collections::HashMap;

use sqlx::PgConnection;
use uuid::Uuid;

/// The formula, for pool row `p`; shared by both queries below so they cannot drift.
macro_rules! sellable {
    () => {
        "greatest(0, p.available_keys + p.reserved_keys - coalesce(
            (SELECT sum(o.quantity) FROM orders o WHERE o.pool_id = p.id AND o.status = 'PAID'),
            0))::bigint"
    };
}

/// The formula as an SQL expression over a `key_pools` row aliased `p`, for queries
/// that read it together with other rows.
pub const SELLABLE_OF_POOL_ROW_P: &str = sellable!();

/// Keys of `pool_id` that can still be sold, never below 0 (0 for an unknown pool).
pub async fn auto_key_available(
    conn: &mut PgConnection,
    pool_id: Uuid,
) -> Result<i64, sqlx::Error> {
    let n: Option<i64> = sqlx::query_scalar(concat!(
        "SELECT ",
        sellable!(),
        " FROM key_pools p WHERE p.id = $1"
    ))
    .bind(pool_id)
    .fetch_optional(conn)
    .await?;
    Ok(n.unwrap_or(0))
}

/// [`auto_key_available`] for several pools in one query; unknown pools are absent.
pub async fn auto_key_available_many(
    conn: &mut PgConnection,
    pool_ids: &[Uuid],
) -> Result<HashMap<Uuid, i64>, sqlx::Error> {
    if pool_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(concat!(
        "SELECT p.id, ",
        sellable!(),
        " FROM key_pools p WHERE p.id = ANY($1)"
    ))
    .bind(pool_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}
