//! Key reports: a buyer's or storefront's word that a delivered key does not work, and
//! its seller's decision. Approval and the replacement it brings are
//! [`crate::transitions::replacement`]'s.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::model::ReportStatus;

/// A key report as API.md shows it.
#[derive(Debug, Clone, Serialize, ToSchema, FromRow)]
#[serde(rename_all = "camelCase")]
pub struct KeyReport {
    pub id: Uuid,
    pub order_id: Uuid,
    /// The reported key: a pool key, or a key its seller delivered by hand (MANUAL).
    pub key_id: Uuid,
    /// The pool of a pool key; None for a MANUAL key.
    #[serde(skip)]
    pub pool_id: Option<Uuid>,
    pub reason: String,
    pub status: ReportStatus,
    /// The seller's note on a rejection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The key delivered in its place (absent while it waits for stock, or for a MANUAL
    /// key's seller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement_key_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
}

#[macro_export]
#[doc(hidden)]
macro_rules! report_columns {
    () => {
        "r.id, r.order_id, coalesce(r.key_id, r.manual_key_id) AS key_id, r.pool_id, r.reason, \
         r.status, r.note, coalesce(r.replacement_key_id, r.replacement_manual_key_id) \
         AS replacement_key_id, r.created_at, r.decided_at"
    };
}

/// The pool of `key_id` if it is a pool key delivered to `order_id` and still in its
/// hands (DELIVERED, not taken back by a refund, not replaced).
pub async fn live_key_of_order(
    conn: &mut PgConnection,
    order_id: Uuid,
    key_id: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT k.pool_id FROM order_deliveries d JOIN keys k ON k.id = d.key_id
         WHERE d.order_id = $1 AND d.key_id = $2 AND d.returned_at IS NULL
           AND k.status = 'DELIVERED' AND k.order_id = $1",
    )
    .bind(order_id)
    .bind(key_id)
    .fetch_optional(conn)
    .await
}

/// A key a seller delivered by hand to `order_id` and still valid (not replaced).
pub async fn live_manual_key_of_order(
    conn: &mut PgConnection,
    order_id: Uuid,
    key_id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM manual_keys
                        WHERE id = $2 AND order_id = $1 AND invalidated_at IS NULL)",
    )
    .bind(order_id)
    .bind(key_id)
    .fetch_one(conn)
    .await
}

/// What a report is about: a pool key (with its pool) or a key delivered by hand.
#[derive(Debug, Clone, Copy)]
pub enum Reported {
    PoolKey { key_id: Uuid, pool_id: Uuid },
    ManualKey { key_id: Uuid },
}

/// A new open report, filed under the seller of the order's offer; a key with a live
/// (open or approved) report violates `key_reports_one_live_per_key` or
/// `key_reports_one_live_per_manual_key` (the caller maps them).
pub async fn insert(
    conn: &mut PgConnection,
    order_id: Uuid,
    reported: Reported,
    reason: &str,
) -> Result<KeyReport, sqlx::Error> {
    let (key_id, pool_id, manual_key_id) = match reported {
        Reported::PoolKey { key_id, pool_id } => (Some(key_id), Some(pool_id), None),
        Reported::ManualKey { key_id } => (None, None, Some(key_id)),
    };
    sqlx::query_as(concat!(
        "INSERT INTO key_reports AS r (id, order_id, key_id, pool_id, manual_key_id, reason, seller_id)
         SELECT $1, $2, $3, $4, $5, $6, f.seller_id
         FROM orders o JOIN offers f ON f.id = o.offer_id WHERE o.id = $2
         RETURNING ",
        report_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(order_id)
    .bind(key_id)
    .bind(pool_id)
    .bind(manual_key_id)
    .bind(reason)
    .fetch_one(conn)
    .await
}

/// Reports of the order already approved (the automatic limit counts them).
pub async fn approved_for_order(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM key_reports WHERE order_id = $1 AND status = 'approved'",
    )
    .bind(order_id)
    .fetch_one(conn)
    .await
}

pub const PAGE_FOR_SELLER: &str = concat!(
    "SELECT ",
    report_columns!(),
    " FROM key_reports r
      WHERE r.seller_id = $1 AND ($2::text IS NULL OR r.status = $2)
        AND (r.created_at, r.id) < ($3, $4)
      ORDER BY r.created_at DESC, r.id DESC LIMIT $5"
);

/// Up to `fetch` reports on the seller's keys before `after`, newest first, optionally in
/// one status.
pub async fn page_for_seller(
    conn: &mut PgConnection,
    seller_id: Uuid,
    status: Option<ReportStatus>,
    after: Option<super::After>,
    fetch: i64,
) -> Result<Vec<KeyReport>, sqlx::Error> {
    let after = after.unwrap_or(super::After::END);
    sqlx::query_as(PAGE_FOR_SELLER)
        .bind(seller_id)
        .bind(status)
        .bind(after.created_at)
        .bind(after.id)
        .bind(fetch)
        .fetch_all(conn)
        .await
}

/// The report, row-locked, if it is about a key of the seller's pools; None (and nothing
/// locked) otherwise.
pub async fn lock_for_seller(
    conn: &mut PgConnection,
    id: Uuid,
    seller_id: Uuid,
) -> Result<Option<KeyReport>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        report_columns!(),
        " FROM key_reports r
          WHERE r.id = $1 AND r.seller_id = $2
          FOR UPDATE OF r"
    ))
    .bind(id)
    .bind(seller_id)
    .fetch_optional(conn)
    .await
}

/// open -> rejected, with the seller's note (the caller locked it and checked it is open).
pub async fn reject(
    conn: &mut PgConnection,
    id: Uuid,
    note: Option<&str>,
) -> Result<KeyReport, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE key_reports r SET status = 'rejected', note = $2, decided_at = now()
         WHERE r.id = $1 AND r.status = 'open' RETURNING ",
        report_columns!()
    ))
    .bind(id)
    .bind(note)
    .fetch_one(conn)
    .await
}
