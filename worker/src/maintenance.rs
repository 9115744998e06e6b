//! Housekeeping that apalis-postgres leaves to us: pruning finished jobs and dead worker
//! rows, a sweeper that guarantees every paid order a live job, and the end of abandoned
//! MANUAL orders' holds on their seller's stock.

use std::{sync::Arc, time::Duration};

use autokey_shared::{
    jobs::{FulfillOrder, ReplenishPool, queue},
    store::{orders, pools},
    transitions,
};
use sqlx::{PgConnection, PgPool};

use crate::runner::WorkerConfig;

pub async fn run<F>(pool: PgPool, config: Arc<WorkerConfig>, stopped: F)
where
    F: std::future::Future<Output = Result<(), std::io::Error>>,
{
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(config.maintenance_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Holds last hours: looking for expired ones once a minute is plenty.
    let mut holds_checked = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {
                let expire_holds = holds_checked.elapsed() >= HOLDS_EVERY;
                if expire_holds {
                    holds_checked = std::time::Instant::now();
                }
                if let Err(err) = run_chores(&pool, &config, expire_holds).await {
                    tracing::warn!(error = %err, "maintenance pass failed; will try again");
                }
            }
        }
    }
}

/// How often the periodic passes look for unpaid MANUAL orders past their hold.
const HOLDS_EVERY: Duration = Duration::from_secs(60);

/// One pass of every chore. Public so tests can run it without waiting.
pub async fn run_once(pool: &PgPool, config: &WorkerConfig) -> Result<Sweep, sqlx::Error> {
    run_chores(pool, config, true).await
}

async fn run_chores(
    pool: &PgPool,
    config: &WorkerConfig,
    expire_holds: bool,
) -> Result<Sweep, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let pruned = queue::prune_done(&mut conn, config.job_retention).await?;
    // Worker names are unique per process start, so old rows would pile up forever.
    let gone = config.heartbeat * (config.missed_heartbeats as u32) * 10 + Duration::from_secs(600);
    queue::prune_workers(&mut conn, gone).await?;
    let sweep = sweep_waiting_orders(&mut conn, config).await?;
    let expired = if expire_holds {
        let placed_before =
            chrono::Utc::now() - chrono::Duration::from_std(config.manual_hold).unwrap_or_default();
        transitions::expire_manual_holds(&mut conn, placed_before, 1000).await?
    } else {
        0
    };
    if expired > 0 {
        tracing::info!(expired, "unpaid MANUAL orders past their hold canceled");
    }
    let dead = queue::dead_count(&mut conn).await?;
    if dead > 0 {
        tracing::error!(
            dead,
            "dead jobs need an operator: `autokey-worker retry-dead` runs them again"
        );
    }
    if pruned > 0 {
        tracing::debug!(pruned, "finished jobs pruned");
    }
    Ok(Sweep {
        pruned,
        manual_holds_expired: expired as u64,
        ..sweep
    })
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub pruned: u64,
    pub fulfill_jobs_added: u64,
    pub replenish_jobs_added: u64,
    /// Unpaid MANUAL orders canceled because their hold ran out.
    pub manual_holds_expired: u64,
}

/// A paid order always has a live job: its own FulfillOrder, or — once that finished with
/// the order backordered — a ReplenishPool when its pool has keys to give. (Orders whose own
/// job is still queued are left to it: replenishing for them would only duplicate work.)
async fn sweep_waiting_orders(
    conn: &mut PgConnection,
    config: &WorkerConfig,
) -> Result<Sweep, sqlx::Error> {
    let cutoff =
        chrono::Utc::now() - chrono::Duration::from_std(config.heartbeat * 2).unwrap_or_default();
    let paid = orders::paid_before(conn, cutoff, 1000).await?;
    let mut sweep = Sweep::default();
    for order_id in queue::without_fulfillment(conn, &paid).await? {
        if queue::enqueue(conn, &FulfillOrder::new(order_id)).await? {
            sweep.fulfill_jobs_added += 1;
        }
    }
    let starving = pools::starving(conn, cutoff).await?;
    let busy = queue::replenishing(conn, &starving).await?;
    for pool_id in starving.into_iter().filter(|p| !busy.contains(p)) {
        queue::enqueue(conn, &ReplenishPool { pool_id }).await?;
        sweep.replenish_jobs_added += 1;
    }
    Ok(sweep)
}
