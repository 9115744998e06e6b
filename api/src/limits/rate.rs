//! Per-token rate limits (GCRA, `governor`): keyed by the token for authenticated
//! requests, with a quota per kind of caller (a storefront is one busy server; a buyer,
//! seller or admin is one person), and by the connection's client address for requests
//! without a valid token — never by a header a client could forge.
//!
//! The middleware authenticates the bearer token once (through the token cache) and hands
//! the principal to the route's `Auth` extractor, so the check costs no extra lookup.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use autokey_shared::{model::Role, store::tokens::Principal};
use axum::{
    extract::{ConnectInfo, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    state::keyed::DefaultKeyedStateStore,
};
use uuid::Uuid;

use crate::{auth, error::ApiError, settings::Limits, state::AppState};

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// The outcome of authenticating a request's bearer token, left in its extensions by
/// [`admit`]: `None` when it had none or an invalid one.
#[derive(Clone, Copy, Debug)]
pub struct Checked(pub Option<Principal>);

/// Why the request's token was refused (a JWT: expired, another audience...), left in its
/// extensions by [`admit`] for the `Auth` extractor's 401.
#[derive(Clone, Debug)]
pub struct Refused(pub String);

pub struct RateLimits {
    person: Keyed<Uuid>,
    storefront: Keyed<Uuid>,
    anonymous: Keyed<IpAddr>,
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).expect("at least 1");
    let burst = NonZeroU32::new(burst.max(per_second).max(1)).expect("at least 1");
    Quota::per_second(rate).allow_burst(burst)
}

impl RateLimits {
    pub fn new(limits: &Limits) -> Arc<Self> {
        let this = Arc::new(Self {
            person: RateLimiter::keyed(quota(
                limits.rate_limit_per_second,
                limits.rate_limit_burst,
            )),
            storefront: RateLimiter::keyed(quota(
                limits.rate_limit_storefront_per_second,
                limits.rate_limit_storefront_burst,
            )),
            anonymous: RateLimiter::keyed(quota(
                limits.rate_limit_anonymous_per_second,
                limits.rate_limit_anonymous_burst,
            )),
        });
        // Keys that have refilled their bucket carry no state worth keeping.
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                this.person.retain_recent();
                this.storefront.retain_recent();
                this.anonymous.retain_recent();
            }
        });
        this
    }

    /// None when admitted; otherwise how long to wait.
    fn check(&self, principal: Option<&Principal>, peer: Option<IpAddr>) -> Option<Duration> {
        let outcome = match (principal, peer) {
            (Some(p), _) if p.role == Role::Storefront => self.storefront.check_key(&p.token_id),
            (Some(p), _) => self.person.check_key(&p.token_id),
            (None, Some(ip)) => self.anonymous.check_key(&ip),
            // No address (a test calling the router directly): nothing to key on.
            (None, None) => return None,
        };
        outcome
            .err()
            .map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Authenticates the request's credentials (if any: `auth::credentials`) and applies its
/// rate limit. A refused JWT counts as no credentials here (the limit of its address
/// applies); its reason goes to the route's `Auth` extractor, which answers 401 with it, so
/// no route that takes a token runs for it.
pub async fn admit(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    // A token that cannot be checked (the database or the identity provider is
    // unreachable) is not an invalid one: the caller gets 503 `unavailable` and retries,
    // never a 401 that would make it drop a good token.
    let (principal, source, refused) =
        match auth::credentials::authenticate(&state, request.headers()).await {
            Ok(Some((principal, source))) => (Some(principal), Some(source), None),
            Ok(None) => (None, None, None),
            Err(ApiError::InvalidToken(why)) => (None, None, Some(Refused(why))),
            Err(err) => return err.into_response(),
        };
    let peer = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(wait) = state.rate_limits.check(principal.as_ref(), peer) {
        let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return ApiError::RateLimited {
            retry_after_secs: retry_after_secs.max(1),
        }
        .into_response();
    }
    let extensions = request.extensions_mut();
    extensions.insert(Checked(principal));
    if let Some(source) = source {
        extensions.insert(source);
    }
    if let Some(refused) = refused {
        extensions.insert(refused);
    }
    next.run(request).await
}
