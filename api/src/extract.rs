//! Request extractors whose rejections are the API's own JSON errors.

use axum::{
    extract::{FromRequest, FromRequestParts},
    response::IntoResponse,
};

use crate::error::ApiError;

/// `Json<T>` that rejects with [`ApiError`] (400 `validation_failed`, 413, 415).
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// `Path<T>` whose rejection (a malformed UUID, say) is a 400, never a 500.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `Query<T>` that rejects with a 400 `validation_failed`.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);
