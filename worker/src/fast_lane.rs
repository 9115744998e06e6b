//! The fast lane: a fulfillment job is run the moment its insert commits, in one
//! transaction that claims the job row itself (`FOR UPDATE SKIP LOCKED`, status
//! Pending), fulfills its order (with the batch of waiting ones) and marks the job Done.
//!
//! Why: through apalis a job costs three more transactions (fetch, lock, ack) and a
//! dispatch before its fulfillment starts; measured, that was most of the pay ->
//! FULFILLED latency. New FulfillOrder jobs are announced on `jobs::LANE_CHANNEL` (by the
//! api after its pay commits, several per NOTIFY: `jobs::lane`) and left to the lane for
//! `jobs::LANE_GRACE` (their `run_at`). The queue stays the
//! record: a job no lane takes (lane full, notification missed, no worker running) is
//! still Pending and apalis's own workers run it after the grace; a failed lane run is
//! recorded as a failed attempt with the same backoff. The two can never both run a job:
//! each takes it only while it is Pending and under a row lock.

use std::{sync::Arc, time::Duration};

use autokey_shared::{
    announce::Announcer,
    jobs::{self, FulfillOrder, Job},
};
use sqlx::{PgPool, postgres::PgListener};
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
};
use tracing::Instrument;

use crate::{batch, runner::WorkerConfig};

/// Announced jobs waiting for a free slot; beyond this the queue's workers take them.
const BACKLOG: usize = 4096;

/// Jobs one lane run claims at most: every job announced while the slots were busy is
/// served in one transaction (one lock statement, one delivery, one commit for all).
const GROUP: usize = 64;

/// Runs the lane until `stop` resolves, then lets running jobs finish.
/// `fulfilled` announces the orders each run fulfilled, after its commit.
pub async fn run(
    pool: PgPool,
    config: Arc<WorkerConfig>,
    fulfilled: Announcer,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(jobs::LANE_CHANNEL).await?;
    let (tx, mut rx) = mpsc::channel::<String>(BACKLOG);
    // The listener reads on its own task, so no read of it is ever cancelled half-way; in a
    // JoinSet, so it ends with the lane however the lane ends.
    let mut listening = JoinSet::new();
    listening.spawn(forward(listener, tx));
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let mut running = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            Some(_) = running.join_next(), if !running.is_empty() => {}
            job = rx.recv() => {
                let Some(job_id) = job else { break };
                let slot = tokio::select! {
                    _ = &mut stop => break,
                    slot = slots.clone().acquire_owned() => slot.expect("the lane's semaphore is never closed"),
                };
                // Waiting for a slot is what lets a group form.
                let mut group = vec![job_id];
                while group.len() < GROUP {
                    match rx.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                autokey_shared::metrics::group_size("fast lane", group.len());
                let (pool, config, fulfilled) = (pool.clone(), config.clone(), fulfilled.clone());
                running.spawn(async move {
                    let _slot = slot;
                    match group.as_slice() {
                        [one] => run_one(&pool, &config, &fulfilled, one).await,
                        _ => run_group(&pool, &config, &fulfilled, &group).await,
                    }
                });
            }
        }
    }
    listening.abort_all();
    while running.join_next().await.is_some() {}
    Ok(())
}

/// Hands announced job ids to the lane; drops them when the lane is BACKLOG behind (they
/// stay Pending: the queue's workers take them after the grace).
async fn forward(mut listener: PgListener, tx: mpsc::Sender<String>) {
    loop {
        match listener.recv().await {
            Ok(note) => {
                // One announcement may name many jobs (the api's pays, after their commits).
                for job_id in autokey_shared::announce::ids(note.payload()) {
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        tx.try_send(job_id.to_owned())
                    {
                        return;
                    }
                }
            }
            Err(e) => {
                // recv() reconnects by itself; jobs announced meanwhile are polled by the
                // queue's workers.
                tracing::warn!(error = %e, "fast lane listener error");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Several announced jobs in one transaction (`batch::fulfill_jobs`). If the group fails,
/// each job runs on its own, so one bad job (its order missing, say) never holds back the
/// others and its failure is recorded against it alone.
async fn run_group(
    pool: &PgPool,
    config: &WorkerConfig,
    fulfilled: &Announcer,
    job_ids: &[String],
) {
    let work = batch::fulfill_jobs(
        pool,
        job_ids,
        config.batch_extra_orders,
        config.lock_timeout,
        Some(fulfilled),
    );
    match crate::runner::guarded(work).await {
        Ok(batch::Group {
            served,
            left,
            outcome: done,
        }) => {
            for (job_id, job) in &served {
                let span = tracing::info_span!(
                    "job",
                    queue = FulfillOrder::QUEUE,
                    task_id = job_id.as_str(),
                    order_id = %job.order_id,
                    request_id = job.request_id.as_deref().unwrap_or("-")
                );
                span.in_scope(|| crate::runner::log_lead(job.order_id, &done));
            }
            crate::runner::log_others(&done);
            for job_id in &left {
                run_one(pool, config, fulfilled, job_id).await;
            }
        }
        Err(e) => {
            tracing::debug!(jobs = job_ids.len(), error = %e, "a fast lane group failed; its jobs run one by one");
            for job_id in job_ids {
                run_one(pool, config, fulfilled, job_id).await;
            }
        }
    }
}

async fn run_one(pool: &PgPool, config: &WorkerConfig, fulfilled: &Announcer, job_id: &str) {
    // order_id and request_id are filled in once the job is claimed (batch::fulfill_job).
    let span = tracing::info_span!(
        "job",
        queue = FulfillOrder::QUEUE,
        task_id = job_id,
        order_id = tracing::field::Empty,
        request_id = tracing::field::Empty
    );
    run_one_in_span(pool, config, fulfilled, job_id)
        .instrument(span)
        .await
}

async fn run_one_in_span(
    pool: &PgPool,
    config: &WorkerConfig,
    fulfilled: &Announcer,
    job_id: &str,
) {
    let work = batch::fulfill_job(
        pool,
        job_id,
        config.batch_extra_orders,
        config.lock_timeout,
        Some(fulfilled),
    );
    match crate::runner::guarded(work).await {
        Ok(Some((order_id, done))) => crate::runner::log_outcome(order_id, &done),
        Ok(None) => {}
        Err(e) => {
            // Rolled back; recorded as a failed attempt, then the queue's workers retry it.
            let retry_in = e
                .is_retryable()
                .then(|| jobs::retry_delay(1, config.retry_base));
            autokey_shared::metrics::job_failed(FulfillOrder::QUEUE, retry_in.is_some());
            if retry_in.is_some() {
                tracing::warn!(job_id, error = %e, ?retry_in, "job retry scheduled after a failed fast lane run");
            } else {
                tracing::error!(job_id, error = %e, "job failed permanently in the fast lane; it is dead");
            }
            let recorded = async {
                let mut conn = pool.acquire().await?;
                jobs::queue::record_failed_run(&mut conn, job_id, &e.to_string(), retry_in).await
            };
            if let Err(e) = recorded.await {
                tracing::warn!(job_id, error = %e, "could not record the failed run; the queue retries it after the grace");
            }
        }
    }
}
