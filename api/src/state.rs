//! What every request handler shares.

use std::sync::Arc;

use autokey_shared::vault::Vault;
use secrecy::SecretBox;
use sqlx::PgPool;

use crate::{auth::cache::TokenCache, fulfillment_wait::FulfillmentWaiter, settings::Limits};

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub vault: Arc<Vault>,
    pub settings: Arc<Settings>,
    pub waiter: FulfillmentWaiter,
    pub tokens: TokenCache,
}

pub struct Settings {
    /// Whether `POST /orders/:id/pay` exists (SIMULATED_PAYMENTS).
    pub simulated_payments: bool,
    /// The decoded Standard Webhooks secret; webhooks are refused without one.
    pub webhook_secret: Option<SecretBox<Vec<u8>>>,
    /// The token Prometheus presents to `GET /metrics` (METRICS_TOKEN).
    pub metrics_token: Option<SecretBox<String>>,
    pub limits: Limits,
}
