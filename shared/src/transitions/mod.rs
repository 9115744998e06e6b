//! Every change of a key's or an order's status, and nowhere else. The money rule — a
//! key goes to one order, once — is these functions plus the constraints under them
//! (`order_deliveries_key_unique`, `keys_order_matches_status`, the counters' CHECKs).
//!
//! | transition | key | order | where |
//! |---|---|---|---|
//! | pay | | PENDING -> PAID (+ its fulfillment job) | [`pay`] |
//! | cancel | RESERVED -> AVAILABLE | PENDING/PAID -> CANCELED | [`cancel`] |
//! | invalidate | AVAILABLE -> INVALID | | [`invalidate`] |
//! | reserve | AVAILABLE -> RESERVED | PAID, backordered | [`delivery::deliver`] |
//! | deliver | AVAILABLE/RESERVED -> DELIVERED | PAID -> FULFILLED | [`delivery::deliver`] |
//!
//! Every function runs on the caller's transaction, on rows the caller has locked where
//! it says so; the caller commits.

pub mod delivery;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    error::CoreError,
    jobs::{FulfillOrder, ReplenishPool, queue},
    store::{keys::KeyMeta, orders::OrderRow},
};

/// PENDING -> PAID, and the order's fulfillment job, on the same transaction: a paid order
/// always has a job (one per order, a database fact). Returns the new `paid_at`, or None
/// (and changes nothing) when the order is not PENDING.
pub async fn pay(
    conn: &mut PgConnection,
    order_id: Uuid,
    payment_id: Option<&str>,
) -> Result<Option<DateTime<Utc>>, CoreError> {
    let paid_at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "UPDATE orders SET status = 'PAID', paid_at = now(), payment_id = $2
         WHERE id = $1 AND status = 'PENDING' RETURNING paid_at",
    )
    .bind(order_id)
    .bind(payment_id)
    .fetch_optional(&mut *conn)
    .await?;
    if paid_at.is_some() {
        queue::enqueue(conn, &FulfillOrder { order_id }).await?;
    }
    Ok(paid_at)
}

/// PENDING or PAID -> CANCELED for an order the caller has locked (the caller refuses
/// other statuses). Keys reserved for it return to AVAILABLE, and when some did, its pool
/// gets a replenishment (they may complete other waiting orders). Returns the order as it
/// now is and how many keys were released.
pub async fn cancel(
    conn: &mut PgConnection,
    order: &OrderRow,
) -> Result<(OrderRow, u64), CoreError> {
    let released = sqlx::query(
        "UPDATE keys SET status = 'AVAILABLE', order_id = NULL, reserved_at = NULL
         WHERE order_id = $1 AND status = 'RESERVED'",
    )
    .bind(order.id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let canceled: Option<OrderRow> = sqlx::query_as(concat!(
        "UPDATE orders SET status = 'CANCELED', canceled_at = now()
         WHERE id = $1 AND status IN ('PENDING', 'PAID') RETURNING ",
        crate::order_columns!()
    ))
    .bind(order.id)
    .fetch_optional(&mut *conn)
    .await?;
    let canceled = canceled.ok_or_else(|| {
        CoreError::invariant(format!(
            "order {} was not PENDING or PAID when canceled",
            order.id
        ))
    })?;
    if released > 0
        && let Some(pool_id) = order.pool_id
    {
        queue::enqueue(conn, &ReplenishPool { pool_id }).await?;
    }
    Ok((canceled, released))
}

/// AVAILABLE -> INVALID for a key the caller has locked (so it is never sold). The caller
/// decides what other statuses mean; this refuses anything but AVAILABLE.
pub async fn invalidate(conn: &mut PgConnection, key_id: Uuid) -> Result<KeyMeta, CoreError> {
    let row: Option<KeyMeta> = sqlx::query_as(concat!(
        "UPDATE keys SET status = 'INVALID', invalidated_at = now()
         WHERE id = $1 AND status = 'AVAILABLE' RETURNING ",
        crate::key_meta_columns!()
    ))
    .bind(key_id)
    .fetch_optional(conn)
    .await?;
    row.ok_or_else(|| CoreError::invariant(format!("key {key_id} was not AVAILABLE")))
}
