//! Background jobs. A job is a serde struct with a fixed queue name; it is enqueued by
//! inserting into the queue's table on the caller's own connection, so it commits (or
//! rolls back) together with the data it acts on. Everything that touches the queue's
//! tables (apalis-postgres's `apalis.jobs` and `apalis.workers`) is in [`queue`], so a
//! change of queue backend is a change of that one file.

pub mod lane;
pub mod queue;

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::error::CoreError;

/// A job type: its queue name is fixed forever (renaming it would orphan queued jobs).
pub trait Job: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    const QUEUE: &'static str;
    /// How many runs before the job is dead (kept, visible, retryable by an operator).
    const MAX_ATTEMPTS: i32 = 12;
    /// Whether a new job is first offered to a worker's fast lane: announced on
    /// [`LANE_CHANNEL`] and left to the lane for [`LANE_GRACE`] before the queue's own
    /// workers may fetch it.
    const FAST_LANE: bool = false;
    /// Jobs with the same key in the same queue exist at most once (a database fact: the
    /// queue's UNIQUE (job_type, idempotency_key)).
    fn idempotency_key(&self) -> Option<String>;
    /// The job row's id: random unless the job has a natural one. A natural id lets a
    /// job be found by primary key from the data it acts on, whatever the statistics.
    fn job_id(&self) -> String {
        ulid::Ulid::new().to_string()
    }
}

/// New fast-lane jobs are announced here, at or after their commit (payload: job ids
/// separated by `lane::SEPARATOR`).
pub const LANE_CHANNEL: &str = "autokey_job_lane";

/// How long the queue's own workers leave a new fast-lane job alone. A live lane takes it
/// within milliseconds; this only delays the fallback when no lane is running.
pub const LANE_GRACE: Duration = Duration::from_millis(250);

/// Deliver keys to one paid order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FulfillOrder {
    pub order_id: Uuid,
    /// The HTTP request that paid the order (its `x-request-id`), logged by the worker
    /// that runs the job. Absent in jobs enqueued before it existed and in those the
    /// worker makes itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl FulfillOrder {
    /// The job of `order_id`, carrying the current HTTP request's id if any.
    pub fn new(order_id: Uuid) -> Self {
        Self {
            order_id,
            request_id: crate::telemetry::request_id(),
        }
    }

    /// The job id of an order's fulfillment: the order id's 128 bits written as a ULID
    /// (the queue's id format; a UUIDv7 and a ULID even share their millisecond prefix),
    /// so a batch finds the jobs of the orders it serves by primary key.
    pub fn job_id_of(order_id: Uuid) -> String {
        ulid::Ulid(order_id.as_u128()).to_string()
    }
}

impl Job for FulfillOrder {
    const QUEUE: &'static str = "autokey::fulfill_order";
    const FAST_LANE: bool = true;
    fn idempotency_key(&self) -> Option<String> {
        Some(self.order_id.to_string())
    }
    fn job_id(&self) -> String {
        Self::job_id_of(self.order_id)
    }
}

/// New keys arrived in a pool: serve its waiting (backordered) orders, oldest paid first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplenishPool {
    pub pool_id: Uuid,
}

impl Job for ReplenishPool {
    const QUEUE: &'static str = "autokey::replenish_pool";
    fn idempotency_key(&self) -> Option<String> {
        // Every upload gets its own run: a run already under way may have read the pool
        // before the upload committed.
        None
    }
}

/// Move every sealed key and secret to the current encryption key (an admin asked for it;
/// the CLI's `keys reencrypt` does the same in-process).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReencryptKeys {
    /// The encryption key id the requester's api process seals with; a worker configured
    /// with another current id refuses the job rather than rotate to the wrong key.
    pub target_key_id: String,
}

impl Job for ReencryptKeys {
    const QUEUE: &'static str = "autokey::reencrypt_keys";
    const MAX_ATTEMPTS: i32 = 25;
    fn idempotency_key(&self) -> Option<String> {
        // A long rotation re-enqueues itself while its current run is still a row; the
        // admin route checks [`queue::live_of`] instead. Two runs at once are safe anyway:
        // each batch re-checks, under its row locks, that a key is still under the
        // retired id.
        None
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a job run failed, by what should happen next.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A passing problem: the run counts as an attempt and is retried after a delay; the
    /// job dies after [`Job::MAX_ATTEMPTS`].
    #[error("{0}")]
    Retryable(#[source] BoxError),
    /// Retrying cannot help (a broken invariant, a missing row, a bug): the job dies at
    /// once, visible to an operator.
    #[error("{0}")]
    Fatal(#[source] BoxError),
}

impl JobError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, JobError::Retryable(_))
    }

    pub fn fatal(msg: impl Into<String>) -> Self {
        JobError::Fatal(msg.into().into())
    }

    /// A panic of the job's code: counted as an attempt and retried (repeated panics end
    /// in the dead state).
    pub fn panicked(what: impl Into<String>) -> Self {
        JobError::Retryable(format!("the job panicked: {}", what.into()).into())
    }
}

impl From<CoreError> for JobError {
    fn from(err: CoreError) -> Self {
        if err.is_retryable() {
            JobError::Retryable(Box::new(err))
        } else {
            JobError::Fatal(Box::new(err))
        }
    }
}

impl From<sqlx::Error> for JobError {
    fn from(err: sqlx::Error) -> Self {
        CoreError::from(err).into()
    }
}

/// The durable retry schedule of jobs: exponential with jitter, capped at five minutes.
/// `attempt` counts from 1.
pub fn retry_delay(attempt: usize, base: Duration) -> Duration {
    backoff(attempt, base, Duration::from_secs(300))
}

/// Exponential backoff with jitter from `base`, doubling, capped at `cap`.
pub fn backoff(attempt: usize, base: Duration, cap: Duration) -> Duration {
    ExponentialBuilder::default()
        .with_min_delay(base)
        .with_max_delay(cap)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(usize::MAX)
        .build()
        .nth(attempt.saturating_sub(1))
        .unwrap_or(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let base = Duration::from_millis(100);
        let first = retry_delay(1, base);
        assert!(first >= base && first <= base * 2, "{first:?}");
        let fifth = retry_delay(5, base);
        assert!(fifth >= base * 16, "{fifth:?}");
        assert!(retry_delay(60, base) <= Duration::from_secs(600));
    }

    #[test]
    fn broken_invariants_are_fatal_and_lost_connections_retryable() {
        let broken: JobError = CoreError::invariant("two keys for one").into();
        assert!(!broken.is_retryable());
        let lost: JobError = sqlx::Error::PoolTimedOut.into();
        assert!(lost.is_retryable());
        let bug: JobError = sqlx::Error::RowNotFound.into();
        assert!(!bug.is_retryable());
    }

    #[test]
    fn old_fulfillment_payloads_still_deserialize() {
        let order_id = Uuid::now_v7();
        let old = format!("{{\"order_id\":\"{order_id}\"}}");
        let job: FulfillOrder = serde_json::from_str(&old).unwrap();
        assert_eq!(
            job,
            FulfillOrder {
                order_id,
                request_id: None
            }
        );
        assert_eq!(serde_json::to_string(&job).unwrap(), old);
    }

    #[test]
    fn a_fulfillment_job_id_is_derived_from_its_order() {
        let order_id = Uuid::now_v7();
        let job = FulfillOrder::new(order_id);
        assert_eq!(job.job_id(), job.job_id());
        assert_eq!(job.job_id(), FulfillOrder::job_id_of(order_id));
        assert_ne!(
            ReplenishPool { pool_id: order_id }.job_id(),
            ReplenishPool { pool_id: order_id }.job_id()
        );
    }
}
