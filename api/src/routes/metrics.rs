//! `GET /metrics`: Prometheus text format, for the admin role or the bearer token
//! METRICS_TOKEN (Prometheus's `bearer_token`). Gauges are read from cheap sources (pool
//! counters, the partial index of waiting orders, the index of unfinished jobs) at most
//! once every few seconds per process, however often it is scraped; then comes this
//! process's recorder (`autokey_shared::metrics`: requests by route and status with their
//! latency, orders, uploads, the queue's depth and oldest job age).

use std::{
    fmt::Write,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use autokey_shared::{
    jobs::queue,
    model::{KeyStatus, Role},
    store,
};
use axum::{
    Extension,
    extract::State,
    http::{HeaderMap, header},
    response::IntoResponse,
};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{auth::bearer, error::ApiError, limits::rate::Checked, state::AppState};

/// Responses served, by status class (1xx..5xx).
static RESPONSES: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

pub fn count_response(status: u16) {
    if let Some(slot) = RESPONSES.get((status / 100).saturating_sub(1) as usize) {
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// How long a reading of the database's gauges is served before it is read again.
const GAUGES_MAX_AGE: Duration = autokey_shared::metrics::GAUGES_MAX_AGE;

/// The last reading of the gauges, shared by this process's scrapes.
#[derive(Default)]
pub struct GaugeCache(Mutex<Option<(Instant, Arc<Gauges>)>>);

struct Gauges {
    keys: (i64, i64, i64, i64),
    waiting: (i64, i64),
    jobs: Vec<(String, String, i64)>,
    dead: i64,
}

async fn gauges(state: &AppState) -> Result<Arc<Gauges>, ApiError> {
    let mut last = state.gauges.0.lock().await;
    if let Some((at, g)) = last.as_ref()
        && at.elapsed() < GAUGES_MAX_AGE
    {
        return Ok(g.clone());
    }
    let mut conn = state.pool.acquire().await?;
    let live = queue::live_jobs(&mut conn).await?;
    autokey_shared::metrics::set_queue_gauges(&live);
    let (jobs, dead) = (live.counts, live.dead);
    let g = Arc::new(Gauges {
        keys: store::pools::key_totals(&mut conn).await?,
        waiting: store::orders::waiting_counts(&mut conn).await?,
        jobs,
        dead,
    });
    *last = Some((Instant::now(), g.clone()));
    Ok(g)
}

/// The admin role, or METRICS_TOKEN (compared in constant time).
fn may_scrape(
    state: &AppState,
    headers: &HeaderMap,
    checked: Option<&Checked>,
) -> Result<(), ApiError> {
    if let (Some(expected), Some(given)) = (&state.settings.metrics_token, bearer(headers))
        && bool::from(expected.expose_secret().as_bytes().ct_eq(given.as_bytes()))
    {
        return Ok(());
    }
    match checked.and_then(|c| c.0) {
        Some(p) if p.role == Role::Admin => Ok(()),
        Some(_) => Err(ApiError::Forbidden(
            "metrics are for admin tokens or the metrics token".into(),
        )),
        None => Err(ApiError::Unauthorized),
    }
}

/// Prometheus metrics (admin token or METRICS_TOKEN).
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "getMetrics",
    security(("bearer" = [])), responses(
    (status = 200, description = "Prometheus text exposition format.", content_type = "text/plain", body = String),
    (status = 401, body = crate::error::ErrorBody, description = "no token, or not the metrics token"),
    (status = 403, body = crate::error::ErrorBody, description = "a token that is not an admin's"),
    (status = 503, body = crate::error::ErrorBody),
))]
async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
    checked: Option<Extension<Checked>>,
) -> Result<impl IntoResponse, ApiError> {
    may_scrape(&state, &headers, checked.as_ref().map(|c| &c.0))?;
    let g = gauges(&state).await?;
    let (keys, waiting, dead) = (g.keys, g.waiting, g.dead);
    let jobs = g.jobs.iter().map(|(q, s, n)| (q.as_str(), s.as_str(), *n));

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP autokey_keys Keys in all pools by status.\n# TYPE autokey_keys gauge"
    );
    for (status, n) in [
        (KeyStatus::Available, keys.0),
        (KeyStatus::Reserved, keys.1),
        (KeyStatus::Delivered, keys.2),
        (KeyStatus::Invalid, keys.3),
    ] {
        let _ = writeln!(out, "autokey_keys{{status=\"{status}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP autokey_orders_paid_waiting Paid orders not yet fulfilled.\n# TYPE autokey_orders_paid_waiting gauge"
    );
    let _ = writeln!(out, "autokey_orders_paid_waiting {}", waiting.0);
    let _ = writeln!(
        out,
        "# HELP autokey_orders_backordered Paid orders waiting for keys to arrive.\n# TYPE autokey_orders_backordered gauge"
    );
    let _ = writeln!(out, "autokey_orders_backordered {}", waiting.1);
    let _ = writeln!(
        out,
        "# HELP autokey_jobs Jobs in the queue by queue and status.\n# TYPE autokey_jobs gauge"
    );
    for (queue, status, n) in jobs {
        let _ = writeln!(
            out,
            "autokey_jobs{{queue=\"{queue}\",status=\"{status}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP autokey_jobs_dead Jobs that will not run again without an operator (autokey-worker retry-dead).\n# TYPE autokey_jobs_dead gauge"
    );
    let _ = writeln!(out, "autokey_jobs_dead {dead}");
    let _ = writeln!(
        out,
        "# HELP autokey_http_responses_total HTTP responses served by this process, by status class.\n# TYPE autokey_http_responses_total counter"
    );
    for (i, slot) in RESPONSES.iter().enumerate() {
        let _ = writeln!(
            out,
            "autokey_http_responses_total{{class=\"{}xx\"}} {}",
            i + 1,
            slot.load(Ordering::Relaxed)
        );
    }
    out.push_str(&autokey_shared::metrics::handle().render());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
