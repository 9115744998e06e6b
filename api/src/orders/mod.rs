//! Orders: the record of what a buyer bought, and its life PENDING -> PAID -> FULFILLED
//! (or CANCELED). Functions here take the caller's connection or transaction; handlers
//! own begin/commit.

pub mod cursor;
pub mod delivered_keys;
pub mod idempotency;
pub mod payment;
pub mod view;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::error::ApiError;

/// An `orders` row.
#[derive(Debug, Clone, FromRow)]
pub struct OrderRow {
    pub id: Uuid,
    pub buyer_id: Uuid,
    pub offer_id: Uuid,
    pub pool_id: Option<Uuid>,
    pub quantity: i32,
    pub amount_cents: i64,
    pub currency: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub fulfilled_at: Option<DateTime<Utc>>,
    pub canceled_at: Option<DateTime<Utc>>,
}

pub const ORDER_COLUMNS: &str = "id, buyer_id, offer_id, pool_id, quantity, amount_cents, currency, status, \
     created_at, paid_at, fulfilled_at, canceled_at";

pub async fn find(conn: &mut PgConnection, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Reads and row-locks an order, for a state change.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// The order if `visible` says the caller may see it; otherwise the same 404 as a
/// missing one.
pub fn visible_or_404(
    order: Option<OrderRow>,
    visible: impl Fn(&OrderRow) -> bool,
) -> Result<OrderRow, ApiError> {
    order
        .filter(|o| visible(o))
        .ok_or_else(|| ApiError::NotFound("order not found".into()))
}

/// What an offer looks like to the order being placed.
#[derive(Debug, FromRow)]
pub struct OfferForOrder {
    pub id: Uuid,
    pub price_cents: i64,
    pub currency: String,
    pub delivery_type: String,
    pub key_pool_id: Option<Uuid>,
    pub stock_count: Option<i32>,
    pub status: String,
    /// Units that can still be sold: `autoKeyAvailableCount` for AUTO_KEY offers (0
    /// without a pool), the seller's stock count for MANUAL ones.
    pub sellable: i64,
}

/// The offer and how much of it can be sold, in one query.
pub async fn offer_for_order(
    conn: &mut PgConnection,
    offer_id: Uuid,
) -> Result<Option<OfferForOrder>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT o.id, o.price_cents, o.currency, o.delivery_type, o.key_pool_id, o.stock_count, o.status,
                CASE WHEN o.delivery_type = 'AUTO_KEY'
                     THEN coalesce((SELECT {} FROM key_pools p WHERE p.id = o.key_pool_id), 0)
                     ELSE coalesce(o.stock_count, 0)::bigint END AS sellable
         FROM offers o WHERE o.id = $1",
        autokey_shared::availability::SELLABLE_OF_POOL_ROW_P
    )))
    .bind(offer_id)
    .fetch_optional(conn)
    .await
}

pub struct NewOrder {
    pub buyer_id: Uuid,
    pub offer: OfferForOrder,
    pub quantity: i32,
}

pub async fn insert(conn: &mut PgConnection, new: &NewOrder) -> Result<OrderRow, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO orders (id, buyer_id, offer_id, pool_id, quantity, amount_cents, currency)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {ORDER_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(new.buyer_id)
    .bind(new.offer.id)
    .bind(new.offer.key_pool_id)
    .bind(new.quantity)
    .bind(new.offer.price_cents * i64::from(new.quantity))
    .bind(&new.offer.currency)
    .fetch_one(conn)
    .await
}

/// Cancels a PENDING or PAID order (locked by the caller) and returns the keys reserved
/// for it to the pool. Returns how many keys were released.
pub async fn cancel(conn: &mut PgConnection, order: &OrderRow) -> Result<u64, sqlx::Error> {
    let released = sqlx::query(
        "UPDATE keys SET status = 'AVAILABLE', order_id = NULL, reserved_at = NULL
         WHERE order_id = $1 AND status = 'RESERVED'",
    )
    .bind(order.id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query("UPDATE orders SET status = 'CANCELED', canceled_at = now() WHERE id = $1")
        .bind(order.id)
        .execute(&mut *conn)
        .await?;
    Ok(released)
}

/// Appends to the audit log.
pub async fn audit(
    conn: &mut PgConnection,
    actor: &crate::auth::Auth,
    action: &str,
    order_id: Option<Uuid>,
    details: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO audit_log (actor_role, actor_subject, action, order_id, details) VALUES ($1, $2, $3, $4, $5)")
        .bind(actor.role().as_str())
        .bind(actor.subject())
        .bind(action)
        .bind(order_id)
        .bind(details)
        .execute(conn)
        .await?;
    Ok(())
}
