//! What every request handler shares.

use std::sync::Arc;

use autokey_shared::{jobs::lane::LaneAnnouncer, vault::Vault};
use secrecy::SecretBox;
use sqlx::PgPool;

use crate::{
    auth::{cache::TokenCache, oidc::JwtVerifier},
    fulfillment_wait::FulfillmentWaiter,
    limits::{rate::RateLimits, uploads::UploadSlots},
    orders::{intake::Intake, lookup::OrderLookups},
    routes::metrics::GaugeCache,
    settings::Limits,
};

/// One `Arc`: axum clones the state for every extractor and middleware of every request,
/// and a clone of the fields themselves (a dozen reference counts, the channels' sender
/// counts among them) showed up in the api's profile under load.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub pool: PgPool,
    pub vault: Arc<Vault>,
    pub settings: Arc<Settings>,
    pub waiter: FulfillmentWaiter,
    /// Tells the workers' fast lanes about the jobs of committed pays.
    pub lane: LaneAnnouncer,
    /// Order inserts and simulated pays, written in groups under load.
    pub intake: Intake,
    /// Order lookups of concurrent reads, one statement per group.
    pub lookups: OrderLookups,
    pub tokens: TokenCache,
    /// JWTs of the configured OpenID providers (None without OIDC_ISSUERS).
    pub oidc: Option<Arc<JwtVerifier>>,
    pub rate_limits: Arc<RateLimits>,
    pub uploads: Arc<UploadSlots>,
    pub gauges: Arc<GaugeCache>,
}

impl AppState {
    /// The state of one api process on `pool`.
    pub fn new(pool: PgPool, vault: Arc<Vault>, settings: Settings) -> Self {
        let limits = &settings.limits;
        // Installs the process's recorder before the first request counts anything.
        autokey_shared::metrics::handle();
        let lane = LaneAnnouncer::start(pool.clone());
        Self(Arc::new(Shared {
            waiter: FulfillmentWaiter::start(pool.clone()),
            intake: Intake::start(pool.clone(), lane.clone()),
            lookups: OrderLookups::start(pool.clone()),
            lane,
            tokens: TokenCache::start(pool.clone()),
            oidc: settings.oidc.clone().map(JwtVerifier::start),
            rate_limits: RateLimits::new(limits),
            uploads: UploadSlots::new(
                limits.max_concurrent_uploads,
                limits.max_concurrent_uploads_per_seller,
            ),
            gauges: Arc::default(),
            pool,
            vault,
            settings: Arc::new(settings),
        }))
    }
}

pub struct Settings {
    /// Whether `POST /orders/:id/pay` exists (SIMULATED_PAYMENTS).
    pub simulated_payments: bool,
    /// The decoded Standard Webhooks secret; webhooks are refused without one.
    pub webhook_secret: Option<SecretBox<Vec<u8>>>,
    /// Whether webhook endpoints may name private addresses (WEBHOOK_ALLOW_PRIVATE_URLS).
    pub webhook_allow_private_urls: bool,
    /// The token Prometheus presents to `GET /metrics` (METRICS_TOKEN).
    pub metrics_token: Option<SecretBox<String>>,
    /// Sign-in with OpenID Connect providers (OIDC_ISSUERS...).
    pub oidc: Option<crate::auth::oidc::settings::OidcConfig>,
    pub limits: Limits,
}
