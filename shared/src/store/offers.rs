//! Offers: what a seller sells, at what price, delivered from which key pool.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::{
    manual_sellable_o,
    model::{DeliveryType, OfferStatus},
    sellable_of_pool_p,
};

/// An `offers` row.
#[derive(Debug, Clone, FromRow)]
pub struct OfferRow {
    pub id: Uuid,
    pub seller_id: Uuid,
    pub title: String,
    pub price_cents: i64,
    pub currency: String,
    pub delivery_type: DeliveryType,
    pub key_pool_id: Option<Uuid>,
    pub stock_count: Option<i32>,
    pub status: OfferStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

macro_rules! offer_columns {
    () => {
        "id, seller_id, title, price_cents, currency, delivery_type, key_pool_id, stock_count, \
         status, created_at, updated_at"
    };
}

/// The fields a seller sets on a draft (already validated by the caller).
#[derive(Debug, Clone)]
pub struct DraftFields<'a> {
    pub title: &'a str,
    pub price_cents: i64,
    pub currency: &'a str,
    pub delivery_type: DeliveryType,
    pub key_pool_id: Option<Uuid>,
    pub stock_count: Option<i32>,
}

pub async fn insert_draft(
    conn: &mut PgConnection,
    seller_id: Uuid,
    d: &DraftFields<'_>,
) -> Result<OfferRow, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO offers (id, seller_id, title, price_cents, currency, delivery_type,
                             key_pool_id, stock_count)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
        offer_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(seller_id)
    .bind(d.title)
    .bind(d.price_cents)
    .bind(d.currency)
    .bind(d.delivery_type)
    .bind(d.key_pool_id)
    .bind(d.stock_count)
    .fetch_one(conn)
    .await
}

pub async fn update_draft(
    conn: &mut PgConnection,
    id: Uuid,
    d: &DraftFields<'_>,
) -> Result<OfferRow, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE offers SET title = $2, price_cents = $3, currency = $4, delivery_type = $5,
                key_pool_id = $6, stock_count = $7, updated_at = now()
         WHERE id = $1 RETURNING ",
        offer_columns!()
    ))
    .bind(id)
    .bind(d.title)
    .bind(d.price_cents)
    .bind(d.currency)
    .bind(d.delivery_type)
    .bind(d.key_pool_id)
    .bind(d.stock_count)
    .fetch_one(conn)
    .await
}

pub async fn set_status(
    conn: &mut PgConnection,
    id: Uuid,
    status: OfferStatus,
) -> Result<OfferRow, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE offers SET status = $2, updated_at = now() WHERE id = $1 RETURNING ",
        offer_columns!()
    ))
    .bind(id)
    .bind(status)
    .fetch_one(conn)
    .await
}

/// The seller's offer `id`, row-locked; None (and nothing locked) for another seller's.
pub async fn lock_own(
    conn: &mut PgConnection,
    seller_id: Uuid,
    id: Uuid,
) -> Result<Option<OfferRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        offer_columns!(),
        " FROM offers WHERE id = $1 AND seller_id = $2 FOR UPDATE"
    ))
    .bind(id)
    .bind(seller_id)
    .fetch_optional(conn)
    .await
}

pub async fn find(conn: &mut PgConnection, id: Uuid) -> Result<Option<OfferRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        offer_columns!(),
        " FROM offers WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Up to `fetch` of the seller's offers after `after`, oldest first, in every status.
pub async fn page_for_seller(
    conn: &mut PgConnection,
    seller_id: Uuid,
    after: Option<crate::store::After>,
    fetch: i64,
) -> Result<Vec<OfferRow>, sqlx::Error> {
    let after = after.unwrap_or(crate::store::After::START);
    sqlx::query_as(concat!(
        "SELECT ",
        offer_columns!(),
        " FROM offers WHERE seller_id = $1 AND (created_at, id) > ($2, $3)
          ORDER BY created_at, id LIMIT $4"
    ))
    .bind(seller_id)
    .bind(after.created_at)
    .bind(after.id)
    .bind(fetch)
    .fetch_all(conn)
    .await
}

/// What an offer looks like to the order being placed.
#[derive(Debug, Clone, FromRow)]
pub struct OfferForOrder {
    pub id: Uuid,
    pub price_cents: i64,
    pub currency: String,
    pub delivery_type: DeliveryType,
    pub key_pool_id: Option<Uuid>,
    pub status: OfferStatus,
    /// Units that can still be sold: the pool's sellable keys for AUTO_KEY offers (0
    /// without a pool), the seller's stock count minus its open orders' units for MANUAL
    /// ones.
    pub sellable: i64,
}

pub const FOR_ORDER: &str = concat!(
    "SELECT o.id, o.price_cents, o.currency, o.delivery_type, o.key_pool_id, o.status,
                CASE WHEN o.delivery_type = 'AUTO_KEY'
                     THEN coalesce((SELECT ",
    sellable_of_pool_p!(),
    " FROM key_pools p WHERE p.id = o.key_pool_id), 0)
                     ELSE ",
    manual_sellable_o!(),
    " END AS sellable
         FROM offers o WHERE o.id = $1"
);

/// A MANUAL offer `o`'s units that can still be sold: the seller's `stock_count` minus
/// the units of its open orders (PENDING or PAID: paid and not yet delivered, or placed and
/// holding their units until paid or canceled), never below 0. Delivery lowers
/// `stock_count` by the units delivered, so delivered units leave both sides.
#[macro_export]
#[doc(hidden)]
macro_rules! manual_sellable_o {
    () => {
        "greatest(0, coalesce(o.stock_count, 0)
             - coalesce((SELECT sum(x.quantity) FROM orders x
                         WHERE x.offer_id = o.id AND x.status IN ('PENDING', 'PAID')), 0))::bigint"
    };
}

pub const MANUAL_SELLABLE_MANY: &str = concat!(
    "SELECT o.id, ",
    manual_sellable_o!(),
    " FROM offers o WHERE o.id = ANY($1) AND o.delivery_type = 'MANUAL'"
);

/// [`OfferForOrder::sellable`] of several MANUAL offers in one query; other offers are absent.
pub async fn manual_sellable_many(
    conn: &mut PgConnection,
    offer_ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, i64>, sqlx::Error> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(MANUAL_SELLABLE_MANY)
        .bind(offer_ids)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Row-locks the offer for the rest of the transaction: MANUAL orders placed on one offer
/// queue here, so each sees the units the ones before it hold (50 concurrent orders on a
/// stock of 10 place exactly 10). AUTO_KEY orders never take it.
pub async fn lock_for_order(conn: &mut PgConnection, offer_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM offers WHERE id = $1 FOR UPDATE")
        .bind(offer_id)
        .fetch_optional(conn)
        .await?;
    Ok(())
}

/// The offer and how much of it can be sold, in one query (two primary-key lookups).
pub async fn for_order(
    conn: &mut PgConnection,
    offer_id: Uuid,
) -> Result<Option<OfferForOrder>, sqlx::Error> {
    sqlx::query_as(FOR_ORDER)
        .bind(offer_id)
        .fetch_optional(conn)
        .await
}
