//! One id per HTTP request: the caller's `x-request-id` when it is a short token, else a
//! fresh one. It is returned in the response's `x-request-id`, is a field of the span of
//! every log line of the request, and rides in the fulfillment job the request enqueues
//! (`autokey_shared::telemetry::request_id`), so the worker's log lines carry it too.

use axum::{
    extract::Request,
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};
use tracing::Instrument;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest id taken from a caller.
const MAX_LEN: usize = 64;

/// A caller's id is kept when it is 1 to 64 of `A-Z a-z 0-9 - _ . :` (safe in logs and
/// headers); anything else is replaced, never echoed.
pub fn valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

pub async fn layer(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let span = tracing::info_span!("request", request_id = %id);
    let mut response =
        autokey_shared::telemetry::with_request_id(id.clone(), next.run(request).instrument(span))
            .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::valid;

    #[test]
    fn only_short_plain_ids_are_taken() {
        assert!(valid("abc-123_x.y:z"));
        assert!(valid(&"a".repeat(64)));
        assert!(!valid(&"a".repeat(65)));
        assert!(!valid(""));
        assert!(!valid("a b"));
        assert!(!valid("a\\nb"));
        assert!(!valid("é"));
    }
}
