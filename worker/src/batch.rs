//! Several orders per transaction. A FulfillOrder job fulfills its own order and, in the
//! same transaction, up to `extra` other orders whose jobs are still waiting in the queue,
//! marking those jobs done in that same commit. One commit then serves many orders, which
//! is what lifts throughput beyond one-order-per-transaction (and per-job queue overhead).

use std::time::Duration;

use autokey_shared::jobs::{FulfillOrder, Job};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::fulfillment::{FulfillError, Outcome, fulfill_in, set_lock_timeout};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The outcome for the job's own order.
    pub lead: Outcome,
    /// Other orders served in the same transaction (their jobs are now done).
    pub also_fulfilled: usize,
    pub also_backordered: usize,
}

/// Fulfills `lead` plus up to `extra` orders taken from waiting FulfillOrder jobs.
pub async fn fulfill_batch(
    pool: &PgPool,
    lead: Uuid,
    extra: i64,
    lock_timeout: Duration,
) -> Result<BatchOutcome, FulfillError> {
    let mut tx = pool.begin().await?;
    set_lock_timeout(&mut tx, lock_timeout).await?;
    // The job's own order first, waiting for its lock as a single fulfillment does.
    let lead_outcome = fulfill_in(&mut tx, lead).await?;
    let stolen = if extra > 0 {
        take_waiting(&mut tx, lead, extra).await?
    } else {
        Vec::new()
    };
    let mut out = BatchOutcome {
        lead: lead_outcome,
        also_fulfilled: 0,
        also_backordered: 0,
    };
    let mut done_jobs = Vec::with_capacity(stolen.len());
    for (job_id, order_id) in stolen {
        match fulfill_in(&mut tx, order_id).await? {
            Outcome::Fulfilled { .. } => out.also_fulfilled += 1,
            Outcome::Backordered { .. } => out.also_backordered += 1,
            Outcome::NothingToDo => {}
        }
        done_jobs.push(job_id);
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

/// Locks waiting FulfillOrder jobs and their orders (skipping any another transaction
/// holds), oldest paid first and grouped by pool, so that concurrent batches take the
/// pool rows (their counters) in one global order and cannot deadlock on them.
async fn take_waiting(
    conn: &mut PgConnection,
    lead: Uuid,
    extra: i64,
) -> Result<Vec<(String, Uuid)>, sqlx::Error> {
    let jobs: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, idempotency_key FROM apalis.jobs
         WHERE job_type = $1 AND status = 'Pending' AND run_at <= now() AND idempotency_key <> $2
         ORDER BY run_at LIMIT $3 FOR UPDATE SKIP LOCKED",
    )
    .bind(FulfillOrder::QUEUE)
    .bind(lead.to_string())
    .bind(extra)
    .fetch_all(&mut *conn)
    .await?;
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let order_ids: Vec<Uuid> = jobs
        .iter()
        .filter_map(|(_, key)| key.parse().ok())
        .collect();
    let locked: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM orders WHERE id = ANY($1) AND status = 'PAID'
         ORDER BY pool_id, paid_at, id FOR UPDATE SKIP LOCKED",
    )
    .bind(&order_ids)
    .fetch_all(&mut *conn)
    .await?;
    // Jobs whose order is missing, not PAID or busy elsewhere are left for their own run.
    Ok(locked
        .into_iter()
        .filter_map(|order_id| {
            let key = order_id.to_string();
            jobs.iter()
                .find(|(_, k)| *k == key)
                .map(|(job_id, _)| (job_id.clone(), order_id))
        })
        .collect())
}
