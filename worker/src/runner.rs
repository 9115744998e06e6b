//! Wires the job handlers into apalis workers on apalis-postgres, plus the maintenance
//! loop, and runs them until shutdown.

use std::{sync::Arc, time::Duration};

use apalis::prelude::*;
use apalis_postgres::{Config as QueueConfig, PostgresStorage, Pubsub};
use autokey_shared::jobs::{self, FulfillOrder, Job, JobError, ReplenishPool, queue};
use sqlx::PgPool;
use tracing::Instrument;

use crate::{batch, fulfillment::Outcome, replenish};

/// How a worker process behaves; `Default` is production's.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs run at once per queue.
    pub concurrency: usize,
    /// Prefix of this process's worker names; a unique suffix is added per start.
    pub name: String,
    /// How often a worker proves it is alive; after `missed_heartbeats` silent intervals
    /// its jobs are handed to others.
    pub heartbeat: Duration,
    pub missed_heartbeats: usize,
    /// Polling interval, the fallback when a notification is missed and the clock for
    /// retries that come due.
    pub poll_interval: Duration,
    /// First retry delay; later ones grow exponentially with jitter.
    pub retry_base: Duration,
    pub lock_timeout: Duration,
    /// Finished jobs older than this are deleted.
    pub job_retention: Duration,
    pub maintenance_interval: Duration,
    /// An unpaid order of a MANUAL offer older than this is canceled by maintenance,
    /// giving back the units of stock it held (MANUAL_ORDER_HOLD_MINUTES).
    pub manual_hold: Duration,
    /// Other waiting orders a fulfillment job serves in its own transaction (0: one
    /// order per transaction). Measured on a 20k backlog, 2 cores: 63 -> ~10k orders/s,
    /// 255 -> ~17k with one worker process and less contention between several.
    pub batch_extra_orders: i64,
    /// Run fulfillment jobs the moment they are announced, in one transaction each (see
    /// `fast_lane`); apalis's workers then poll only, as the fallback and for retries.
    pub fast_lane: bool,
    /// Outgoing webhooks; sent only when the vault (which opens their secrets) is known.
    pub webhooks: crate::webhooks::WebhookConfig,
    pub vault: Option<Arc<autokey_shared::vault::Vault>>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            name: "autokey-worker".into(),
            heartbeat: Duration::from_secs(2),
            missed_heartbeats: 3,
            poll_interval: Duration::from_millis(500),
            retry_base: Duration::from_secs(1),
            lock_timeout: Duration::from_secs(5),
            job_retention: Duration::from_secs(3600),
            maintenance_interval: Duration::from_secs(15),
            manual_hold: Duration::from_secs(24 * 3600),
            batch_extra_orders: 255,
            fast_lane: true,
            webhooks: Default::default(),
            vault: None,
        }
    }
}

/// What every handler needs.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) pool: PgPool,
    pub(crate) config: Arc<WorkerConfig>,
    /// Tells `fulfill?wait` waiters about fulfilled orders, after each commit.
    pub(crate) fulfilled: autokey_shared::announce::Announcer,
}

/// A unique identity per process start, so a restarted process under the same platform
/// name never inherits (and thus never strands) its predecessor's jobs.
pub fn unique_name(prefix: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .or_else(|_| std::env::var("DYNO"))
        .unwrap_or_default();
    let ulid = ulid::Ulid::new().to_string().to_lowercase();
    if host.is_empty() {
        format!("{prefix}-{ulid}")
    } else {
        format!("{prefix}-{host}-{ulid}")
    }
}

/// The queue's storage; `listen` also wakes the worker on each announced insert, else it
/// polls every `poll_interval`.
pub(crate) fn storage<J: Job>(
    pool: &PgPool,
    config: &WorkerConfig,
    listen: bool,
) -> PollWith<PostgresStorage<J>, Strategy> {
    let queue = QueueConfig::default()
        .queue(J::QUEUE)
        .batch_size(config.concurrency.max(1))
        .heartbeat_interval(config.heartbeat)
        .missed_heartbeats(config.missed_heartbeats);
    let mut strategy = Strategy::new();
    if listen {
        strategy = strategy.stream(Pubsub::new(pool.clone(), J::QUEUE.to_string()));
    }
    let strategy = strategy.interval(config.poll_interval);
    PostgresStorage::<J>::new(pool)
        .with_config(queue)
        .poll_with_strategy(strategy)
}

/// Marks a failed attempt: retryable errors are retried after a durable delay (and die
/// after `MAX_ATTEMPTS`), fatal ones are aborted at once.
pub(crate) async fn on_failure<J: Job>(
    ctx: &Ctx,
    task_id: &TaskId,
    attempt: usize,
    err: JobError,
) -> BoxDynError {
    if !err.is_retryable() {
        autokey_shared::metrics::job_failed(J::QUEUE, false);
        tracing::error!(queue = J::QUEUE, %task_id, error = %err, "job failed permanently; it is dead");
        return Box::new(AbortError::new(err));
    }
    if attempt >= J::MAX_ATTEMPTS as usize {
        autokey_shared::metrics::job_failed(J::QUEUE, false);
        tracing::error!(queue = J::QUEUE, %task_id, attempt, error = %err, "job out of attempts; it is dead");
        return Box::new(err);
    }
    autokey_shared::metrics::job_failed(J::QUEUE, true);
    let delay = jobs::retry_delay(attempt, ctx.config.retry_base);
    tracing::warn!(queue = J::QUEUE, %task_id, attempt, ?delay, error = %err, "job retry scheduled after a transient failure");
    if let Ok(mut conn) = ctx.pool.acquire().await
        && let Err(e) = queue::schedule_retry(&mut conn, &task_id.to_string(), delay).await
    {
        tracing::warn!(error = %e, "could not schedule the retry; it will run at the next poll");
    }
    Box::new(err)
}

/// Runs a handler's work, turning a panic into an ordinary (retried) failure so that one
/// bad job cannot take the worker down.
pub(crate) async fn guarded<T>(
    work: impl std::future::Future<Output = Result<T, JobError>>,
) -> Result<T, JobError> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(JobError::panicked(what))
        }
    }
}

/// One readable line per fulfillment outcome (inside the job's span, which names the
/// order and the request that paid it).
pub(crate) fn log_outcome(order_id: uuid::Uuid, done: &batch::BatchOutcome) {
    log_lead(order_id, done);
    log_others(done);
}

/// The line for a job's own order.
pub(crate) fn log_lead(order_id: uuid::Uuid, done: &batch::BatchOutcome) {
    match done.lead_of(order_id).unwrap_or(Outcome::NothingToDo) {
        Outcome::Fulfilled { keys } => tracing::info!(%order_id, keys, "order fulfilled"),
        Outcome::Backordered { reserved, quantity } => {
            tracing::info!(%order_id, reserved, quantity, "order backordered; waiting for keys")
        }
        Outcome::NothingToDo => tracing::debug!(%order_id, "order not PAID; nothing to do"),
    }
}

/// The line for the other waiting orders a batch served, if any.
pub(crate) fn log_others(done: &batch::BatchOutcome) {
    if done.also_fulfilled + done.also_backordered > 0 {
        tracing::info!(
            also_fulfilled = done.also_fulfilled,
            also_backordered = done.also_backordered,
            "other waiting orders served in the same transaction"
        );
    }
}

pub(crate) async fn handle_fulfill(
    job: FulfillOrder,
    attempt: Attempt,
    task_id: TaskId,
    ctx: Data<Ctx>,
) -> Result<(), BoxDynError> {
    let span = tracing::info_span!("job", queue = FulfillOrder::QUEUE, %task_id,
        order_id = %job.order_id, request_id = job.request_id.as_deref().unwrap_or("-"));
    async {
        autokey_shared::metrics::job_attempt(FulfillOrder::QUEUE);
        match guarded(batch::fulfill_batch(
            &ctx.pool,
            job.order_id,
            ctx.config.batch_extra_orders,
            ctx.config.lock_timeout,
            Some(&ctx.fulfilled),
        ))
        .await
        {
            Ok(done) => {
                log_outcome(job.order_id, &done);
                Ok(())
            }
            Err(err) => {
                Err(on_failure::<FulfillOrder>(&ctx, &task_id, attempt.current(), err).await)
            }
        }
    }
    .instrument(span)
    .await
}

pub(crate) async fn handle_replenish(
    job: ReplenishPool,
    attempt: Attempt,
    task_id: TaskId,
    ctx: Data<Ctx>,
) -> Result<(), BoxDynError> {
    autokey_shared::metrics::job_attempt(ReplenishPool::QUEUE);
    match guarded(replenish::replenish_pool(
        &ctx.pool,
        job.pool_id,
        ctx.config.lock_timeout,
        &ctx.fulfilled,
    ))
    .await
    {
        Ok(done) => {
            if done.fulfilled > 0 {
                tracing::info!(pool_id = %job.pool_id, fulfilled = done.fulfilled, "backorders served");
            }
            if done.more_waiting {
                let mut conn = ctx.pool.acquire().await?;
                queue::enqueue(&mut conn, &job).await?;
            }
            Ok(())
        }
        Err(err) => Err(on_failure::<ReplenishPool>(&ctx, &task_id, attempt.current(), err).await),
    }
}

pub use crate::tasks::run;
