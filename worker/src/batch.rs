//! Several orders per transaction. A FulfillOrder job fulfills its own order and, in the
//! same transaction, up to `extra` other orders of the same pool whose jobs are still
//! waiting in the queue,
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
    // The job's own order first, waiting for its lock as a single fulfillment does.
    let lead_pool: Option<(Option<Uuid>, String)> =
        sqlx::query_as("SELECT pool_id, status FROM orders WHERE id = $1 FOR UPDATE")
            .bind(lead)
            .fetch_optional(&mut *tx)
            .await?;
    let mut stolen = Vec::new();
    if let Some((Some(pool_id), status)) = &lead_pool {
        if status == "PAID" && extra > 0 {
            stolen = take_waiting(&mut tx, *pool_id, lead, extra).await?;
        }
    }
    let mut out = BatchOutcome {
        lead: Outcome::NothingToDo,
        also_fulfilled: 0,
        also_backordered: 0,
    };
    let mut done_jobs = Vec::with_capacity(stolen.len());
    let mut lead_done = false;
    for (job_id, order_id, paid_at) in &stolen {
        if !lead_done && lead_is_older(&mut tx, lead, *paid_at, *order_id).await? {
            out.lead = fulfill_in(&mut tx, lead).await?;
            lead_done = true;
        }
        match fulfill_in(&mut tx, *order_id).await? {
            Outcome::Fulfilled { .. } => out.also_fulfilled += 1,
            Outcome::Backordered { .. } => out.also_backordered += 1,
            Outcome::NothingToDo => {}
        }
        done_jobs.push(job_id.clone());
    }
    if !lead_done {
        out.lead = fulfill_in(&mut tx, lead).await?;
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

async fn lead_is_older(
    conn: &mut PgConnection,
    lead: Uuid,
    paid_at: chrono::DateTime<chrono::Utc>,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT (paid_at, id) < ($2, $3) FROM orders WHERE id = $1")
        .bind(lead)
        .bind(paid_at)
        .bind(id)
        .fetch_one(conn)
        .await
}

/// Locks waiting FulfillOrder jobs of PAID orders of the same pool, and those orders,
/// skipping any another transaction holds. Staying within one pool keeps the transaction
/// to one pool row (its counters), so concurrent batches cannot deadlock on pool rows.
async fn take_waiting(
    conn: &mut PgConnection,
    pool_id: Uuid,
    lead: Uuid,
    extra: i64,
) -> Result<Vec<(String, Uuid, chrono::DateTime<chrono::Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT j.id, o.id, o.paid_at
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
    .await
}
