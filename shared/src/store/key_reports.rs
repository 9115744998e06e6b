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
    pub key_id: Uuid,
    #[serde(skip)]
    pub pool_id: Uuid,
    pub reason: String,
    pub status: ReportStatus,
    /// The seller's note on a rejection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The key delivered in its place (absent while it waits for stock).
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
        "r.id, r.order_id, r.key_id, r.pool_id, r.reason, r.status, r.note, \
         r.replacement_key_id, r.created_at, r.decided_at"
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

/// A new open report; a key with a live (open or approved) report violates
/// `key_reports_one_live_per_key` (the caller maps it).
pub async fn insert(
    conn: &mut PgConnection,
    order_id: Uuid,
    key_id: Uuid,
    pool_id: Uuid,
    reason: &str,
) -> Result<KeyReport, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO key_reports AS r (id, order_id, key_id, pool_id, reason)
         VALUES ($1, $2, $3, $4, $5) RETURNING ",
        report_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(order_id)
    .bind(key_id)
    .bind(pool_id)
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

/// Up to `limit` reports on the seller's pools, newest first, optionally in one status.
pub async fn for_seller(
    conn: &mut PgConnection,
    seller_id: Uuid,
    status: Option<ReportStatus>,
    limit: i64,
) -> Result<Vec<KeyReport>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        report_columns!(),
        " FROM key_reports r JOIN key_pools p ON p.id = r.pool_id
          WHERE p.seller_id = $1 AND ($2::text IS NULL OR r.status = $2)
          ORDER BY r.created_at DESC, r.id DESC LIMIT $3"
    ))
    .bind(seller_id)
    .bind(status)
    .bind(limit)
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
          WHERE r.id = $1
            AND EXISTS (SELECT 1 FROM key_pools p WHERE p.id = r.pool_id AND p.seller_id = $2)
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
