//! `GET /me`: who the presented token acts as (handy to check a token).

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{auth::Auth, state::AppState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(me))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Me {
    role: String,
    subject: Option<Uuid>,
    token_id: Uuid,
}

/// The principal of the bearer token.
#[utoipa::path(get, path = "/me", tag = "auth", operation_id = "getMe", security(("bearer" = [])), responses(
    (status = 200, body = Me, description = "Who the token acts as."),
    (status = 401, body = crate::error::ErrorBody),
))]
async fn me(auth: Auth) -> Json<Me> {
    Json(Me {
        role: auth.role().to_string(),
        subject: auth.subject(),
        token_id: auth.0.token_id,
    })
}
