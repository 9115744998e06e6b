//! `GET /seller`: the seller web console, one self-contained page that talks to the
//! API with the seller's token (kept in the browser's session storage only).

use axum::{http::header, response::IntoResponse};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(console))
}

const PAGE: &str = include_str!("console.html");

/// The seller web console (HTML): pools and their counts, key upload, keys, offers.
#[utoipa::path(get, path = "/seller", tag = "console", responses(
    (status = 200, description = "the console page", content_type = "text/html", body = String),
))]
async fn console() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Inline script and style only; nothing is loaded from elsewhere.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}
