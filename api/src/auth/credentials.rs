//! Who a request acts as, from what it presents: an autokey token or a JWT of a configured
//! OpenID provider in `Authorization: Bearer`, or else the console's session cookie.
//!
//! The cookie counts only on requests a cross-site page cannot make: they carry the
//! [`CSRF_HEADER`] (a custom header, which a cross-origin page cannot send without a CORS
//! preflight that autokey never grants), and, when the browser says where they come from
//! (`Sec-Fetch-Site`, `Origin`), they come from the console's own origin. The cookie itself
//! is `SameSite=Strict`, so browsers do not even attach it to cross-site requests.

use autokey_shared::store::tokens::Principal;
use axum::http::{HeaderMap, header};

use super::{bearer, oidc::looks_like_jwt};
use crate::{error::ApiError, state::AppState};

/// The console's session cookie: an autokey token that expires with the provider's.
pub const SESSION_COOKIE: &str = "autokey_session";
/// The header a request made with the session cookie must carry (value `1`).
pub const CSRF_HEADER: &str = "x-autokey-csrf";

/// What a request authenticated with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Token,
    Jwt,
    /// The console's session cookie (`POST /seller/logout` ends it).
    Session,
}

/// The principal of the request's credentials: None when it presents none (or an
/// autokey token that is unknown, revoked or expired, which the route's `Auth` refuses);
/// a refused JWT is `ApiError::InvalidToken` with the reason.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<(Principal, Source)>, ApiError> {
    if let Some(token) = bearer(headers) {
        if let Some(verifier) = &state.oidc
            && looks_like_jwt(token)
        {
            let principal = verifier.authenticate(&state.pool, token).await?;
            return Ok(Some((principal, Source::Jwt)));
        }
        let found = state.tokens.authenticate(&state.pool, token).await?;
        return Ok(found.map(|p| (p, Source::Token)));
    }
    let Some(token) = session_token(headers) else {
        return Ok(None);
    };
    let found = state.tokens.authenticate(&state.pool, &token).await?;
    Ok(found.map(|p| (p, Source::Session)))
}

/// The session cookie's token, if the request may use it (see the module's comment).
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    if headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
        return None;
    }
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return None;
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST)?.to_str().ok()?;
        let origin = url::Url::parse(origin.to_str().ok()?).ok()?;
        let origin_host = match origin.port() {
            Some(port) => format!("{}:{port}", origin.host_str()?),
            None => origin.host_str()?.to_owned(),
        };
        if !origin_host.eq_ignore_ascii_case(host) {
            return None;
        }
    }
    cookie_value(headers, SESSION_COOKIE)
}

/// The value of cookie `name` among the request's `Cookie` headers.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    const COOKIE: (&str, &str) = ("cookie", "a=b; autokey_session=ak_x");

    #[test]
    fn the_cookie_counts_only_with_the_header_and_from_the_same_origin() {
        let same = [COOKIE, (CSRF_HEADER, "1"), ("host", "shop.example")];
        assert_eq!(session_token(&headers(&same)).as_deref(), Some("ak_x"));
        assert_eq!(session_token(&headers(&[COOKIE])), None);
        assert_eq!(session_token(&headers(&[COOKIE, (CSRF_HEADER, "0")])), None);
        let cross_site = [COOKIE, (CSRF_HEADER, "1"), ("sec-fetch-site", "cross-site")];
        assert_eq!(session_token(&headers(&cross_site)), None);
        let other_origin = [
            COOKIE,
            (CSRF_HEADER, "1"),
            ("host", "shop.example"),
            ("origin", "https://evil.example"),
        ];
        assert_eq!(session_token(&headers(&other_origin)), None);
        let own_origin = [
            COOKIE,
            (CSRF_HEADER, "1"),
            ("host", "localhost:4000"),
            ("origin", "http://localhost:4000"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert_eq!(
            session_token(&headers(&own_origin)).as_deref(),
            Some("ak_x")
        );
    }
}
