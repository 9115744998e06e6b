//! Several orders per transaction. A FulfillOrder job fulfills its own order and, in the
//! same transaction, up to `extra` other orders of the same pool whose jobs are still
//! waiting in the queue, marking those jobs done in that same commit.
//!
//! When no order of the pool waits for keys (the common case), the whole batch is served
//! set-based: one claim of all the keys it needs, then one statement per table for all
//! its orders. Orders that cannot be served that way (the pool runs short, or older
//! orders already wait) go through the one-order path, which keeps the backorder rules.

use std::time::Duration;

use autokey_shared::{
    jobs::{FulfillOrder, Job},
    model::ORDER_FULFILLED_CHANNEL,
};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::fulfillment::{self, FulfillError, Outcome, fulfill_in};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The outcome for the job's own order.
    pub lead: Outcome,
    /// Other orders served in the same transaction (their jobs are now done).
    pub also_fulfilled: usize,
    pub also_backordered: usize,
}

/// A PAID order of the batch, locked by this transaction.
#[derive(Debug, Clone)]
struct Member {
    order_id: Uuid,
    quantity: i32,
    paid_at: DateTime<Utc>,
}

/// Fulfills `lead` plus up to `extra` orders of the same pool taken from waiting
/// FulfillOrder jobs, oldest paid first, in one transaction.
pub async fn fulfill_batch(
    pool: &PgPool,
    lead: Uuid,
    extra: i64,
    lock_timeout: Duration,
) -> Result<BatchOutcome, FulfillError> {
    let mut tx = fulfillment::begin(pool, lock_timeout).await?;
    let (out, done_jobs) = fulfill_batch_in(&mut tx, lead, extra).await?;
    mark_done(&mut tx, &done_jobs, None).await?;
    tx.commit().await?;
    Ok(out)
}

/// The fast lane's unit of work: claims the FulfillOrder job `job_id` itself (if it is
/// still Pending and no one holds it), runs its batch and marks it and the batch's jobs
/// Done, all in one transaction. `None` when the job was not there to take: the queue's
/// own workers have it, or it is done. On error nothing is kept (the caller records the
/// failed attempt).
pub async fn fulfill_job(
    pool: &PgPool,
    job_id: &str,
    extra: i64,
    lock_timeout: Duration,
) -> Result<Option<BatchOutcome>, FulfillError> {
    let mut tx = fulfillment::begin(pool, lock_timeout).await?;
    let key: Option<Option<String>> = sqlx::query_scalar(
        "SELECT idempotency_key FROM apalis.jobs
         WHERE id = $1 AND job_type = $2 AND status = 'Pending'
         FOR UPDATE SKIP LOCKED",
    )
    .bind(job_id)
    .bind(FulfillOrder::QUEUE)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(Ok(order_id)) = key.flatten().map(|k| k.parse::<Uuid>()) else {
        return Ok(None);
    };
    let (out, done_jobs) = fulfill_batch_in(&mut tx, order_id, extra).await?;
    mark_done(&mut tx, &done_jobs, Some(job_id)).await?;
    tx.commit().await?;
    Ok(Some(out))
}

/// Marks the jobs of orders served by another job's batch (and the fast lane's own job)
/// Done, on the transaction that served them.
async fn mark_done(
    conn: &mut PgConnection,
    batched: &[String],
    own: Option<&str>,
) -> Result<(), sqlx::Error> {
    if batched.is_empty() && own.is_none() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Done', done_at = now(), attempts = attempts + 1,
                last_result = jsonb_build_object('Ok',
                    CASE WHEN id = $2 THEN 'served by the fast lane' ELSE 'served in a batch' END)
         WHERE id = ANY($1) OR id = $2",
    )
    .bind(batched)
    .bind(own)
    .execute(conn)
    .await?;
    Ok(())
}

/// The batch on the caller's transaction; returns the jobs it served besides the lead's.
async fn fulfill_batch_in(
    tx: &mut PgConnection,
    lead: Uuid,
    extra: i64,
) -> Result<(BatchOutcome, Vec<String>), FulfillError> {
    let mut out = BatchOutcome {
        lead: Outcome::NothingToDo,
        also_fulfilled: 0,
        also_backordered: 0,
    };
    // The job's own order first, waiting for its lock as a single fulfillment does.
    // (pool_id, status, quantity, paid_at)
    type LeadRow = (Option<Uuid>, String, i32, Option<DateTime<Utc>>);
    let lead_row: Option<LeadRow> = sqlx::query_as(
        "SELECT pool_id, status, quantity, paid_at FROM orders WHERE id = $1 FOR UPDATE",
    )
    .bind(lead)
    .fetch_optional(&mut *tx)
    .await?;
    let (pool_id, members, done_jobs) = match lead_row {
        Some((Some(pool_id), status, quantity, Some(paid_at))) if status == "PAID" => {
            let (mut members, jobs) = if extra > 0 {
                take_waiting(tx, pool_id, lead, extra).await?
            } else {
                (Vec::new(), Vec::new())
            };
            members.push(Member {
                order_id: lead,
                quantity,
                paid_at,
            });
            members.sort_by_key(|m| (m.paid_at, m.order_id));
            (pool_id, members, jobs)
        }
        // Missing, not PAID, or a MANUAL offer's order: the one-order path says which.
        _ => {
            out.lead = fulfill_in(tx, lead).await?;
            return Ok((out, Vec::new()));
        }
    };

    let served = deliver_prefix(tx, pool_id, &members).await?;
    for (i, m) in members.iter().enumerate() {
        let outcome = if i < served {
            Outcome::Fulfilled {
                keys: i64::from(m.quantity),
            }
        } else {
            fulfill_in(tx, m.order_id).await?
        };
        if m.order_id == lead {
            out.lead = outcome;
            continue;
        }
        match outcome {
            Outcome::Fulfilled { .. } => out.also_fulfilled += 1,
            Outcome::Backordered { .. } => out.also_backordered += 1,
            Outcome::NothingToDo => {}
        }
    }
    Ok((out, done_jobs))
}

/// Claims the keys of all `members` at once and fulfills the longest prefix (oldest paid
/// first) that they cover completely, in one statement. Returns how many members were
/// fulfilled; the rest are left untouched for the one-order path. Claims nothing while
/// any PAID order of the pool waits for keys: keys go to it first (the one-order path
/// and the replenisher keep that order).
async fn deliver_prefix(
    conn: &mut PgConnection,
    pool_id: Uuid,
    members: &[Member],
) -> Result<usize, FulfillError> {
    let wanted: i64 = members.iter().map(|m| i64::from(m.quantity)).sum();
    let keys: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM keys
         WHERE pool_id = $1 AND status = 'AVAILABLE'
           AND NOT EXISTS (SELECT 1 FROM orders
                           WHERE pool_id = $1 AND status = 'PAID' AND backordered_at IS NOT NULL)
         ORDER BY created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(pool_id)
    .bind(wanted)
    .fetch_all(&mut *conn)
    .await?;
    let mut key_ids = Vec::with_capacity(keys.len());
    let mut key_orders = Vec::with_capacity(keys.len());
    let mut orders = Vec::with_capacity(members.len());
    for m in members {
        let q = m.quantity as usize;
        if key_ids.len() + q > keys.len() {
            break;
        }
        key_ids.extend_from_slice(&keys[key_ids.len()..key_ids.len() + q]);
        key_orders.extend(std::iter::repeat_n(m.order_id, q));
        orders.push(m.order_id);
    }
    if orders.is_empty() {
        return Ok(0);
    }
    // The UNIQUE on order_deliveries.key_id refuses a second delivery of any key, even if
    // the checks here were wrong; the counts below refuse a partial one.
    let (delivered, keys_done, orders_done, _notified): (i64, i64, i64, i64) = sqlx::query_as(
        "WITH a AS (SELECT * FROM unnest($1::uuid[], $2::uuid[]) AS a(key_id, order_id)),
         d AS (INSERT INTO order_deliveries (order_id, key_id)
               SELECT order_id, key_id FROM a RETURNING 1),
         k AS (UPDATE keys SET status = 'DELIVERED', order_id = a.order_id, delivered_at = now()
               FROM a WHERE keys.id = a.key_id AND keys.status = 'AVAILABLE' RETURNING 1),
         o AS (UPDATE orders SET status = 'FULFILLED', fulfilled_at = now()
               WHERE id = ANY($3) AND status = 'PAID' RETURNING id)
         SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM k), (SELECT count(*) FROM o),
                (SELECT count(*) FROM (SELECT pg_notify($4, id::text) FROM o) n)",
    )
    .bind(&key_ids)
    .bind(&key_orders)
    .bind(&orders)
    .bind(ORDER_FULFILLED_CHANNEL)
    .fetch_one(&mut *conn)
    .await?;
    let n = key_ids.len() as i64;
    if delivered != n || keys_done != n || orders_done != orders.len() as i64 {
        // Cannot happen while the rows are locked as above; refuse rather than half-deliver.
        return Err(FulfillError::Database(sqlx::Error::Protocol(format!(
            "batch expected {n} keys and {} orders, did {delivered}/{keys_done} and {orders_done}",
            orders.len()
        ))));
    }
    Ok(orders.len())
}

/// Locks waiting FulfillOrder jobs of PAID orders of the same pool, and those orders,
/// skipping any another transaction holds. Pending jobs only: a Failed one waits for its
/// retry time (its `run_at`), while a Pending one's `run_at` in the future is only the
/// fast lane's grace. Staying within one pool keeps the transaction
/// to one pool row (its counters), so concurrent batches cannot deadlock on pool rows.
async fn take_waiting(
    conn: &mut PgConnection,
    pool_id: Uuid,
    lead: Uuid,
    extra: i64,
) -> Result<(Vec<Member>, Vec<String>), sqlx::Error> {
    let rows: Vec<(String, Uuid, i32, DateTime<Utc>)> = sqlx::query_as(
        "SELECT j.id, o.id, o.quantity, o.paid_at
         FROM orders o JOIN apalis.jobs j ON j.job_type = $1 AND j.idempotency_key = o.id::text
         WHERE o.pool_id = $2 AND o.status = 'PAID' AND o.id <> $3
           AND j.status = 'Pending'
         ORDER BY o.paid_at, o.id
         LIMIT $4
         FOR UPDATE OF o, j SKIP LOCKED",
    )
    .bind(FulfillOrder::QUEUE)
    .bind(pool_id)
    .bind(lead)
    .bind(extra)
    .fetch_all(conn)
    .await?;
    let mut members = Vec::with_capacity(rows.len());
    let mut jobs = Vec::with_capacity(rows.len());
    for (job_id, order_id, quantity, paid_at) in rows {
        jobs.push(job_id);
        members.push(Member {
            order_id,
            quantity,
            paid_at,
        });
    }
    Ok((members, jobs))
}
