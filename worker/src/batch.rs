//! Several orders per transaction. A FulfillOrder job fulfills its own order and, in the
//! same transaction, up to `extra` other orders of the same pool whose own jobs no one is
//! running, marking those jobs done in that same commit. The fast lane's unit of work is
//! the same, with the job's own claim in the transaction too.

use std::time::Duration;

use autokey_shared::{
    announce::{Announce, Announcer},
    db,
    jobs::{FulfillOrder, Job, JobError, queue},
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
    /// The orders this batch fulfilled.
    pub fulfilled: Vec<Uuid>,
    /// When each order this batch fulfilled was paid (for the pay -> FULFILLED latency).
    pub fulfilled_paid_at: Vec<chrono::DateTime<chrono::Utc>>,
}

impl BatchOutcome {
    /// What follows the batch's commit: its metrics, and the announcement of its fulfilled
    /// orders to `fulfill?wait` waiters (`announcer`; None: the transaction announced them).
    pub fn committed(&self, announcer: Option<&Announcer>) {
        if let Some(announcer) = announcer {
            announcer.announce(self.fulfilled.iter().map(Uuid::to_string));
        }
        autokey_shared::metrics::orders_fulfilled(&self.fulfilled_paid_at);
        let backordered =
            self.also_backordered + usize::from(matches!(self.lead, Outcome::Backordered { .. }));
        autokey_shared::metrics::orders_backordered(backordered as u64);
    }
}

/// Who announces a batch's fulfilled orders.
fn announce_by(announcer: Option<&Announcer>) -> Announce {
    match announcer {
        Some(_) => Announce::AfterCommit,
        None => Announce::InTransaction,
    }
}

/// Fulfills `lead` plus up to `extra` orders of the same pool, oldest paid first, in one
/// transaction. `announcer`: who tells waiters about fulfilled orders after the commit
/// (None: a NOTIFY in the transaction).
pub async fn fulfill_batch(
    pool: &PgPool,
    lead: Uuid,
    extra: i64,
    lock_timeout: Duration,
    announcer: Option<&Announcer>,
) -> Result<BatchOutcome, JobError> {
    let mut tx = db::begin_with_lock_timeout(pool, lock_timeout).await?;
    let out = fulfill_batch_in(&mut tx, lead, extra, announce_by(announcer)).await?;
    tx.commit().await?;
    out.committed(announcer);
    Ok(out)
}

/// The fast lane's unit of work: claims the FulfillOrder job `job_id` itself (if it is
/// still Pending and no one holds it), runs its batch and marks it and the batch's jobs
/// Done, all in one transaction. Returns the job's order and the outcome, or `None` when
/// the job was not there to take. On error
/// nothing is kept (the caller records the failed attempt).
pub async fn fulfill_job(
    pool: &PgPool,
    job_id: &str,
    extra: i64,
    lock_timeout: Duration,
    announcer: Option<&Announcer>,
) -> Result<Option<(Uuid, BatchOutcome)>, JobError> {
    let mut tx = db::begin_with_lock_timeout(pool, lock_timeout).await?;
    let Some(job) = queue::claim_pending::<FulfillOrder>(&mut tx, job_id).await? else {
        return Ok(None);
    };
    // The lane's span learns whose job this is (and the request that paid the order).
    let span = tracing::Span::current();
    span.record("order_id", tracing::field::display(job.order_id));
    if let Some(request_id) = &job.request_id {
        span.record("request_id", request_id.as_str());
    }
    autokey_shared::metrics::job_attempt(FulfillOrder::QUEUE);
    let out = fulfill_batch_in(&mut tx, job.order_id, extra, announce_by(announcer)).await?;
    queue::mark_served_by_lane(&mut tx, job_id).await?;
    tx.commit().await?;
    out.committed(announcer);
    Ok(Some((job.order_id, out)))
}

/// The batch on the caller's transaction; the other orders' jobs are Done in it.
async fn fulfill_batch_in(
    tx: &mut PgConnection,
    lead: Uuid,
    extra: i64,
    announce: Announce,
) -> Result<BatchOutcome, JobError> {
    // The job's own order first, waiting for its lock.
    let mut orders = delivery::lock(tx, Take::One(lead)).await?;
    let Some(own) = orders.first().cloned() else {
        return Err(JobError::fatal(format!("order {lead} does not exist")));
    };
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
        // Only orders whose own job this batch takes: one whose job a queue worker has
        // already fetched is that worker's (it is waiting for this order's lock), so
        // serving it here would leave the worker a run with nothing to do.
        let taken = queue::take_pending_fulfillments(tx, &ids).await?;
        orders.extend(others.into_iter().filter(|o| taken.contains(&o.id)));
    }
    let outcomes = delivery::deliver_with(tx, &orders, announce).await?;
    let mut out = BatchOutcome {
        lead: Outcome::NothingToDo,
        also_fulfilled: 0,
        also_backordered: 0,
        fulfilled: Vec::new(),
        fulfilled_paid_at: Vec::new(),
    };
    for (id, outcome) in outcomes {
        if matches!(outcome, Outcome::Fulfilled { .. }) {
            out.fulfilled.push(id);
            if let Some(paid_at) = orders.iter().find(|o| o.id == id).and_then(|o| o.paid_at) {
                out.fulfilled_paid_at.push(paid_at);
            }
        }
        match outcome {
            _ if id == lead => out.lead = outcome,
            Outcome::Fulfilled { .. } => out.also_fulfilled += 1,
            Outcome::Backordered { .. } => out.also_backordered += 1,
            Outcome::NothingToDo => {}
        }
    }
    Ok(out)
}
