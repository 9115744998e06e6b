//! Cross-cutting HTTP behaviour: error logging, JSON fallbacks, panics as opaque 500s.

use std::any::Any;

use axum::{
    extract::{MatchedPath, Request},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::error::{ApiError, InternalCause};

/// Logs server errors with their cause (kept out of the response body) and client
/// errors at debug level. Logged here, not in `into_response`, so each is logged once.
/// Also counts the request and its latency by route template (axum's MatchedPath, so
/// ids in paths never become labels; requests no route matched are `unmatched`).
pub async fn log_errors(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status();
    crate::routes::metrics::count_response(status.as_u16());
    autokey_shared::metrics::http_request(
        method.as_str(),
        route.as_deref().unwrap_or("unmatched"),
        status.as_u16(),
        started.elapsed(),
    );
    if status.is_server_error() {
        let cause = response
            .extensions()
            .get::<InternalCause>()
            .map(|c| c.0.as_str().to_owned());
        tracing::error!(%method, %path, status = status.as_u16(), cause = cause.as_deref().unwrap_or("-"), "request failed");
    } else if status.is_client_error() {
        tracing::debug!(%method, %path, status = status.as_u16(), "request rejected");
    }
    response
}

pub async fn fallback() -> ApiError {
    ApiError::NotFound("no such route".into())
}

pub async fn method_not_allowed() -> Response {
    let body = crate::error::ErrorBody {
        error: crate::error::ErrorDetail {
            code: "method_not_allowed",
            message: "this route does not accept this method".into(),
        },
    };
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

pub fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    ApiError::Internal("handler panicked".into()).into_response()
}
