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

use crate::fulfillment::{FulfillError, Outcome, claim_available, fulfill_in, set_lock_timeout};

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
/// FulfillOrder jobs, oldest paid first.
pub async fn fulfill_batch(
    pool: &PgPool,
    lead: Uuid,
    extra: i64,
    lock_timeout: Duration,
) -> Result<BatchOutcome, FulfillError> {
    let mut tx = pool.begin().await?;
    set_lock_timeout(&mut tx, lock_timeout).await?;
    let mut out = BatchOutcome {
        lead: Outcome::NothingToDo,
        also_fulfilled: 0,
        also_backordered: 0,
    };
    // The job's own order first, waiting for its lock as a single fulfillment does.
    let lead_row: Option<(Option<Uuid>, String, i32, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT pool_id, status, quantity, paid_at FROM orders WHERE id = $1 FOR UPDATE",
    )
    .bind(lead)
    .fetch_optional(&mut *tx)
    .await?;
    let (pool_id, members, done_jobs) = match lead_row {
        Some((Some(pool_id), status, quantity, Some(paid_at))) if status == "PAID" => {
            let (mut members, jobs) = if extra > 0 {
                take_waiting(&mut tx, pool_id, lead, extra).await?
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
            out.lead = fulfill_in(&mut tx, lead).await?;
            tx.commit().await?;
            return Ok(out);
        }
    };

    let served = if older_order_waits(&mut tx, pool_id).await? {
        0
    } else {
        deliver_prefix(&mut tx, pool_id, &members).await?
    };
    for (i, m) in members.iter().enumerate() {
        let outcome = if i < served {
            Outcome::Fulfilled {
                keys: i64::from(m.quantity),
            }
        } else {
            fulfill_in(&mut tx, m.order_id).await?
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
    if !done_jobs.is_empty() {
        sqlx::query(
            "UPDATE apalis.jobs SET status = 'Done', done_at = now(), attempts = attempts + 1,
                    last_result = jsonb_build_object('Ok', 'served in a batch')
             WHERE id = ANY($1)",
        )
        .bind(&done_jobs)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(out)
}

/// Whether any PAID order of the pool waits for keys: then keys go to it first (the
/// one-order path and the replenisher keep that order), so the batch takes none itself.
async fn older_order_waits(conn: &mut PgConnection, pool_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM orders
                        WHERE pool_id = $1 AND status = 'PAID' AND backordered_at IS NOT NULL)",
    )
    .bind(pool_id)
    .fetch_one(conn)
    .await
}

/// Claims the keys of all `members` at once and fulfills the longest prefix (oldest paid
/// first) that they cover completely, with one statement per table. Returns how many
/// members were fulfilled; the rest are left untouched for the one-order path.
async fn deliver_prefix(
    conn: &mut PgConnection,
    pool_id: Uuid,
    members: &[Member],
) -> Result<usize, FulfillError> {
    let wanted: i64 = members.iter().map(|m| i64::from(m.quantity)).sum();
    let keys = claim_available(conn, pool_id, wanted).await?;
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
    // the checks here were wrong.
    sqlx::query(
        "INSERT INTO order_deliveries (order_id, key_id)
         SELECT * FROM unnest($1::uuid[], $2::uuid[])",
    )
    .bind(&key_orders)
    .bind(&key_ids)
    .execute(&mut *conn)
    .await?;
    let keys_done = sqlx::query(
        "UPDATE keys SET status = 'DELIVERED', order_id = a.order_id, delivered_at = now()
         FROM unnest($1::uuid[], $2::uuid[]) AS a(key_id, order_id)
         WHERE keys.id = a.key_id AND keys.status = 'AVAILABLE'",
    )
    .bind(&key_ids)
    .bind(&key_orders)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let orders_done = sqlx::query(
        "UPDATE orders SET status = 'FULFILLED', fulfilled_at = now()
         WHERE id = ANY($1) AND status = 'PAID'",
    )
    .bind(&orders)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if keys_done != key_ids.len() as u64 || orders_done != orders.len() as u64 {
        // Cannot happen while the rows are locked as above; refuse rather than half-deliver.
        return Err(FulfillError::Database(sqlx::Error::Protocol(format!(
            "batch expected {} keys and {} orders, updated {keys_done} and {orders_done}",
            key_ids.len(),
            orders.len()
        ))));
    }
    sqlx::query("SELECT pg_notify($1, id::text) FROM unnest($2::uuid[]) AS id")
        .bind(ORDER_FULFILLED_CHANNEL)
        .bind(&orders)
        .execute(&mut *conn)
        .await?;
    Ok(orders.len())
}

/// Locks waiting FulfillOrder jobs of PAID orders of the same pool, and those orders,
/// skipping any another transaction holds. Staying within one pool keeps the transaction
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
           AND j.status = 'Pending' AND j.run_at <= now()
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
