//! Liveness and readiness.

use axum::{extract::State, http::StatusCode};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{error::ApiError, state::AppState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses(
    (status = 200, description = "Alive.", content_type = "text/plain", body = String, example = "ok"),
))]
async fn healthz() -> &'static str {
    "ok"
}

/// The database answers and every migration is applied.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready.", content_type = "text/plain", body = String, example = "ready"),
    (status = 503, description = "database unreachable or migrations missing", body = crate::error::ErrorBody),
))]
async fn readyz(State(state): State<AppState>) -> Result<(StatusCode, &'static str), ApiError> {
    if autokey_shared::db::is_ready(&state.pool).await {
        Ok((StatusCode::OK, "ready"))
    } else {
        Err(ApiError::Unavailable)
    }
}
