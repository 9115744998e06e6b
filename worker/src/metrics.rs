//! The worker's own `GET /metrics` on METRICS_PORT: this process's recorder (job
//! attempts, retries, failures and deaths by queue; orders fulfilled and backordered; the
//! pay -> FULFILLED latency; webhook deliveries) plus the queue's depth and oldest job
//! age, read from the index of unfinished jobs at most every 5 s. With METRICS_TOKEN set,
//! only a request bearing it is answered.

use std::sync::Arc;

use autokey_shared::metrics::{QueueGauges, handle};
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

#[derive(Clone)]
struct Scrape {
    pool: PgPool,
    token: Option<Arc<SecretString>>,
    gauges: Arc<QueueGauges>,
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    pool: PgPool,
    token: Option<SecretString>,
) -> std::io::Result<()> {
    handle();
    let state = Scrape {
        pool,
        token: token.map(Arc::new),
        gauges: Arc::default(),
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(state);
    axum::serve(listener, app).await
}

async fn metrics(State(s): State<Scrape>, headers: HeaderMap) -> Response {
    if let Some(expected) = &s.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(expected.expose_secret().as_bytes().ct_eq(given.as_bytes())) {
            return (StatusCode::UNAUTHORIZED, "the metrics token is required\n").into_response();
        }
    }
    // The queue's gauges are best effort: without the database the counters still serve.
    match s.pool.acquire().await {
        Ok(mut conn) => {
            if let Err(e) = s.gauges.read(&mut conn).await {
                tracing::warn!(error = %e, "cannot read the queue's gauges");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the queue's gauges"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle().render(),
    )
        .into_response()
}
