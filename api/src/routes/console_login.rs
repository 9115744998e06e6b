//! The seller console's sign-in with the marketplace's identity provider (API.md):
//! `GET /seller/login` sends the browser to the provider, `GET /seller/callback` comes
//! back with a code and leaves a session cookie, `POST /seller/logout` ends the session.
//!
//! The session is an autokey seller token (`autokey_session`, HttpOnly, SameSite=Strict,
//! Secure except on http://localhost) that expires when the provider's access token it was
//! made from does; the console then sends the seller back through `/seller/login`, where a
//! provider session still open signs them in again without a password.

use autokey_shared::{
    model::Role,
    store::tokens::{self},
};
use axum::{
    Extension,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::{
        Auth,
        credentials::{SESSION_COOKIE, Source, cookie_value},
        oidc::{
            JwtVerifier,
            code_flow::{self, LOGIN_COOKIE, LOGIN_MAX_AGE_SECS, Pending},
            settings::is_loopback,
        },
    },
    error::{ApiError, ApiResult},
    extract::Query,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(callback))
        .routes(routes!(logout))
}

const CALLBACK_PATH: &str = "/seller/callback";

/// The console sign-in's verifier: 404 when OIDC_CONSOLE_CLIENT_ID is not set.
fn console(state: &AppState) -> ApiResult<&JwtVerifier> {
    state
        .oidc
        .as_deref()
        .filter(|v| v.config().console_client_id.is_some())
        .ok_or_else(|| {
            ApiError::NotFound(
                "sign-in with an identity provider is not set up (OIDC_CONSOLE_CLIENT_ID)".into(),
            )
        })
}

/// How the browser reached autokey: (origin, whether cookies must be Secure). The scheme is
/// `X-Forwarded-Proto` behind a proxy, else http on a loopback host and https anywhere else.
/// A forged `Host` only hurts its sender: the provider refuses a redirect URI it does not
/// know.
fn public_origin(headers: &HeaderMap) -> ApiResult<(String, bool)> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .ok_or_else(|| ApiError::validation("the request has no valid Host header"))?;
    let hostname = match host.rfind(':') {
        Some(i) if !host.ends_with(']') => &host[..i],
        _ => host,
    };
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some(proto @ ("http" | "https")) => proto,
        _ if is_loopback(hostname) => "http",
        _ => "https",
    };
    let secure = !(scheme == "http" && is_loopback(hostname));
    Ok((format!("{scheme}://{host}"), secure))
}

fn set_cookie(response: &mut Response, cookie: Cookie<'_>) {
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

fn http_only<'a>(name: &'a str, value: String, path: &'a str, secure: bool) -> Cookie<'a> {
    Cookie::build((name, value))
        .path(path)
        .http_only(true)
        .secure(secure)
        .build()
}

/// Sign in with the identity provider: a redirect to its authorization endpoint
/// (Authorization Code with PKCE, client OIDC_CONSOLE_CLIENT_ID).
#[utoipa::path(get, path = "/seller/login", tag = "console", operation_id = "sellerLogin", responses(
    (status = 302, description = "To the provider's sign-in page; a short-lived `autokey_login` cookie holds this sign-in's state."),
    (status = 404, body = crate::error::ErrorBody, description = "`not_found`: console sign-in is not set up (OIDC_CONSOLE_CLIENT_ID)."),
    (status = 503, body = crate::error::ErrorBody, description = "`unavailable`: the identity provider cannot be reached."),
))]
async fn login(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let verifier = console(&state)?;
    let (origin, secure) = public_origin(&headers)?;
    let pending = Pending::new(format!("{origin}{CALLBACK_PATH}"));
    let url = code_flow::authorize_url(verifier, &pending).await?;
    let mut response = (
        StatusCode::FOUND,
        [
            (header::LOCATION, url),
            (header::CACHE_CONTROL, "no-store".into()),
        ],
    )
        .into_response();
    // Lax: the provider's redirect back is a cross-site navigation.
    let mut pending_cookie = http_only(LOGIN_COOKIE, pending.encode(), CALLBACK_PATH, secure);
    pending_cookie.set_same_site(SameSite::Lax);
    pending_cookie.set_max_age(CookieDuration::seconds(LOGIN_MAX_AGE_SECS));
    set_cookie(&mut response, pending_cookie);
    Ok(response)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CallbackParams {
    /// The authorization code.
    code: Option<String>,
    /// The sign-in's `state`, as `/seller/login` sent it.
    state: Option<String>,
    /// The issuer (RFC 9207), when the provider says it.
    iss: Option<String>,
    /// The provider's error code, when the sign-in did not complete.
    error: Option<String>,
}

/// Where the identity provider sends the browser back: checks `state`, redeems the code
/// (PKCE), checks the ID token's `nonce`, and leaves the `autokey_session` cookie.
#[utoipa::path(get, path = "/seller/callback", tag = "console", operation_id = "sellerCallback",
    params(CallbackParams), responses(
    (status = 303, description = "Signed in: to `/seller`, with the `autokey_session` cookie (HttpOnly, SameSite=Strict, Secure except on http://localhost), expiring with the provider's access token."),
    (status = 400, body = crate::error::ErrorBody, description = "`validation_failed`: the sign-in failed (no or another `state`, a refused code or token, a wrong `nonce`)."),
    (status = 401, body = crate::error::ErrorBody, description = "`unauthorized`: the provider's tokens are refused (why in `WWW-Authenticate`)."),
    (status = 403, body = crate::error::ErrorBody, description = "`forbidden`: the account is not a seller."),
    (status = 404, body = crate::error::ErrorBody, description = "`not_found`: console sign-in is not set up."),
))]
async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<CallbackParams>,
) -> ApiResult<Response> {
    let verifier = console(&state)?;
    let (_, secure) = public_origin(&headers)?;
    if let Some(error) = params.error {
        return Err(ApiError::validation(format!(
            "the sign-in was not completed at the identity provider ({error})"
        )));
    }
    let pending = cookie_value(&headers, LOGIN_COOKIE)
        .and_then(|v| Pending::decode(&v))
        .ok_or_else(|| {
            ApiError::validation(
                "no sign-in is in progress in this browser (or it took over 10 minutes): \
                 start again at /seller/login",
            )
        })?;
    if !params.state.is_some_and(|s| pending.state_matches(&s)) {
        return Err(ApiError::validation(
            "the sign-in's state is not the one this browser started",
        ));
    }
    if params
        .iss
        .is_some_and(|iss| iss != verifier.config().console_issuer())
    {
        return Err(ApiError::validation(
            "the sign-in came back from another issuer",
        ));
    }
    let code = params
        .code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::validation("the callback has no code"))?;
    let (principal, expires_at) = code_flow::finish(verifier, &state.pool, &pending, &code).await?;
    let (Role::Seller, Some(seller)) = (principal.role, principal.subject) else {
        return Err(ApiError::Forbidden(format!(
            "this account's role is {}: the console is for sellers",
            principal.role
        )));
    };
    let expires_at = DateTime::<Utc>::from_timestamp(expires_at, 0)
        .ok_or_else(|| ApiError::validation("the access token's exp is out of range"))?;
    let lifetime = (expires_at - Utc::now()).num_seconds();
    if lifetime <= 0 {
        return Err(ApiError::InvalidToken("the token has expired (exp)".into()));
    }
    let mut conn = state.pool.acquire().await?;
    let session =
        tokens::create_token_until(&mut conn, Role::Seller, Some(seller), Some(expires_at)).await?;
    let mut response = Redirect::to("/seller").into_response();
    let mut session_cookie = http_only(SESSION_COOKIE, session.token, "/", secure);
    session_cookie.set_same_site(SameSite::Strict);
    session_cookie.set_max_age(CookieDuration::seconds(lifetime));
    set_cookie(&mut response, session_cookie);
    set_cookie(&mut response, expired(LOGIN_COOKIE, CALLBACK_PATH, secure));
    Ok(response)
}

fn expired<'a>(name: &'a str, path: &'a str, secure: bool) -> Cookie<'a> {
    let mut gone = http_only(name, String::new(), path, secure);
    gone.make_removal();
    gone
}

/// Ends the console session of the `autokey_session` cookie (sent with `X-Autokey-Csrf: 1`):
/// its token is revoked and the cookie removed. Bearer tokens are never revoked here.
#[utoipa::path(post, path = "/seller/logout", tag = "console", operation_id = "sellerLogout",
    security(("bearer" = [])), responses(
    (status = 204, description = "Signed out."),
    (status = 401, body = crate::error::ErrorBody, description = "`unauthorized`: no console session in this request."),
))]
async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    source: Option<Extension<Source>>,
    auth: Auth,
) -> ApiResult<Response> {
    if source.map(|Extension(s)| s) != Some(Source::Session) {
        return Err(ApiError::Unauthorized);
    }
    let (_, secure) = public_origin(&headers)?;
    let mut conn = state.pool.acquire().await?;
    tokens::revoke_token(&mut conn, auth.0.token_id).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    set_cookie(&mut response, expired(SESSION_COOKIE, "/", secure));
    Ok(response)
}
