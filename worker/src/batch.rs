//! Several orders per transaction. A FulfillOrder job fulfills its own order and, in the
//! same transaction, up to `extra` other orders of the same pool whose own jobs have not
//! run yet, marking those jobs done in that same commit. The fast lane's unit of work is
//! the same, with the job's own claim in the transaction too.

use std::time::Duration;

use autokey_shared::{
    db,
    jobs::{FulfillOrder, JobError, queue},
    transitions::delivery::{self, Outcome, Take},
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The outcome for the job's own order.
    pub lead: Outcome,
    /// Other orders served in the same transaction (their jobs are now done).
    pub also_fulfilled: usize,
    pub also_backordered: usize,
}

/// Fulfills `lead` plus up to `extra` orders of the same pool, oldest paid first, in one
/// transaction.
pub async fn fulfill_batch(
    pool: &PgPool,
    lead: Uuid,
    extra: i64,
    lock_timeout: Duration,
) -> Result<BatchOutcome, JobError> {
    let mut tx = db::begin_with_lock_timeout(pool, lock_timeout).await?;
    let (out, done_jobs) = fulfill_batch_in(&mut tx, lead, extra).await?;
    queue::mark_done(&mut tx, &done_jobs, None).await?;
    tx.commit().await?;
    Ok(out)
}

/// The fast lane's unit of work: claims the FulfillOrder job `job_id` itself (if it is
/// still Pending and no one holds it), runs its batch and marks it and the batch's jobs
/// Done, all in one transaction. `None` when the job was not there to take. On error
/// nothing is kept (the caller records the failed attempt).
pub async fn fulfill_job(
    pool: &PgPool,
    job_id: &str,
    extra: i64,
    lock_timeout: Duration,
) -> Result<Option<BatchOutcome>, JobError> {
    let mut tx = db::begin_with_lock_timeout(pool, lock_timeout).await?;
    let Some(job) = queue::claim_pending::<FulfillOrder>(&mut tx, job_id).await? else {
        return Ok(None);
    };
    let (out, done_jobs) = fulfill_batch_in(&mut tx, job.order_id, extra).await?;
    queue::mark_done(&mut tx, &done_jobs, Some(job_id)).await?;
    tx.commit().await?;
    Ok(Some(out))
}

/// The batch on the caller's transaction; returns the jobs of the other orders it took.
async fn fulfill_batch_in(
    tx: &mut PgConnection,
    lead: Uuid,
    extra: i64,
) -> Result<(BatchOutcome, Vec<String>), JobError> {
    // The job's own order first, waiting for its lock.
    let mut orders = delivery::lock(tx, Take::One(lead)).await?;
    let Some(own) = orders.first().cloned() else {
        return Err(JobError::fatal(format!("order {lead} does not exist")));
    };
    let mut done_jobs = Vec::new();
    if let (Some(pool_id), true) = (own.pool_id, extra > 0)
        && own.status == autokey_shared::model::OrderStatus::Paid
    {
        let take = Take::Fresh {
            pool_id,
            except: lead,
            limit: extra,
        };
        let others = delivery::lock(tx, take).await?;
        let ids: Vec<Uuid> = others.iter().map(|o| o.id).collect();
        done_jobs = queue::lock_pending_fulfillments(tx, &ids).await?;
        orders.extend(others);
    }
    let outcomes = delivery::deliver(tx, &orders).await?;
    let mut out = BatchOutcome {
        lead: Outcome::NothingToDo,
        also_fulfilled: 0,
        also_backordered: 0,
    };
    for (id, outcome) in outcomes {
        match outcome {
            _ if id == lead => out.lead = outcome,
            Outcome::Fulfilled { .. } => out.also_fulfilled += 1,
            Outcome::Backordered { .. } => out.also_backordered += 1,
            Outcome::NothingToDo => {}
        }
    }
    Ok((out, done_jobs))
}
