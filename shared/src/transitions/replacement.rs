//! Key replacement: an approved report makes the reported key INVALID (reason
//! `replaced`) and owes its order one key from the same pool. The worker's replenishment
//! of the pool delivers it (`serve_waiting`), exactly once: the report row is locked and
//! its `replacement_key_id` is set in the same statement as the new delivery. With the
//! pool empty, the replacement waits like a backorder and is served when keys arrive.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    error::CoreError,
    jobs::{ReplenishPool, queue},
    store::key_reports::KeyReport,
    transitions::delivery::CLAIM_KEYS,
};

pub const APPROVE: &str = concat!(
    "WITH k AS (UPDATE keys SET status = 'INVALID', order_id = NULL, delivered_at = NULL,
                    invalidated_at = now(), invalid_reason = 'replaced'
                WHERE id = $2 AND status = 'DELIVERED' AND order_id = $3
                RETURNING id, pool_id, invalidated_at),
     r AS (UPDATE key_reports r SET status = 'approved', decided_at = now()
           WHERE r.id = $1 AND r.status = 'open' AND EXISTS (SELECT 1 FROM k)
           RETURNING ",
    crate::report_columns!(),
    "),
     e AS (INSERT INTO events (id, type, seller_id, pool_id, data)
           SELECT gen_random_uuid(), 'key.invalidated', p.seller_id, k.pool_id,
                  jsonb_build_object('keyId', k.id, 'poolId', k.pool_id,
                                     'invalidatedAt', k.invalidated_at, 'reason', 'replaced')
           FROM k JOIN key_pools p ON p.id = k.pool_id)
     SELECT * FROM r"
);

/// open -> approved for a report the caller has locked: its key DELIVERED -> INVALID
/// (`replaced`, with its `key.invalidated` event) and a replenishment of the pool, which
/// delivers the replacement. None (nothing changed) when the key is no longer in its
/// order's hands (a refund took it back).
pub async fn approve(
    conn: &mut PgConnection,
    report: &KeyReport,
) -> Result<Option<KeyReport>, CoreError> {
    let approved: Option<KeyReport> = sqlx::query_as(APPROVE)
        .bind(report.id)
        .bind(report.key_id)
        .bind(report.order_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(pool_id) = report.pool_id else {
        return Err(CoreError::invariant(format!(
            "report {} is about a MANUAL key: its seller types the replacement",
            report.id
        )));
    };
    if approved.is_some() {
        queue::enqueue(conn, &ReplenishPool { pool_id }).await?;
    }
    Ok(approved)
}

pub const LOCK_WAITING: &str = "SELECT r.id, r.order_id, r.key_id FROM key_reports r
     JOIN orders o ON o.id = r.order_id
     WHERE r.pool_id = $1 AND r.status = 'approved' AND r.replacement_key_id IS NULL
       AND o.status = 'FULFILLED' AND o.refunded_at IS NULL
     ORDER BY r.decided_at, r.id LIMIT $2 FOR UPDATE OF r, o";

pub const WRITE: &str =
    "WITH t AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[])
                AS t(report_id, order_id, old_key, new_key)),
     d AS (INSERT INTO order_deliveries (order_id, key_id, replaces)
           SELECT order_id, new_key, old_key FROM t RETURNING 1),
     k AS (UPDATE keys k SET status = 'DELIVERED', order_id = t.order_id, delivered_at = now()
           FROM t WHERE k.id = t.new_key AND k.status = 'AVAILABLE' RETURNING 1),
     r AS (UPDATE key_reports r SET replacement_key_id = t.new_key
           FROM t WHERE r.id = t.report_id AND r.replacement_key_id IS NULL RETURNING 1)
     SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM k), (SELECT count(*) FROM r)";

/// Delivers replacements to up to `limit` approved reports of the pool, oldest approved
/// first, as far as its AVAILABLE keys go (the orders and reports locked: a refund of the
/// same order waits, and a report is served once). Returns (served, waiting before).
pub async fn serve_waiting(
    conn: &mut PgConnection,
    pool_id: Uuid,
    limit: i64,
) -> Result<(usize, usize), CoreError> {
    let waiting: Vec<(Uuid, Uuid, Uuid)> = sqlx::query_as(LOCK_WAITING)
        .bind(pool_id)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    if waiting.is_empty() {
        return Ok((0, 0));
    }
    let keys: Vec<Uuid> = sqlx::query_scalar(CLAIM_KEYS)
        .bind(pool_id)
        .bind(waiting.len() as i64)
        .fetch_all(&mut *conn)
        .await?;
    let n = keys.len();
    if n == 0 {
        return Ok((0, waiting.len()));
    }
    let served = &waiting[..n];
    let (written, delivered, reports): (i64, i64, i64) = sqlx::query_as(WRITE)
        .bind(served.iter().map(|w| w.0).collect::<Vec<_>>())
        .bind(served.iter().map(|w| w.1).collect::<Vec<_>>())
        .bind(served.iter().map(|w| w.2).collect::<Vec<_>>())
        .bind(&keys)
        .fetch_one(&mut *conn)
        .await?;
    if (written, delivered, reports) != (n as i64, n as i64, n as i64) {
        return Err(CoreError::invariant(format!(
            "{n} replacements wrote {written} deliveries, {delivered} keys, {reports} reports"
        )));
    }
    Ok((n, waiting.len()))
}
