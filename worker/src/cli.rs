//! The `autokey-worker` command line.

use autokey_shared::{
    config::{self, DatabaseConfig},
    db, jobs, process,
};
use clap::{Parser, Subcommand};

use crate::runner::WorkerConfig;

#[derive(Parser)]
#[command(
    name = "autokey-worker",
    version,
    about = "autokey worker: fulfills paid orders and serves backorders until SIGTERM/SIGINT.",
    long_about = "autokey worker: claims fulfillment jobs from PostgreSQL (apalis), locks available keys \
(FOR UPDATE SKIP LOCKED), delivers them and moves orders to FULFILLED; serves backordered orders when \
keys arrive; retries transient failures with durable exponential backoff; prunes finished jobs. \
A job serves up to 256 waiting orders of its pool in one transaction, and a new job is run the moment \
it is announced (the fast lane), in the same transaction that marks it done.\n\n\
Run as many processes as you like, on one or many machines: each start has a unique identity, and the \
jobs of a process that dies are picked up by the others within seconds.\n\n\
On SIGTERM or SIGINT it stops taking jobs, lets running ones finish, and exits 0.\n\n\
Outgoing webhooks (events signed per Standard Webhooks) are sent too when ENCRYPTION_KEY (and \
FINGERPRINT_KEY, ENCRYPTION_KEYS_RETIRED) are set as for the api: the endpoints' secrets are sealed with them.\n\n\
Metrics: with METRICS_PORT set, GET /metrics on that port (Prometheus text; the bearer METRICS_TOKEN \
when set).\n\n\
Configuration: DATABASE_URL (required); RUST_LOG and LOG_FORMAT=json for logs; a .env file is read too."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Jobs processed at once.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 8, global = true)]
    pub concurrency: usize,
    /// Name prefix of this process's workers (a unique suffix is added per start).
    #[arg(
        long,
        env = "WORKER_NAME",
        default_value = "autokey-worker",
        global = true
    )]
    pub name: String,
    /// Whether outgoing webhooks may go to private, loopback or link-local addresses
    /// (tests and development only).
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE_URLS", default_value = "false", global = true,
          value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub webhook_allow_private_urls: bool,
    /// Port of this process's own GET /metrics (Prometheus text); not served when unset.
    #[arg(long, env = "METRICS_PORT", global = true)]
    pub metrics_port: Option<u16>,
    /// Address the metrics port listens on.
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0", global = true)]
    pub bind_addr: std::net::IpAddr,
    /// Bearer token GET /metrics requires (METRICS_TOKEN; the api's too). Without it the
    /// worker's metrics are open to whoever reaches the port.
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true, global = true)]
    pub metrics_token: Option<String>,
    /// Minutes an unpaid order of a MANUAL offer holds its units of the seller's stock;
    /// after that, maintenance cancels it (order.canceled) and the units are for sale again.
    #[arg(long, env = "MANUAL_ORDER_HOLD_MINUTES", default_value_t = 1440,
          value_parser = clap::value_parser!(u64).range(1..=525_600), global = true)]
    pub manual_order_hold_minutes: u64,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the workers (the default).
    Run,
    /// Make every dead job (out of attempts, or aborted) runnable again.
    RetryDead,
}

/// Runs the CLI (`.env` was read before parsing); returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    autokey_shared::telemetry::init(
        "info,sqlx=warn,apalis=warn,apalis_postgres=warn,apalis_core=warn",
    );
    let result: Result<(), String> = async {
        let db_cfg = DatabaseConfig::from_env().map_err(|e| e.to_string())?;
        let pool = db::connect(&db_cfg, (cli.concurrency as u32) * 3 + 8)
            .await
            .map_err(|e| format!("cannot connect to the database (DATABASE_URL): {e}"))?;
        match cli.command.unwrap_or(Command::Run) {
            Command::RetryDead => {
                let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
                let n = jobs::queue::retry_dead(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                eprintln!("{n} dead jobs made runnable again");
                Ok(())
            }
            Command::Run => {
                // The vault opens webhook endpoints' secrets; without ENCRYPTION_KEY the
                // worker still fulfills, but sends no webhook.
                let vault = match std::env::var_os("ENCRYPTION_KEY") {
                    Some(_) => Some(std::sync::Arc::new(
                        config::vault_from_env().map_err(|e| e.to_string())?,
                    )),
                    None => None,
                };
                let mut config = WorkerConfig {
                    concurrency: cli.concurrency.max(1),
                    name: cli.name,
                    vault,
                    manual_hold: std::time::Duration::from_secs(cli.manual_order_hold_minutes * 60),
                    ..Default::default()
                };
                config.webhooks.allow_private = cli.webhook_allow_private_urls;
                if let Some(port) = cli.metrics_port {
                    let addr = std::net::SocketAddr::new(cli.bind_addr, port);
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|e| format!("cannot listen on {addr} (METRICS_PORT): {e}"))?;
                    if cli.metrics_token.is_none() {
                        tracing::warn!("METRICS_TOKEN is not set: the worker's /metrics is open");
                    }
                    let token = cli.metrics_token.clone().map(secrecy::SecretString::from);
                    let pool = pool.clone();
                    tokio::spawn(async move {
                        if let Err(e) = crate::metrics::serve(listener, pool, token).await {
                            tracing::error!(error = %e, "the metrics server stopped");
                        }
                    });
                    tracing::info!(%addr, "worker metrics at GET /metrics");
                }
                tracing::info!(concurrency = config.concurrency, "autokey-worker starting");
                crate::runner::run(pool, config, process::shutdown_signal())
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!("autokey-worker stopped");
                Ok(())
            }
        }
    }
    .await;
    process::exit_code(result)
}
