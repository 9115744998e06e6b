//! Metrics of both processes: one `metrics` recorder per process (Prometheus, rendered by
//! each process's own GET /metrics), and every series name in this one file, so the api,
//! the worker and the docs agree on them.
//!
//! Counters count what happened in this process since it started; Prometheus's `rate()`
//! and `histogram_quantile()` do the rest (keys/s = `rate(autokey_keys_uploaded_total[1m])`).

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgConnection;
use tokio::sync::Mutex;

use crate::jobs::{FulfillOrder, Job, ReplenishPool, queue};

pub const HTTP_REQUESTS: &str = "autokey_http_requests_total";
pub const HTTP_DURATION: &str = "autokey_http_request_duration_seconds";
pub const ORDERS_CREATED: &str = "autokey_orders_created_total";
pub const ORDERS_PAID: &str = "autokey_orders_paid_total";
pub const ORDERS_FULFILLED: &str = "autokey_orders_fulfilled_total";
pub const ORDERS_BACKORDERED: &str = "autokey_orders_backordered_total";
pub const ORDERS_CANCELED: &str = "autokey_orders_canceled_total";
pub const PAY_TO_FULFILLED: &str = "autokey_order_pay_to_fulfilled_seconds";
pub const JOB_ATTEMPTS: &str = "autokey_job_attempts_total";
pub const JOB_RETRIES: &str = "autokey_job_retries_total";
pub const JOB_FAILURES: &str = "autokey_job_failures_total";
pub const JOBS_DIED: &str = "autokey_jobs_died_total";
pub const QUEUE_DEPTH: &str = "autokey_queue_depth";
pub const QUEUE_OLDEST_AGE: &str = "autokey_queue_oldest_job_age_seconds";
pub const KEYS_UPLOADED: &str = "autokey_keys_uploaded_total";
pub const WEBHOOK_DELIVERIES: &str = "autokey_webhook_deliveries_total";
pub const WEBHOOK_ENDPOINTS_DISABLED: &str = "autokey_webhook_endpoints_disabled_total";
pub const LANE_ANNOUNCEMENTS_DROPPED: &str = "autokey_lane_announcements_dropped_total";
pub const FULFILLED_ANNOUNCEMENTS_DROPPED: &str = "autokey_fulfilled_announcements_dropped_total";
pub const GROUP_SIZE: &str = "autokey_group_size";

/// Latency buckets (seconds): 1 ms to 1 min.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Group sizes (requests or jobs per grouped statement): 1 is a request written alone.
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
/// Pay -> FULFILLED buckets (seconds): 5 ms to an hour (backorders wait for uploads).
const FULFILLMENT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// This process's recorder, installed on first use (the api and the worker each call it
/// at start; in-process tests share one).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(PAY_TO_FULFILLED.into()),
                    FULFILLMENT_BUCKETS,
                )
            })
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(GROUP_SIZE.into()), GROUP_BUCKETS))
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only when another recorder is installed; ours then records nothing, and
        // /metrics still serves the gauges read from the database.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests served, by method, route template and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency by method and route template."
    );
    describe_counter!(ORDERS_CREATED, "Orders created.");
    describe_counter!(ORDERS_PAID, "Orders moved to PAID.");
    describe_counter!(ORDERS_FULFILLED, "Orders moved to FULFILLED.");
    describe_counter!(
        ORDERS_BACKORDERED,
        "Fulfillment runs that left a paid order waiting for keys."
    );
    describe_counter!(ORDERS_CANCELED, "Orders canceled.");
    describe_histogram!(
        PAY_TO_FULFILLED,
        Unit::Seconds,
        "Time from PAID to FULFILLED."
    );
    describe_counter!(JOB_ATTEMPTS, "Job runs started, by queue.");
    describe_counter!(
        JOB_RETRIES,
        "Failed job runs scheduled to run again, by queue."
    );
    describe_counter!(JOB_FAILURES, "Failed job runs, by queue.");
    describe_counter!(
        JOBS_DIED,
        "Jobs that died (out of attempts or failed permanently), by queue."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Unfinished jobs that will run (not dead), by queue."
    );
    describe_gauge!(
        QUEUE_OLDEST_AGE,
        Unit::Seconds,
        "How long the oldest due, unfinished job has been due, by queue."
    );
    describe_counter!(
        KEYS_UPLOADED,
        "Keys stored by uploads (keys/s: rate of this)."
    );
    describe_counter!(
        WEBHOOK_DELIVERIES,
        "Outgoing webhook deliveries, by outcome (delivered, failed)."
    );
    describe_counter!(
        WEBHOOK_ENDPOINTS_DISABLED,
        "Webhook endpoints disabled after repeated failures."
    );
    describe_counter!(
        LANE_ANNOUNCEMENTS_DROPPED,
        "Paid orders' jobs not announced to the fast lane (backlog full); the queue runs them after its grace."
    );
    describe_histogram!(
        GROUP_SIZE,
        "Requests or jobs written by one grouped statement (group commit), by group."
    );
    describe_counter!(
        FULFILLED_ANNOUNCEMENTS_DROPPED,
        "Fulfilled orders not announced to fulfill?wait waiters (backlog full); they see it at their next 1-s check."
    );
}

/// One HTTP request. `route` is the matched route template (never a raw path).
pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let (method, route) = (method.to_owned(), route.to_owned());
    counter!(HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    histogram!(HTTP_DURATION, "method" => method, "route" => route).record(elapsed.as_secs_f64());
}

/// One grouped write or read of `size` requests (or fast lane jobs).
pub fn group_size(group: &'static str, size: usize) {
    histogram!(GROUP_SIZE, "group" => group).record(size as f64);
}

pub fn orders_created(n: u64) {
    counter!(ORDERS_CREATED).increment(n);
}

pub fn orders_paid(n: u64) {
    counter!(ORDERS_PAID).increment(n);
}

pub fn orders_canceled(n: u64) {
    counter!(ORDERS_CANCELED).increment(n);
}

pub fn orders_backordered(n: u64) {
    counter!(ORDERS_BACKORDERED).increment(n);
}

/// Orders that committed FULFILLED, by when each was paid.
pub fn orders_fulfilled(paid_at: &[DateTime<Utc>]) {
    if paid_at.is_empty() {
        return;
    }
    counter!(ORDERS_FULFILLED).increment(paid_at.len() as u64);
    let now = Utc::now();
    let latency = histogram!(PAY_TO_FULFILLED);
    for at in paid_at {
        latency.record(((now - *at).num_microseconds().unwrap_or(0).max(0)) as f64 / 1e6);
    }
}

pub fn job_attempt(queue: &'static str) {
    counter!(JOB_ATTEMPTS, "queue" => queue).increment(1);
}

/// A failed run: `retried` when it will run again, else the job is dead.
pub fn job_failed(queue: &'static str, retried: bool) {
    counter!(JOB_FAILURES, "queue" => queue).increment(1);
    if retried {
        counter!(JOB_RETRIES, "queue" => queue).increment(1);
    } else {
        counter!(JOBS_DIED, "queue" => queue).increment(1);
    }
}

pub fn keys_uploaded(n: u64) {
    counter!(KEYS_UPLOADED).increment(n);
}

pub fn webhook_delivery(outcome: &'static str) {
    counter!(WEBHOOK_DELIVERIES, "outcome" => outcome).increment(1);
}

pub fn webhook_endpoint_disabled() {
    counter!(WEBHOOK_ENDPOINTS_DISABLED).increment(1);
}

pub fn lane_announcement_dropped() {
    counter!(LANE_ANNOUNCEMENTS_DROPPED).increment(1);
}

pub fn fulfilled_announcement_dropped() {
    counter!(FULFILLED_ANNOUNCEMENTS_DROPPED).increment(1);
}

/// Sets the depth and oldest-age gauges from a reading of the queue.
pub fn set_queue_gauges(live: &queue::LiveJobs) {
    for name in [FulfillOrder::QUEUE, ReplenishPool::QUEUE] {
        // A drained queue has no row: its gauges go back to 0.
        let (depth, age) = live.depth.get(name).copied().unwrap_or((0, 0.0));
        gauge!(QUEUE_DEPTH, "queue" => name).set(depth as f64);
        gauge!(QUEUE_OLDEST_AGE, "queue" => name).set(age);
    }
}

/// How long a reading of the queue's gauges is served before it is read again.
pub const GAUGES_MAX_AGE: Duration = Duration::from_secs(5);

/// The queue's live jobs as last read, shared by a process's scrapes: one read of the
/// index of unfinished jobs at most every [`GAUGES_MAX_AGE`], however often it is scraped.
#[derive(Default)]
pub struct QueueGauges(Mutex<Option<(Instant, std::sync::Arc<queue::LiveJobs>)>>);

impl QueueGauges {
    /// The last reading, read again when older than [`GAUGES_MAX_AGE`]; sets the depth
    /// and oldest-age gauges whenever it reads.
    pub async fn read(
        &self,
        conn: &mut PgConnection,
    ) -> Result<std::sync::Arc<queue::LiveJobs>, sqlx::Error> {
        let mut last = self.0.lock().await;
        if let Some((at, live)) = last.as_ref()
            && at.elapsed() < GAUGES_MAX_AGE
        {
            return Ok(live.clone());
        }
        let live = std::sync::Arc::new(queue::live_jobs(conn).await?);
        set_queue_gauges(&live);
        *last = Some((Instant::now(), live.clone()));
        Ok(live)
    }
}
