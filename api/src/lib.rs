//! autokey's HTTP front: records orders and enqueues fulfillment jobs; the worker does
//! the rest. `app()` builds the router; `serve()` runs it until shutdown.

pub mod auth;
pub mod cli;
pub mod error;
pub mod extract;
pub mod fulfillment_wait;
pub mod group_commit;
pub mod ingest;
pub mod key_input;
pub mod limits;
pub mod middleware;
pub mod openapi;
pub mod orders;
pub mod pagination;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod settings;
pub mod state;

use axum::Router;
use tokio::net::TcpListener;
use utoipa_axum::router::OpenApiRouter;

pub use state::{AppState, Settings};

/// The full application: every route, its OpenAPI document and the docs UI.
/// Layers, from the outside in: panics become opaque 500s; errors are logged; requests
/// beyond the concurrency cap (one semaphore for every route) are shed (503); each has
/// a deadline (503); each is
/// authenticated once and rate limited (429). Outermost, each gets its request id.
pub fn app(state: AppState) -> Router {
    let (router, api) = api_router().split_for_parts();
    let max_in_flight = state.settings.limits.max_concurrent_requests;
    router
        .merge(openapi::docs_router(openapi::finish(api)))
        .fallback(middleware::fallback)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::rate::admit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::deadline,
        ))
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(limits::shed))
                .layer(tower::load_shed::LoadShedLayer::new())
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                    max_in_flight.max(1),
                )),
        )
        .layer(axum::middleware::from_fn(middleware::log_errors))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            middleware::panic_response,
        ))
        .layer(axum::middleware::from_fn(request_id::layer))
        .with_state(state)
}

/// Every documented route; also used by the test that checks the spec is complete.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(routes::health::router())
        .merge(routes::me::router())
        .merge(routes::pools::router())
        .merge(routes::upload::router())
        .merge(routes::keys::router())
        .merge(routes::offers::router())
        .merge(routes::console::router())
        .merge(routes::console_login::router())
        .merge(routes::orders::router())
        .merge(routes::seller_orders::router())
        .merge(routes::key_reports::router())
        .merge(routes::payments::router())
        .merge(routes::metrics::router())
        .merge(routes::events::router())
        .merge(routes::webhook_endpoints::router())
        .merge(routes::admin::router())
        .merge(routes::audit::router())
}

pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let header_read_timeout = state.settings.limits.header_read_timeout();
    server::run(listener, app(state), header_read_timeout, shutdown).await
}
