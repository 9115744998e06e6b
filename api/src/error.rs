//! The one error type of the HTTP API, mapped to API.md's `{"error": {"code", "message"}}`.
//! 500s are opaque: the cause goes to the log (by the `log_errors` middleware), never
//! to the client.

use std::sync::Arc;

use autokey_shared::error::CoreError;
use axum::{
    Json,
    extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// A token was presented and refused, for this reason (RFC 6750's `invalid_token`).
    #[error("{0}")]
    InvalidToken(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Validation(String),
    #[error("not enough keys are available for this quantity")]
    OutOfStock,
    #[error("this offer cannot be ordered")]
    OfferUnavailable,
    #[error("the order has not been paid")]
    NotPaid,
    #[error("{0}")]
    Conflict(String),
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyMismatch,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    #[error("the service is temporarily unavailable, try again")]
    Unavailable,
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// `{"error": {...}}`, the body of every non-2xx response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable snake_case code, e.g. `validation_failed`.
    pub code: &'static str,
    /// One human sentence.
    pub message: String,
}

/// The cause of a 500, attached to the response for the logging middleware.
#[derive(Clone)]
pub struct InternalCause(pub Arc<String>);

impl ApiError {
    pub fn not_found() -> Self {
        ApiError::NotFound("not found".into())
    }

    pub fn validation(msg: impl Into<String>) -> Self {
        ApiError::Validation(msg.into())
    }

    pub fn internal(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(err))
    }

    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            Unauthorized | InvalidToken(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Validation(_) => (StatusCode::BAD_REQUEST, "validation_failed"),
            OutOfStock => (StatusCode::BAD_REQUEST, "out_of_stock"),
            OfferUnavailable => (StatusCode::BAD_REQUEST, "offer_unavailable"),
            NotPaid => (StatusCode::CONFLICT, "not_paid"),
            Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            IdempotencyMismatch => (StatusCode::CONFLICT, "idempotency_mismatch"),
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = self.to_string();
        let mut response = (
            status,
            Json(ErrorBody {
                error: ErrorDetail { code, message },
            }),
        )
            .into_response();
        match &self {
            ApiError::Internal(cause) => {
                let mut chain = cause.to_string();
                let mut source = cause.source();
                while let Some(s) = source {
                    chain.push_str(": ");
                    chain.push_str(&s.to_string());
                    source = s.source();
                }
                response
                    .extensions_mut()
                    .insert(InternalCause(Arc::new(chain)));
            }
            ApiError::Unauthorized => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"autokey\""),
                );
            }
            ApiError::InvalidToken(why) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, invalid_token_challenge(why));
            }
            ApiError::RateLimited { retry_after_secs } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

/// `Bearer realm="autokey", error="invalid_token", error_description="<why>"` (RFC 6750,
/// section 3): the description is a quoted string of visible ASCII without quotes or backslashes.
fn invalid_token_challenge(why: &str) -> HeaderValue {
    let description: String = why
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            c if (' '..='~').contains(&c) => c,
            _ => '?',
        })
        .collect();
    HeaderValue::from_str(&format!(
        "Bearer realm=\"autokey\", error=\"invalid_token\", error_description=\"{description}\""
    ))
    .unwrap_or_else(|_| {
        HeaderValue::from_static("Bearer realm=\"autokey\", error=\"invalid_token\"")
    })
}

/// Passing database trouble is a 503; a broken invariant or anything else an opaque 500.
/// (What a named constraint means is said at the call that may violate it:
/// [`ConstraintExt::map_constraint`].)
impl From<CoreError> for ApiError {
    fn from(err: CoreError) -> Self {
        if err.is_retryable() {
            return ApiError::Unavailable;
        }
        ApiError::internal(err)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        CoreError::from(err).into()
    }
}

/// Maps the named constraints a call may violate to what they mean for this request.
pub trait ConstraintExt<T> {
    fn map_constraint(self, meaning: impl FnOnce(&str) -> Option<ApiError>) -> Result<T, ApiError>;
}

impl<T, E: Into<CoreError>> ConstraintExt<T> for Result<T, E> {
    fn map_constraint(self, meaning: impl FnOnce(&str) -> Option<ApiError>) -> Result<T, ApiError> {
        self.map_err(|e| {
            let e: CoreError = e.into();
            e.constraint().and_then(meaning).unwrap_or_else(|| e.into())
        })
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("the request body is too large".into())
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ApiError::UnsupportedMediaType("expected Content-Type: application/json".into())
            }
            _ => ApiError::validation(rejection.body_text()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("the request body is too large".into())
            }
            _ => ApiError::validation("the request body could not be read"),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::validation(format!("invalid path parameter: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::validation(format!("invalid query string: {}", rejection.body_text()))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
