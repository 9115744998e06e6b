//! Webhook endpoints (registered by sellers and storefronts) and their deliveries: one row
//! per (endpoint, event), created with the event by a trigger, sent in event order by the
//! worker, which leases an endpoint while it sends.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::{model::Role, vault::Sealed};

/// Wakes the worker's sender when deliveries were created.
pub const DUE_CHANNEL: &str = "autokey_webhooks_due";

/// What `Vault::seal_secret` binds an endpoint's secret to.
pub const SECRET_LABEL: &str = "webhook-endpoint";

#[derive(Debug, Clone, FromRow)]
pub struct Endpoint {
    pub id: Uuid,
    pub owner_role: Role,
    pub owner_id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub consecutive_failures: i32,
    pub created_at: DateTime<Utc>,
}

macro_rules! endpoint_columns {
    () => {
        "id, owner_role, owner_id, url, event_types, enabled, disabled_reason, \
         consecutive_failures, created_at"
    };
}

/// A new endpoint, its secret already sealed by the caller.
pub struct NewEndpoint<'a> {
    pub id: Uuid,
    pub owner_role: Role,
    pub owner_id: Uuid,
    pub url: &'a str,
    pub event_types: &'a [String],
    pub secret: &'a Sealed,
}

pub async fn create(conn: &mut PgConnection, e: &NewEndpoint<'_>) -> Result<Endpoint, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO webhook_endpoints (id, owner_role, owner_id, url, event_types,
             secret_ciphertext, secret_nonce, secret_key_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
        endpoint_columns!()
    ))
    .bind(e.id)
    .bind(e.owner_role)
    .bind(e.owner_id)
    .bind(e.url)
    .bind(e.event_types)
    .bind(&e.secret.ciphertext)
    .bind(&e.secret.nonce[..])
    .bind(&e.secret.enc_key_id)
    .fetch_one(conn)
    .await
}

/// The owner's endpoints (not deleted), oldest first.
pub async fn list_for_owner(
    conn: &mut PgConnection,
    owner_id: Uuid,
) -> Result<Vec<Endpoint>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        endpoint_columns!(),
        " FROM webhook_endpoints WHERE owner_id = $1 AND deleted_at IS NULL
          ORDER BY created_at, id LIMIT 100"
    ))
    .bind(owner_id)
    .fetch_all(conn)
    .await
}

/// Endpoint `id` if `owner_id` owns it and it is not deleted.
pub async fn find_for_owner(
    conn: &mut PgConnection,
    owner_id: Uuid,
    id: Uuid,
) -> Result<Option<Endpoint>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        endpoint_columns!(),
        " FROM webhook_endpoints WHERE id = $1 AND owner_id = $2 AND deleted_at IS NULL"
    ))
    .bind(id)
    .bind(owner_id)
    .fetch_optional(conn)
    .await
}

/// Deletes (softly: its delivery log stays) the owner's endpoint; false when not found.
/// Deliveries still pending are dropped.
pub async fn delete(
    conn: &mut PgConnection,
    owner_id: Uuid,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    let deleted: i64 = sqlx::query_scalar(
        "WITH e AS (UPDATE webhook_endpoints SET deleted_at = now(), enabled = false
                    WHERE id = $1 AND owner_id = $2 AND deleted_at IS NULL RETURNING id),
              d AS (UPDATE webhook_deliveries d SET status = 'failed',
                           last_error = 'endpoint deleted'
                    FROM e WHERE d.endpoint_id = e.id AND d.status = 'pending' RETURNING 1)
         SELECT count(*) FROM e",
    )
    .bind(id)
    .bind(owner_id)
    .fetch_one(conn)
    .await?;
    Ok(deleted == 1)
}

/// A delivery of `event_id` to one endpoint (the test route's; the fan-out trigger makes
/// the others).
pub async fn add_delivery(
    conn: &mut PgConnection,
    endpoint_id: Uuid,
    event_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH d AS (INSERT INTO webhook_deliveries (endpoint_id, event_id, event_xid, event_seq)
                    SELECT $1, e.id, e.xid, e.seq FROM events e WHERE e.id = $2
                    ON CONFLICT DO NOTHING RETURNING 1)
         SELECT pg_notify($3, '') FROM d",
    )
    .bind(endpoint_id)
    .bind(event_id)
    .bind(DUE_CHANNEL)
    .execute(conn)
    .await?;
    Ok(())
}

/// One line of an endpoint's delivery log.
#[derive(Debug, Clone, FromRow)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Up to `fetch` deliveries of the endpoint, newest first, before `before`.
pub async fn deliveries(
    conn: &mut PgConnection,
    endpoint_id: Uuid,
    before: Option<super::After>,
    fetch: i64,
) -> Result<Vec<DeliveryRow>, sqlx::Error> {
    let before = before.unwrap_or(super::After::END);
    sqlx::query_as(
        "SELECT d.id, d.event_id, e.type AS event_type, d.status, d.attempts, d.last_status,
                d.last_error, d.created_at, d.last_attempt_at, d.delivered_at
         FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
         WHERE d.endpoint_id = $1 AND (d.created_at, d.id) < ($2, $3)
         ORDER BY d.created_at DESC, d.id DESC LIMIT $4",
    )
    .bind(endpoint_id)
    .bind(before.created_at)
    .bind(before.id)
    .bind(fetch)
    .fetch_all(conn)
    .await
}

// ---------------------------------------------------------------- the worker's side

/// An endpoint leased for sending, with its sealed secret.
#[derive(Debug, Clone, FromRow)]
pub struct Leased {
    pub id: Uuid,
    pub url: String,
    pub secret_ciphertext: Vec<u8>,
    pub secret_nonce: Vec<u8>,
    pub secret_key_id: String,
    pub consecutive_failures: i32,
}

/// Leases one enabled endpoint that has a visible pending delivery and is not waiting for
/// a retry or held by another sender; None when there is none.
pub async fn lease(
    conn: &mut PgConnection,
    lease: Duration,
) -> Result<Option<Leased>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE webhook_endpoints w SET lease_until = now() + $1 * interval '1 second'
         WHERE w.id = (
             SELECT e.id FROM webhook_endpoints e
             WHERE e.enabled AND e.deleted_at IS NULL
               AND (e.retry_at IS NULL OR e.retry_at <= now())
               AND (e.lease_until IS NULL OR e.lease_until < now())
               AND EXISTS (SELECT 1 FROM webhook_deliveries d
                           WHERE d.endpoint_id = e.id AND d.status = 'pending'
                             AND d.event_xid < pg_snapshot_xmin(pg_current_snapshot()))
             ORDER BY e.retry_at NULLS FIRST LIMIT 1
             FOR UPDATE SKIP LOCKED)
         RETURNING w.id, w.url, w.secret_ciphertext, w.secret_nonce, w.secret_key_id,
                   w.consecutive_failures",
    )
    .bind(lease.as_secs_f64())
    .fetch_optional(conn)
    .await
}

/// A delivery to send: the event it carries.
#[derive(Debug, Clone, FromRow)]
pub struct Due {
    pub id: Uuid,
    pub attempts: i32,
    pub event_id: Uuid,
    pub event_type: String,
    pub event_created_at: DateTime<Utc>,
    pub event_data: serde_json::Value,
}

/// The endpoint's next `limit` pending deliveries, in event order (visible events only).
pub async fn due(
    conn: &mut PgConnection,
    endpoint_id: Uuid,
    limit: i64,
) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.id, d.attempts, e.id AS event_id, e.type AS event_type,
                e.created_at AS event_created_at, e.data AS event_data
         FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
         WHERE d.endpoint_id = $1 AND d.status = 'pending'
           AND d.event_xid < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY d.event_xid, d.event_seq LIMIT $2",
    )
    .bind(endpoint_id)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Records a successful send.
pub async fn delivered(
    conn: &mut PgConnection,
    endpoint_id: Uuid,
    delivery_id: Uuid,
    http_status: u16,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH d AS (UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1,
                        last_status = $3, last_error = NULL, last_attempt_at = now(),
                        delivered_at = now()
                    WHERE id = $2 AND status = 'pending' RETURNING 1)
         UPDATE webhook_endpoints SET consecutive_failures = 0, retry_at = NULL WHERE id = $1",
    )
    .bind(endpoint_id)
    .bind(delivery_id)
    .bind(i32::from(http_status))
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a failed send: the endpoint waits `retry_in` (its deliveries stay in order);
/// after `give_up_after` consecutive failures it is disabled with `reason`. Returns
/// whether it was disabled.
pub async fn failed(
    conn: &mut PgConnection,
    endpoint_id: Uuid,
    delivery_id: Uuid,
    http_status: Option<u16>,
    error: &str,
    retry_in: Duration,
    give_up_after: i32,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "WITH d AS (UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = $3,
                        last_error = $4, last_attempt_at = now()
                    WHERE id = $2 RETURNING 1)
         UPDATE webhook_endpoints
         SET consecutive_failures = consecutive_failures + 1,
             retry_at = now() + $5 * interval '1 second',
             lease_until = NULL,
             enabled = consecutive_failures + 1 < $6,
             disabled_reason = CASE WHEN consecutive_failures + 1 >= $6
                 THEN 'disabled after ' || $6 || ' consecutive failed deliveries; last: ' || $4
                 END
         WHERE id = $1 RETURNING NOT enabled",
    )
    .bind(endpoint_id)
    .bind(delivery_id)
    .bind(http_status.map(i32::from))
    .bind(error)
    .bind(retry_in.as_secs_f64())
    .bind(give_up_after)
    .fetch_one(conn)
    .await
}

/// Gives the endpoint back (nothing left to send, or the sender is stopping).
pub async fn release(conn: &mut PgConnection, endpoint_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE webhook_endpoints SET lease_until = NULL WHERE id = $1")
        .bind(endpoint_id)
        .execute(conn)
        .await?;
    Ok(())
}
