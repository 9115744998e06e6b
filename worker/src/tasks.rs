//! The worker process's parts (the queues' apalis workers, the fast lane, maintenance,
//! outgoing webhooks), each on its own tokio task, from start to shutdown.

use std::sync::Arc;

use apalis::prelude::*;
use autokey_shared::{
    announce::Announcer,
    jobs::{FulfillOrder, Job, ReencryptKeys, ReplenishPool},
    model::ORDER_FULFILLED_CHANNEL,
};
use sqlx::PgPool;
use std::time::Duration;

use crate::{
    fast_lane, maintenance,
    runner::{Ctx, WorkerConfig, handle_fulfill, handle_replenish, storage, unique_name},
};

async fn until_stop(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// [`until_stop`] in the shape apalis's `run_until` and the maintenance loop take.
async fn wait_for_stop(rx: tokio::sync::watch::Receiver<bool>) -> Result<(), std::io::Error> {
    until_stop(rx).await;
    Ok(())
}

/// Runs a queue's apalis worker until shutdown. apalis ends a worker at the first error
/// of its backend (a heartbeat or a fetch while the database restarts, a terminated
/// connection), which would leave the process running without that queue; so it is
/// started again, under a new identity, a second later. Jobs it was running are handed to
/// live workers after the heartbeat timeout, as a dead process's are.
async fn supervise<F, Fut>(
    queue: &'static str,
    stop: tokio::sync::watch::Receiver<bool>,
    mut start: F,
) -> Result<(), WorkerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), WorkerError>>,
{
    loop {
        let result = start().await;
        if *stop.borrow() {
            return result;
        }
        let Err(err) = result else { return Ok(()) };
        tracing::error!(queue, error = %err, "queue worker stopped on a backend error; starting it again in 1 s");
        let mut stop = stop.clone();
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// One queue's apalis worker, supervised (see [`supervise`]), as a future of its own.
macro_rules! queue_worker {
    ($ctx:expr, $stop:expr, $job:ty, $kind:literal, $concurrency:expr, $listen:expr, $handler:expr) => {{
        let (ctx, stop, concurrency, listen) = ($ctx.clone(), $stop.clone(), $concurrency, $listen);
        async move {
            let name = format!("{}-{}", ctx.config.name, $kind);
            supervise(<$job as Job>::QUEUE, stop.clone(), || {
                WorkerBuilder::new(unique_name(&name))
                    .backend(storage::<$job>(&ctx.pool, &ctx.config, listen))
                    .concurrency(concurrency)
                    .data(ctx.clone())
                    .build($handler)
                    .run_until(wait_for_stop(stop.clone()))
            })
            .await?;
            Ok::<(), BoxDynError>(())
        }
    }};
}

/// Runs the fulfillment and replenishment workers and the maintenance loop until
/// `shutdown` resolves; then stops taking jobs and lets running ones finish.
///
/// Each part runs on its own tokio task. apalis starts a fetch from the queue whenever
/// its worker's task is woken, whatever woke it; joined on one task, every wake of the
/// fast lane (each announcement, each finished job) made all three queue workers fetch:
/// measured at 200 orders/s, ~750 fetches a second, a quarter of a core of PostgreSQL.
pub async fn run(
    pool: PgPool,
    config: WorkerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), BoxDynError> {
    autokey_shared::metrics::handle();
    let ctx = Ctx {
        pool: pool.clone(),
        config: Arc::new(config.clone()),
        fulfilled: Announcer::start(
            pool.clone(),
            ORDER_FULFILLED_CHANNEL,
            autokey_shared::metrics::fulfilled_announcement_dropped,
        ),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let mut parts: tokio::task::JoinSet<Result<(), BoxDynError>> = tokio::task::JoinSet::new();

    parts.spawn(queue_worker!(
        ctx,
        stop_rx,
        FulfillOrder,
        "fulfill",
        config.concurrency.max(1),
        !config.fast_lane,
        handle_fulfill
    ));
    parts.spawn(queue_worker!(
        ctx,
        stop_rx,
        ReplenishPool,
        "replenish",
        2,
        true,
        handle_replenish
    ));
    if config.vault.is_some() {
        parts.spawn(queue_worker!(
            ctx,
            stop_rx,
            ReencryptKeys,
            "reencrypt",
            1,
            true,
            crate::reencrypt::handle_reencrypt
        ));
    }
    {
        let (pool, config, stop) = (pool.clone(), ctx.config.clone(), stop_rx.clone());
        parts.spawn(async move {
            maintenance::run(pool, config, wait_for_stop(stop)).await;
            Ok(())
        });
    }
    if config.fast_lane {
        let (pool, config, stop) = (pool.clone(), ctx.config.clone(), stop_rx.clone());
        let fulfilled = ctx.fulfilled.clone();
        parts.spawn(async move {
            if let Err(e) = fast_lane::run(pool, config, fulfilled, until_stop(stop)).await {
                // The queue's workers still poll; only the latency suffers.
                tracing::error!(error = %e, "fast lane stopped; jobs are polled");
            }
            Ok(())
        });
    }
    match &config.vault {
        Some(vault) => {
            let (pool, vault, settings) = (pool.clone(), vault.clone(), config.webhooks.clone());
            let stop = stop_rx.clone();
            parts.spawn(async move {
                crate::webhooks::run(pool, vault, settings, until_stop(stop)).await;
                Ok(())
            });
        }
        None => {
            tracing::warn!(
                "ENCRYPTION_KEY is not set: outgoing webhooks are not sent by this worker"
            )
        }
    }

    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
    }
    // A part that fails or panics stops the others: the process ends with its error
    // rather than running on without it.
    let mut first_error: Option<BoxDynError> = None;
    while let Some(ended) = parts.join_next().await {
        let error = match ended {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(panic) => format!("a worker task ended abnormally: {panic}").into(),
        };
        let _ = stop_tx.send(true);
        first_error.get_or_insert(error);
    }
    first_error.map_or(Ok(()), Err)
}
