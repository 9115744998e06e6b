//! What keeps one client, or too many, from taking the service down: per-token (or
//! per-address) rate limits, a cap on requests in flight with load shedding, a deadline
//! per request, and caps on concurrent uploads. Every refusal is the API's JSON error:
//! 429 `rate_limited` with `Retry-After`, or 503 `unavailable`.

pub mod rate;
pub mod uploads;

use std::time::Duration;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tower::BoxError;

use crate::{error::ApiError, state::AppState};

/// The answer to a request shed by the concurrency cap (`LoadShedLayer` over a
/// `ConcurrencyLimitLayer`): 503 at once, not a queue that grows.
pub async fn shed(err: BoxError) -> Response {
    if err.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Unavailable.into_response()
    } else {
        ApiError::Internal(err).into_response()
    }
}

/// Requests that may run longer than the request deadline: uploads stream for as long as
/// their body keeps arriving (they fail after the same time without data instead).
fn unbounded(path: &str) -> bool {
    path.ends_with("/keys/upload")
}

/// Answers 503 when a request takes longer than the configured deadline.
pub async fn deadline(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if unbounded(request.uri().path()) {
        return next.run(request).await;
    }
    let limit: Duration = state.settings.limits.request_timeout();
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable.into_response(),
    }
}
