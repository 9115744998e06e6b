//! Housekeeping that apalis-postgres leaves to us: pruning finished jobs and dead worker
//! rows, and a sweeper that guarantees every paid order a live job.

use std::{sync::Arc, time::Duration};

use autokey_shared::jobs::{self, FulfillOrder, Job, ReplenishPool};
use sqlx::PgPool;
use uuid::Uuid;

use crate::runner::WorkerConfig;

pub async fn run<F>(pool: PgPool, config: Arc<WorkerConfig>, stopped: F)
where
    F: std::future::Future<Output = Result<(), std::io::Error>>,
{
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(config.maintenance_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {
                if let Err(err) = run_once(&pool, &config).await {
                    tracing::warn!(error = %err, "maintenance pass failed; will try again");
                }
            }
        }
    }
}

/// One pass of every chore. Public so tests can run it without waiting.
pub async fn run_once(pool: &PgPool, config: &WorkerConfig) -> Result<Sweep, sqlx::Error> {
    let pruned = prune_finished_jobs(pool, config.job_retention).await?;
    prune_dead_workers(pool, config).await?;
    let sweep = sweep_waiting_orders(pool, config).await?;
    let dead: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM apalis.jobs WHERE job_type LIKE 'autokey::%' AND {}",
        jobs::DEAD_JOBS_WHERE
    )))
    .fetch_one(pool)
    .await?;
    if dead > 0 {
        tracing::error!(
            dead,
            "dead jobs need an operator: `autokey-worker retry-dead` runs them again"
        );
    }
    if pruned > 0 {
        tracing::debug!(pruned, "finished jobs pruned");
    }
    Ok(Sweep { pruned, ..sweep })
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub pruned: u64,
    pub fulfill_jobs_added: u64,
    pub replenish_jobs_added: u64,
}

async fn prune_finished_jobs(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM apalis.jobs WHERE job_type LIKE 'autokey::%' AND status = 'Done'
         AND done_at < now() - $1 * interval '1 second'",
    )
    .bind(retention.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

async fn prune_dead_workers(pool: &PgPool, config: &WorkerConfig) -> Result<(), sqlx::Error> {
    // Worker names are unique per process start, so old rows would pile up forever.
    let gone = config.heartbeat * (config.missed_heartbeats as u32) * 10 + Duration::from_secs(600);
    sqlx::query(
        "DELETE FROM apalis.workers w WHERE w.worker_type LIKE 'autokey::%' AND w.last_seen < now() - $1 * interval '1 second'
         AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.lock_by = w.id)",
    )
    .bind(gone.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// A paid order always has a live job: its own FulfillOrder, or — once that finished with
/// the order backordered — a ReplenishPool when its pool has keys to give. (Orders whose own
/// job is still queued are left to it: replenishing for them would only duplicate work.)
async fn sweep_waiting_orders(pool: &PgPool, config: &WorkerConfig) -> Result<Sweep, sqlx::Error> {
    let grace = config.heartbeat * 2;
    let orphans: Vec<Uuid> = sqlx::query_scalar(
        "SELECT o.id FROM orders o WHERE o.status = 'PAID' AND o.paid_at < now() - $1 * interval '1 second'
         AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.job_type = $2 AND j.idempotency_key = o.id::text)
         LIMIT 1000",
    )
    .bind(grace.as_secs_f64())
    .bind(FulfillOrder::QUEUE)
    .fetch_all(pool)
    .await?;
    let mut sweep = Sweep::default();
    let mut conn = pool.acquire().await?;
    for order_id in orphans {
        if jobs::enqueue(&mut conn, &FulfillOrder { order_id }).await? {
            sweep.fulfill_jobs_added += 1;
        }
    }
    let starving: Vec<Uuid> = sqlx::query_scalar(
        "SELECT p.id FROM key_pools p
         WHERE p.available_keys > 0
           AND EXISTS (SELECT 1 FROM orders o WHERE o.pool_id = p.id AND o.status = 'PAID'
                       AND o.backordered_at IS NOT NULL AND o.paid_at < now() - $1 * interval '1 second')
           AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.job_type = $2
                           AND j.status IN ('Pending', 'Queued', 'Running')
                           AND convert_from(j.job, 'UTF8')::jsonb ->> 'pool_id' = p.id::text)",
    )
    .bind(grace.as_secs_f64())
    .bind(ReplenishPool::QUEUE)
    .fetch_all(pool)
    .await?;
    for pool_id in starving {
        jobs::enqueue(&mut conn, &ReplenishPool { pool_id }).await?;
        sweep.replenish_jobs_added += 1;
    }
    Ok(sweep)
}
