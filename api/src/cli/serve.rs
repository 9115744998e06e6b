//! `autokey-api serve`: checks the configuration against the database, then runs the
//! HTTP front until SIGTERM/SIGINT.

use std::{net::SocketAddr, sync::Arc};

use autokey_shared::{
    config::{self, ConfigError, DatabaseConfig},
    db, process,
    vault::Vault,
};

use crate::{AppState, Settings, settings::ServeArgs};

fn cfg_err(e: ConfigError) -> String {
    e.to_string()
}

/// Reads every secret `serve` needs; the error is the one line to print.
pub fn settings_from_env(args: &ServeArgs) -> Result<(Arc<Vault>, Settings), String> {
    let vault = config::vault_from_env().map_err(cfg_err)?;
    let settings = Settings {
        simulated_payments: args.simulated_payments,
        webhook_allow_private_urls: args.webhook_allow_private_urls,
        webhook_secret: config::webhook_secret_from_env().map_err(cfg_err)?,
        metrics_token: config::metrics_token_from_env().map_err(cfg_err)?,
        oidc: args.oidc.config()?,
        limits: args.limits.clone(),
    };
    Ok((Arc::new(vault), settings))
}

pub async fn serve(args: ServeArgs) -> Result<(), String> {
    autokey_shared::telemetry::init("info,sqlx=warn");
    let db_cfg = DatabaseConfig::from_env().map_err(cfg_err)?;
    let (vault, settings) = settings_from_env(&args)?;
    let addr = SocketAddr::new(args.bind_addr, args.port);
    let pool = db::connect_limited(&db_cfg, args.limits.session())
        .await
        .map_err(|e| format!("cannot connect to the database (DATABASE_URL): {e}"))?;
    refuse_unknown_key_ids(&pool, &vault).await?;
    if settings.simulated_payments {
        tracing::warn!(
            "SIMULATED_PAYMENTS is on: any buyer or storefront token can pay its orders without \
             a payment provider (POST /orders/:id/pay). Never in production."
        );
    }
    let state = AppState::new(pool, vault, settings);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "autokey-api listening");
    crate::serve(listener, state, process::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

/// Start-up refuses a configuration that cannot decrypt every stored key (a retired key
/// dropped too early, a typo in an id): one clear line, before any request fails.
async fn refuse_unknown_key_ids(pool: &sqlx::PgPool, vault: &Vault) -> Result<(), String> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| format!("cannot connect to the database (DATABASE_URL): {e}"))?;
    let stored = autokey_shared::rotation::sealing_key_ids(&mut conn)
        .await
        .map_err(|e| format!("cannot read the stored keys' encryption key ids: {e}"))?;
    let unknown: Vec<String> = stored.into_iter().filter(|id| !vault.knows(id)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(format!(
        "configuration error: ENCRYPTION_KEYS_RETIRED is missing key id {} that stored keys \
         are sealed with; add it back (id:hex) until `autokey-api keys reencrypt` reports 0 \
         keys under it",
        unknown.join(", ")
    ))
}
