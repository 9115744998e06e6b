//! Several orders per transaction. A FulfillOrder job fulfills its own order and, in the
//! same transaction, up to `extra` other orders of the same pool whose own jobs no one is
//! running, marking those jobs done in that same commit. The fast lane's unit of work is
//! the same, with the job's own claim in the transaction too; under load the lane claims
//! every job announced meanwhile at once and serves all their orders in one batch.

use std::time::Duration;

use autokey_shared::{
    announce::{Announce, Announcer},
    db,
    jobs::{FulfillOrder, Job, JobError, queue},
    transitions::delivery::{self, Outcome, Take},
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The outcome for each job's own order (one job, or a fast lane group), in id order.
    pub leads: Vec<(Uuid, Outcome)>,
    /// Other orders served in the same transaction (their jobs are now done).
    pub also_fulfilled: usize,
    pub also_backordered: usize,
    /// The orders this batch fulfilled.
    pub fulfilled: Vec<Uuid>,
    /// When each order this batch fulfilled was paid (for the pay -> FULFILLED latency).
    pub fulfilled_paid_at: Vec<chrono::DateTime<chrono::Utc>>,
    /// Leads of a group whose order does not exist (their jobs are left Pending).
    pub missing: Vec<Uuid>,
}

impl BatchOutcome {
    /// The outcome for the (first) job's own order.
    pub fn lead(&self) -> Outcome {
        self.leads.first().map_or(Outcome::NothingToDo, |l| l.1)
    }

    /// The outcome for the order `id` if it led the batch.
    pub fn lead_of(&self, id: Uuid) -> Option<Outcome> {
        self.leads.iter().find(|l| l.0 == id).map(|l| l.1)
    }

    /// What follows the batch's commit: its metrics, and the announcement of its fulfilled
    /// orders to `fulfill?wait` waiters (`announcer`; None: the transaction announced them).
    pub fn committed(&self, announcer: Option<&Announcer>) {
        if let Some(announcer) = announcer {
            announcer.announce(self.fulfilled.iter().map(Uuid::to_string));
        }
        autokey_shared::metrics::orders_fulfilled(&self.fulfilled_paid_at);
        let led_backordered = self
            .leads
            .iter()
            .filter(|l| matches!(l.1, Outcome::Backordered { .. }))
            .count();
        let backordered = self.also_backordered + led_backordered;
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
    let locked = lock_batch(&mut tx, &[lead], extra).await?;
    let out = locked.deliver(&mut tx, announce_by(announcer)).await?;
    tx.commit().await?;
    out.committed(announcer);
    Ok(out)
}

/// The fast lane's unit of work: claims the FulfillOrder job `job_id` itself (if it is
/// still Pending and no one holds it) marking it Done, and runs its batch (whose other
/// jobs are marked Done too), all in one transaction. Returns the job's order and the
/// outcome, or `None` when the job was not there to take. On error nothing is kept (the
/// caller records the failed attempt).
pub async fn fulfill_job(
    pool: &PgPool,
    job_id: &str,
    extra: i64,
    lock_timeout: Duration,
    announcer: Option<&Announcer>,
) -> Result<Option<(Uuid, BatchOutcome)>, JobError> {
    let mut tx = db::begin_with_lock_timeout(pool, lock_timeout).await?;
    // Claimed and marked Done at once: the commit below, after the delivery, finishes it.
    let Some(job) = queue::claim_as_served_by_lane::<FulfillOrder>(&mut tx, job_id).await? else {
        return Ok(None);
    };
    // The lane's span learns whose job this is (and the request that paid the order).
    let span = tracing::Span::current();
    span.record("order_id", tracing::field::display(job.order_id));
    if let Some(request_id) = &job.request_id {
        span.record("request_id", request_id.as_str());
    }
    autokey_shared::metrics::job_attempt(FulfillOrder::QUEUE);
    let locked = lock_batch(&mut tx, &[job.order_id], extra).await?;
    let out = locked.deliver(&mut tx, announce_by(announcer)).await?;
    tx.commit().await?;
    out.committed(announcer);
    Ok(Some((job.order_id, out)))
}

/// A fast lane group: of `job_ids` (announced at once), claims every job still Pending
/// and free, serves all their orders in one batch (with up to `extra` waiting orders of
/// the first one's pool) and marks the claimed jobs Done, in one transaction. Returns the
/// jobs it served and the outcome; jobs not claimed are someone else's, or done. A job
/// whose order does not exist is left Pending and returned apart, for a run of its own
/// (which records its failure). On error nothing is kept (the lane then runs each job on
/// its own).
pub async fn fulfill_jobs(
    pool: &PgPool,
    job_ids: &[String],
    extra: i64,
    lock_timeout: Duration,
    announcer: Option<&Announcer>,
) -> Result<Group, JobError> {
    let mut tx = db::begin_with_lock_timeout(pool, lock_timeout).await?;
    let claimed = queue::claim_pending_many::<FulfillOrder>(&mut tx, job_ids).await?;
    if claimed.is_empty() {
        return Ok(Group::default());
    }
    let leads: Vec<Uuid> = claimed.iter().map(|(_, job)| job.order_id).collect();
    let locked = lock_batch(&mut tx, &leads, extra).await?;
    let (served, left): (Vec<_>, Vec<_>) = claimed
        .into_iter()
        .partition(|(_, job)| !locked.missing.contains(&job.order_id));
    let ids: Vec<String> = served.iter().map(|(id, _)| id.clone()).collect();
    // The jobs are marked Done before the delivery is written, so that the delivery's
    // write is the transaction's last statement: its triggers take the pools' counter
    // rows and owed-units stripes, which every other delivery and pay of those pools
    // waits for until this commit. (If the delivery fails, the whole transaction goes.)
    queue::mark_served_by_lane(&mut tx, &ids).await?;
    let out = locked.deliver(&mut tx, announce_by(announcer)).await?;
    tx.commit().await?;
    for _ in &served {
        autokey_shared::metrics::job_attempt(FulfillOrder::QUEUE);
    }
    out.committed(announcer);
    Ok(Group {
        served,
        left: left.into_iter().map(|(id, _)| id).collect(),
        outcome: out,
    })
}

/// What a fast lane group did.
#[derive(Debug, Default)]
pub struct Group {
    /// The jobs it served (Done), with their payloads.
    pub served: Vec<(String, FulfillOrder)>,
    /// Jobs it claimed but left Pending: their orders do not exist.
    pub left: Vec<String>,
    pub outcome: BatchOutcome,
}

/// A batch's orders, locked on the caller's transaction, before anything is delivered.
struct LockedBatch {
    leads: Vec<Uuid>,
    orders: Vec<delivery::Locked>,
    /// Leads whose order does not exist.
    missing: Vec<Uuid>,
}

/// Locks the batch led by the jobs' own orders (`leads`) on the caller's transaction,
/// with up to `extra` other orders of the first paid lead's pool, whose jobs are Done in
/// it.
async fn lock_batch(
    tx: &mut PgConnection,
    leads: &[Uuid],
    extra: i64,
) -> Result<LockedBatch, JobError> {
    // The jobs' own orders first, waiting for their locks.
    let mut orders = match leads {
        [one] => delivery::lock(tx, Take::One(*one)).await?,
        many => delivery::lock_many(tx, many).await?,
    };
    let missing: Vec<Uuid> = leads
        .iter()
        .copied()
        .filter(|id| !orders.iter().any(|o| o.id == *id))
        .collect();
    if let ([lead], [_]) = (leads, missing.as_slice()) {
        return Err(JobError::fatal(format!("order {lead} does not exist")));
    }
    let first_paid = leads.iter().find_map(|id| {
        orders
            .iter()
            .find(|o| o.id == *id && o.status == autokey_shared::model::OrderStatus::Paid)
            .and_then(|o| Some((o.id, o.pool_id?)))
    });
    if let (Some((own, pool_id)), true) = (first_paid, extra > 0) {
        let take = Take::Fresh {
            pool_id,
            except: own,
            limit: extra,
        };
        // This transaction's own locks are not skipped: leave out the group's orders.
        let others: Vec<_> = delivery::lock(tx, take)
            .await?
            .into_iter()
            .filter(|o| !leads.contains(&o.id))
            .collect();
        let ids: Vec<Uuid> = others.iter().map(|o| o.id).collect();
        // Only orders whose own job this batch takes: one whose job a queue worker has
        // already fetched is that worker's (it is waiting for this order's lock), so
        // serving it here would leave the worker a run with nothing to do.
        let taken = queue::take_pending_fulfillments(tx, &ids).await?;
        orders.extend(others.into_iter().filter(|o| taken.contains(&o.id)));
    }
    Ok(LockedBatch {
        leads: leads.to_vec(),
        orders,
        missing,
    })
}

impl LockedBatch {
    /// Delivers to the batch's orders; the delivery's write is its last statement.
    async fn deliver(
        self,
        tx: &mut PgConnection,
        announce: Announce,
    ) -> Result<BatchOutcome, JobError> {
        let LockedBatch {
            leads,
            orders,
            missing,
        } = self;
        let outcomes = delivery::deliver_with(tx, &orders, announce).await?;
        let mut out = BatchOutcome {
            missing,
            ..BatchOutcome::default()
        };
        for (id, outcome) in outcomes {
            if matches!(outcome, Outcome::Fulfilled { .. }) {
                out.fulfilled.push(id);
                if let Some(paid_at) = orders.iter().find(|o| o.id == id).and_then(|o| o.paid_at) {
                    out.fulfilled_paid_at.push(paid_at);
                }
            }
            match outcome {
                _ if leads.contains(&id) => out.leads.push((id, outcome)),
                Outcome::Fulfilled { .. } => out.also_fulfilled += 1,
                Outcome::Backordered { .. } => out.also_backordered += 1,
                Outcome::NothingToDo => {}
            }
        }
        Ok(out)
    }
}
