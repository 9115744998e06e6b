//! Events: the outbox the transitions (and the pool counter trigger) write in the same
//! transaction as the change they record. Read in a stable order with no gaps: a page
//! holds only events of transactions older than every transaction still running, ordered
//! by (transaction id, sequence), so a reader that follows its cursor sees every event
//! exactly once even when transactions commit out of order.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

/// Every event type a caller may subscribe to.
pub const TYPES: &[&str] = &[
    "pool.low_stock",
    "pool.out_of_stock",
    "pool.restocked",
    "order.paid",
    "order.fulfilled",
    "order.backordered",
    "order.canceled",
    "key.invalidated",
];

/// Sent to an endpoint by `POST /webhook-endpoints/:id/test`.
pub const TEST_TYPE: &str = "webhook.test";

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub id: Uuid,
    /// The position: (transaction id, sequence).
    pub xid: i64,
    pub seq: i64,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub created_at: DateTime<Utc>,
    pub data: serde_json::Value,
}

/// Whose events a caller reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// A seller: events of its pools, keys and offers (and the orders of its offers).
    Seller(Uuid),
    /// A storefront: events of the orders it placed.
    Storefront(Uuid),
    /// An admin: every event.
    Admin,
}

/// A position in the event feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub xid: i64,
    pub seq: i64,
}

macro_rules! page_sql {
    ($who:literal) => {
        concat!(
            "SELECT id, xid::text::bigint AS xid, seq, type, created_at, data FROM events
             WHERE ",
            $who,
            " AND ($2::text IS NULL OR type = $2)
               AND (xid, seq) > ($3::text::xid8, $4)
               AND xid < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY xid, seq LIMIT $5"
        )
    };
}

pub const PAGE_FOR_SELLER: &str = page_sql!("seller_id = $1");
pub const PAGE_FOR_STOREFRONT: &str = page_sql!("storefront_id = $1");
pub const PAGE_ALL: &str = page_sql!("$1::uuid IS NULL");

/// Up to `fetch` events `reader` may see after `after` (from the start when None).
pub async fn page(
    conn: &mut PgConnection,
    reader: Reader,
    kind: Option<&str>,
    after: Option<Position>,
    fetch: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    let (sql, who) = match reader {
        Reader::Seller(id) => (PAGE_FOR_SELLER, Some(id)),
        Reader::Storefront(id) => (PAGE_FOR_STOREFRONT, Some(id)),
        Reader::Admin => (PAGE_ALL, None),
    };
    let after = after.unwrap_or(Position { xid: 0, seq: 0 });
    sqlx::query_as(sql)
        .bind(who)
        .bind(kind)
        .bind(after.xid.to_string())
        .bind(after.seq)
        .bind(fetch)
        .fetch_all(conn)
        .await
}

/// Records a `webhook.test` event for the owner of an endpoint; returns its id.
pub async fn insert_test(
    conn: &mut PgConnection,
    seller: Option<Uuid>,
    storefront: Option<Uuid>,
    data: serde_json::Value,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO events (id, type, seller_id, storefront_id, data)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(TEST_TYPE)
    .bind(seller)
    .bind(storefront)
    .bind(data)
    .fetch_one(conn)
    .await
}
