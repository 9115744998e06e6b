//! Logging set-up: human-readable by default, JSON lines when LOG_FORMAT=json.

use tracing_subscriber::{EnvFilter, fmt};

pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT")
        .map(|v| v == "json")
        .unwrap_or(false);
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

tokio::task_local! {
    /// The id of the HTTP request being served (set by the api's request-id layer for the
    /// whole handler), so what the request enqueues can carry it to the worker.
    static REQUEST_ID: String;
}

/// The current HTTP request's id, when running inside one.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Runs `work` as the request `id`.
pub async fn with_request_id<F: std::future::Future>(id: String, work: F) -> F::Output {
    REQUEST_ID.scope(id, work).await
}
