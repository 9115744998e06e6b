//! Request extractors whose rejections are the API's own JSON errors.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderMap, header},
    response::IntoResponse,
};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON object body (every request body of this API is one), rejected with [`ApiError`]:
/// 415 without a JSON content type, 413 past the body limit (2 MiB), 400 for anything that
/// is not an object of the expected shape (an array is refused even where serde would read
/// it as the struct's fields in order).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !json_content_type(request.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "expected Content-Type: application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(request, state).await?;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::validation(
                "the request body must be a JSON object",
            ));
        }
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Json(value))
    }
}

/// `application/json`, or `application/<anything>+json`, parameters allowed (as axum's `Json`).
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// The raw body (up to 2 MiB), for routes that check a signature over its bytes; too large
/// is 413 `payload_too_large`.
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Ok(RawBody(Bytes::from_request(request, state).await?))
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

/// Integer fields of JSON bodies as JSON Schema counts integers: `5` and `5.0` alike (a
/// number whose fraction is zero), within the field's type's range. Use with
/// `#[serde(deserialize_with = "int::required")]`, or `int::optional` with
/// `#[serde(default)]`.
pub mod int {
    use std::{fmt, marker::PhantomData};

    use serde::{Deserialize, Deserializer, de};

    struct Integer<T>(PhantomData<T>);

    impl<T: TryFrom<i64>> de::Visitor<'_> for Integer<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer in range")
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            let out_of_range = || E::invalid_value(de::Unexpected::Unsigned(v), &self);
            i64::try_from(v)
                .map_err(|_| out_of_range())
                .and_then(|v| T::try_from(v).map_err(|_| out_of_range()))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            // In i64's range: [-2^63, 2^63).
            const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
            if v.fract() == 0.0 && (-TWO_POW_63..TWO_POW_63).contains(&v) {
                self.visit_i64(v as i64)
            } else {
                Err(E::invalid_value(de::Unexpected::Float(v), &self))
            }
        }
    }

    struct Wrapped<T>(T);

    impl<'de, T: TryFrom<i64>> Deserialize<'de> for Wrapped<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Integer(PhantomData)).map(Wrapped)
        }
    }

    pub fn required<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<T, D::Error> {
        Wrapped::deserialize(d).map(|w| w.0)
    }

    pub fn optional<'de, D: Deserializer<'de>, T: TryFrom<i64>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        Option::<Wrapped<T>>::deserialize(d).map(|o| o.map(|w| w.0))
    }

    #[cfg(test)]
    mod tests {
        #[derive(serde::Deserialize, Debug)]
        struct Body {
            #[serde(default, deserialize_with = "super::optional")]
            n: Option<i32>,
        }

        fn n(json: &str) -> Result<Option<i32>, serde_json::Error> {
            serde_json::from_str::<Body>(json).map(|b| b.n)
        }

        #[test]
        fn integral_numbers_are_integers_and_others_are_refused() {
            assert_eq!(n(r#"{"n": 5}"#).unwrap(), Some(5));
            assert_eq!(n(r#"{"n": 5.0}"#).unwrap(), Some(5));
            assert_eq!(n(r#"{"n": -2e3}"#).unwrap(), Some(-2000));
            assert_eq!(n(r#"{"n": null}"#).unwrap(), None);
            assert_eq!(n("{}").unwrap(), None);
            for bad in [
                r#"{"n": 5.5}"#,
                r#"{"n": 3000000000}"#,
                r#"{"n": 1e300}"#,
                r#"{"n": "5"}"#,
                r#"{"n": true}"#,
            ] {
                assert!(n(bad).is_err(), "{bad}");
            }
        }
    }
}
