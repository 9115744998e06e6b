//! Orders and their deliveries: reads, the insert of a new (PENDING) order, and which
//! orders a caller may see. Status changes are [`crate::transitions`]'.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::After;
use crate::model::OrderStatus;

/// An `orders` row.
#[derive(Debug, Clone, FromRow)]
pub struct OrderRow {
    pub id: Uuid,
    pub buyer_id: Uuid,
    /// The storefront that placed the order; None when a buyer token did.
    pub storefront_id: Option<Uuid>,
    pub offer_id: Uuid,
    pub pool_id: Option<Uuid>,
    pub quantity: i32,
    pub amount_cents: i64,
    pub currency: String,
    pub status: OrderStatus,
    pub created_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub fulfilled_at: Option<DateTime<Utc>>,
    pub canceled_at: Option<DateTime<Utc>>,
    /// When the payment provider refunded a FULFILLED order (it stays FULFILLED).
    pub refunded_at: Option<DateTime<Utc>>,
}

#[macro_export]
#[doc(hidden)]
macro_rules! order_columns {
    () => {
        "id, buyer_id, storefront_id, offer_id, pool_id, quantity, amount_cents, currency, \
         status, created_at, paid_at, fulfilled_at, canceled_at, refunded_at"
    };
}

/// Whose orders a caller may see and act on. Everything else answers exactly like a
/// missing order, and is never locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    /// A buyer: the orders it placed itself with its buyer token.
    Buyer(Uuid),
    /// A storefront: the orders it placed (for any of its customers).
    Storefront(Uuid),
}

/// The visibility predicate on an `orders` row, with the viewer bound as `$2` (a buyer id)
/// and `$3` (a storefront id), one of them null.
#[macro_export]
#[doc(hidden)]
macro_rules! visible_to_viewer {
    () => {
        "((buyer_id = $2 AND storefront_id IS NULL) OR storefront_id = $3)"
    };
}

impl Viewer {
    pub(super) fn buyer(self) -> Option<Uuid> {
        match self {
            Viewer::Buyer(id) => Some(id),
            Viewer::Storefront(_) => None,
        }
    }

    pub(super) fn storefront(self) -> Option<Uuid> {
        match self {
            Viewer::Storefront(id) => Some(id),
            Viewer::Buyer(_) => None,
        }
    }

    pub fn may_see(self, order: &OrderRow) -> bool {
        match self {
            Viewer::Buyer(id) => order.buyer_id == id && order.storefront_id.is_none(),
            Viewer::Storefront(id) => order.storefront_id == Some(id),
        }
    }
}

/// A new PENDING order; `amount_cents` is the offer's price times the quantity, computed
/// (with overflow checked) by the caller.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub buyer_id: Uuid,
    /// The storefront placing it, None for a buyer token.
    pub storefront_id: Option<Uuid>,
    pub offer_id: Uuid,
    pub pool_id: Option<Uuid>,
    pub quantity: i32,
    pub amount_cents: i64,
    pub currency: String,
}

pub const INSERT: &str = concat!(
    "INSERT INTO orders (id, buyer_id, offer_id, pool_id, quantity, amount_cents, currency,
                         storefront_id)
     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::int4[],
                          $6::int8[], $7::text[], $8::uuid[])
     RETURNING ",
    order_columns!()
);

/// Inserts new PENDING orders in one statement, returning them in the order given.
pub async fn insert_many(
    conn: &mut PgConnection,
    new: &[NewOrder],
) -> Result<Vec<OrderRow>, sqlx::Error> {
    let ids: Vec<Uuid> = new.iter().map(|_| Uuid::now_v7()).collect();
    let mut rows: Vec<OrderRow> = sqlx::query_as(INSERT)
        .bind(&ids)
        .bind(new.iter().map(|n| n.buyer_id).collect::<Vec<_>>())
        .bind(new.iter().map(|n| n.offer_id).collect::<Vec<_>>())
        .bind(new.iter().map(|n| n.pool_id).collect::<Vec<_>>())
        .bind(new.iter().map(|n| n.quantity).collect::<Vec<_>>())
        .bind(new.iter().map(|n| n.amount_cents).collect::<Vec<_>>())
        .bind(new.iter().map(|n| n.currency.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|n| n.storefront_id).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?;
    // RETURNING gives no order guarantee; the ids do.
    let position: std::collections::HashMap<Uuid, usize> =
        ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    rows.sort_by_key(|r| position[&r.id]);
    Ok(rows)
}

/// An order as a request asks for it, before its offer is checked.
#[derive(Debug, Clone, Copy)]
pub struct OrderRequest {
    pub buyer_id: Uuid,
    pub storefront_id: Option<Uuid>,
    pub offer_id: Uuid,
    pub quantity: i32,
}

pub const PLACE_AUTO_KEY_MANY: &str = concat!(
    "WITH r AS (
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int4[], $5::uuid[])
             AS r (id, buyer_id, offer_id, quantity, storefront_id)),
     -- Each request's offer by primary key (LIMIT 1 keeps the lookup per request: a
     -- plain join could be planned as a scan of every offer).
     c AS (
         SELECT r.*, o.key_pool_id, o.price_cents, o.currency
         FROM r CROSS JOIN LATERAL (
             SELECT o.key_pool_id, o.price_cents, o.currency FROM offers o
             WHERE o.id = r.offer_id AND o.status = 'active' AND o.delivery_type = 'AUTO_KEY'
               AND o.price_cents <= 9223372036854775807 / nullif(r.quantity, 0)
               AND r.quantity <= coalesce((SELECT ",
    crate::sellable_of_pool_p!(),
    " FROM key_pools p WHERE p.id = o.key_pool_id), 0)
             LIMIT 1) o)
     INSERT INTO orders (id, buyer_id, offer_id, pool_id, quantity, amount_cents, currency,
                         storefront_id)
     SELECT id, buyer_id, offer_id, key_pool_id, quantity, price_cents * quantity, currency,
            storefront_id
     FROM c
     RETURNING ",
    order_columns!()
);

/// Places several orders on AUTO_KEY offers in one statement, checking each offer as
/// `offers::for_order` and the handler would (active, AUTO_KEY, enough sellable keys; the
/// amount is the price times the quantity). Returns, per request in the order given, the
/// PENDING order, or None when its offer refused it (the caller finds out why, or places
/// a MANUAL order, on the one-request path).
pub async fn place_auto_key_many(
    conn: &mut PgConnection,
    requests: &[OrderRequest],
) -> Result<Vec<Option<OrderRow>>, sqlx::Error> {
    let ids: Vec<Uuid> = requests.iter().map(|_| Uuid::now_v7()).collect();
    let rows: Vec<OrderRow> = sqlx::query_as(PLACE_AUTO_KEY_MANY)
        .bind(&ids)
        .bind(requests.iter().map(|r| r.buyer_id).collect::<Vec<_>>())
        .bind(requests.iter().map(|r| r.offer_id).collect::<Vec<_>>())
        .bind(requests.iter().map(|r| r.quantity).collect::<Vec<_>>())
        .bind(requests.iter().map(|r| r.storefront_id).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?;
    let mut placed: std::collections::HashMap<Uuid, OrderRow> =
        rows.into_iter().map(|r| (r.id, r)).collect();
    Ok(ids.iter().map(|id| placed.remove(id)).collect())
}

pub async fn insert(conn: &mut PgConnection, new: &NewOrder) -> Result<OrderRow, sqlx::Error> {
    insert_many(conn, std::slice::from_ref(new))
        .await?
        .pop()
        .ok_or(sqlx::Error::RowNotFound)
}

pub const FIND: &str = concat!("SELECT ", order_columns!(), " FROM orders WHERE id = $1");

pub async fn find(conn: &mut PgConnection, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(FIND).bind(id).fetch_optional(conn).await
}

pub const FIND_MANY: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM orders WHERE id = ANY($1)"
);

/// Several orders by id at once (a group of concurrent reads); the caller checks who may
/// see each (`Viewer::may_see`).
pub async fn find_many(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(FIND_MANY).bind(ids).fetch_all(conn).await
}

pub const FIND_VISIBLE: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM orders WHERE id = $1 AND ",
    visible_to_viewer!()
);

/// The order if `viewer` may see it.
pub async fn find_visible(
    conn: &mut PgConnection,
    id: Uuid,
    viewer: Viewer,
) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(FIND_VISIBLE)
        .bind(id)
        .bind(viewer.buyer())
        .bind(viewer.storefront())
        .fetch_optional(conn)
        .await
}

pub const LOCK_VISIBLE: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM orders WHERE id = $1 AND ",
    visible_to_viewer!(),
    " FOR UPDATE"
);

/// The order, row-locked for a state change, if `viewer` may see it (nothing is locked
/// otherwise).
pub async fn lock_visible(
    conn: &mut PgConnection,
    id: Uuid,
    viewer: Viewer,
) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(LOCK_VISIBLE)
        .bind(id)
        .bind(viewer.buyer())
        .bind(viewer.storefront())
        .fetch_optional(conn)
        .await
}

pub const LOCK_VISIBLE_MANY: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM orders o WHERE o.id = ANY($1)
        AND EXISTS (SELECT 1 FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS v(id, b, s)
                    WHERE v.id = o.id
                      AND ((o.buyer_id = v.b AND o.storefront_id IS NULL) OR o.storefront_id = v.s))
     ORDER BY o.id FOR UPDATE"
);

/// Several orders row-locked at once for a group of state changes, each named with the
/// viewer asking for it: an order is returned (and locked) only when a viewer naming it
/// may see it, so nothing else is ever locked. Locks are taken in id order: concurrent
/// groups cannot deadlock. With two viewers naming one order, check `may_see` per viewer.
pub async fn lock_visible_many(
    conn: &mut PgConnection,
    wanted: &[(Uuid, Viewer)],
) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(LOCK_VISIBLE_MANY)
        .bind(wanted.iter().map(|w| w.0).collect::<Vec<_>>())
        .bind(wanted.iter().map(|w| w.1.buyer()).collect::<Vec<_>>())
        .bind(wanted.iter().map(|w| w.1.storefront()).collect::<Vec<_>>())
        .fetch_all(conn)
        .await
}

pub const LOCK: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM orders WHERE id = $1 FOR UPDATE"
);

/// The row locked for a payment arriving from the provider (no viewer: the webhook's
/// signature is its authority).
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    sqlx::query_as(LOCK).bind(id).fetch_optional(conn).await
}

pub use super::order_keys::{READ, ShownKey, read, read_fulfilled};

pub const PAGE_FOR_BUYER: &str = concat!(
    "SELECT ",
    order_columns!(),
    " FROM orders WHERE buyer_id = $1 AND storefront_id IS NOT DISTINCT FROM $6
       AND ($2::text IS NULL OR status = $2) AND (created_at, id) < ($3, $4)
     ORDER BY created_at DESC, id DESC LIMIT $5"
);

/// Up to `fetch` orders of one buyer before `after`, newest first: those it placed itself
/// (`storefront` None) or those a storefront placed for it.
pub async fn page_for_buyer(
    conn: &mut PgConnection,
    buyer_id: Uuid,
    storefront: Option<Uuid>,
    status: Option<OrderStatus>,
    after: Option<After>,
    fetch: i64,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(PAGE_FOR_BUYER)
        .bind(buyer_id)
        .bind(status)
        .bind(after.unwrap_or(After::END).created_at)
        .bind(after.unwrap_or(After::END).id)
        .bind(fetch)
        .bind(storefront)
        .fetch_all(conn)
        .await
}

/// Up to `limit` PAID orders with a pool paid before `cutoff` (the sweeper checks they
/// have a job). A MANUAL order (no pool) waits for its seller, not for a job: its one job
/// finishes with nothing to do, and giving it another every pass would loop forever.
pub async fn paid_before(
    conn: &mut PgConnection,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM orders WHERE status = 'PAID' AND paid_at < $1 AND pool_id IS NOT NULL
         ORDER BY paid_at LIMIT $2",
    )
    .bind(cutoff)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Of `ids`: how many are FULFILLED, how many deliveries they have and how many distinct
/// keys those deliver (a benchmark's check that each order got exactly its own key).
pub async fn delivery_summary(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<(i64, i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders WHERE id = ANY($1) AND status = 'FULFILLED'),
                count(*), count(DISTINCT key_id)
         FROM order_deliveries WHERE order_id = ANY($1)",
    )
    .bind(ids)
    .fetch_one(conn)
    .await
}

/// Pay -> FULFILLED of each FULFILLED order of `ids`, in milliseconds from the database's
/// own timestamps, shortest first (a benchmark's latency).
pub async fn pay_to_fulfilled_ms(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT (extract(epoch FROM fulfilled_at - paid_at) * 1000)::float8
         FROM orders WHERE id = ANY($1) AND status = 'FULFILLED' ORDER BY 1",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// Paid orders FULFILLED since `since` (a benchmark's check of its own run).
pub async fn fulfilled_since(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM orders
         WHERE status = 'FULFILLED' AND paid_at IS NOT NULL AND fulfilled_at > $1",
    )
    .bind(since)
    .fetch_one(conn)
    .await
}

/// (PAID orders, of which backordered), for the metrics.
pub async fn waiting_counts(conn: &mut PgConnection) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE backordered_at IS NOT NULL)
         FROM orders WHERE status = 'PAID'",
    )
    .fetch_one(conn)
    .await
}

/// Per offer of the seller, its newest orders before the cursor, then the newest of those
/// (`seller_orders_page`, a function so that its plan cannot turn into a sort of every
/// order of a launch offer).
pub const PAGE_FOR_SELLER: &str =
    "SELECT id, buyer_id, storefront_id, offer_id, pool_id, quantity, amount_cents, currency,
            status, created_at, paid_at, fulfilled_at, canceled_at, refunded_at
     FROM seller_orders_page($1, $2, $3, $4, $5)";

/// Up to `fetch` orders of the seller's offers before `after`, newest first (a seller
/// lists the MANUAL orders waiting for it). Never their keys.
pub async fn page_for_seller(
    conn: &mut PgConnection,
    seller_id: Uuid,
    status: Option<OrderStatus>,
    after: Option<After>,
    fetch: i64,
) -> Result<Vec<OrderRow>, sqlx::Error> {
    sqlx::query_as(PAGE_FOR_SELLER)
        .bind(seller_id)
        .bind(status)
        .bind(after.unwrap_or(After::END).created_at)
        .bind(after.unwrap_or(After::END).id)
        .bind(fetch)
        .fetch_all(conn)
        .await
}

pub const LOCK_FOR_SELLER: &str = "SELECT o.id, o.buyer_id, o.storefront_id, o.offer_id, o.pool_id, o.quantity,
            o.amount_cents, o.currency, o.status, o.created_at, o.paid_at, o.fulfilled_at,
            o.canceled_at, o.refunded_at, f.delivery_type FROM orders o JOIN offers f ON f.id = o.offer_id
     WHERE o.id = $1 AND f.seller_id = $2 FOR UPDATE OF o";

/// An order of one of the seller's offers, row-locked, with its offer's delivery type;
/// None (and nothing locked) for another seller's.
pub async fn lock_for_seller(
    conn: &mut PgConnection,
    id: Uuid,
    seller_id: Uuid,
) -> Result<Option<(OrderRow, crate::model::DeliveryType)>, sqlx::Error> {
    #[derive(FromRow)]
    struct Row {
        #[sqlx(flatten)]
        order: OrderRow,
        delivery_type: crate::model::DeliveryType,
    }
    let row: Option<Row> = sqlx::query_as(LOCK_FOR_SELLER)
        .bind(id)
        .bind(seller_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|r| (r.order, r.delivery_type)))
}
