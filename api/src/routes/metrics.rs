//! `GET /metrics`: Prometheus text format. Gauges are read from cheap sources (pool
//! counters, the partial index of waiting orders, the pruned job table); request counts
//! come from this process.

use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering},
};

use autokey_shared::{jobs::queue, model::KeyStatus, store};
use axum::{extract::State, http::header, response::IntoResponse};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{error::ApiError, state::AppState};

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

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text exposition format", content_type = "text/plain"),
    (status = 503, body = crate::error::ErrorBody),
))]
async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let keys = store::pools::key_totals(&mut conn).await?;
    let waiting = store::orders::waiting_counts(&mut conn).await?;
    let jobs = queue::counts(&mut conn).await?;
    let dead = queue::dead_count(&mut conn).await?;

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
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
