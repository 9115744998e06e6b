//! The `autokey-api` command line (OPERATIONS.md): serve, migrate, token, keys, keygen,
//! openapi, and the seller's `keys upload` and `pools` over the HTTP API.

mod backup;
mod keys;
mod seller;
mod serve;
mod token;

use autokey_shared::{
    config::{self, DatabaseConfig},
    db,
    process::exit_code,
};
use clap::{Parser, Subcommand};

pub use serve::{serve, settings_from_env};

use crate::settings::ServeArgs;

#[derive(Parser)]
#[command(
    name = "autokey-api",
    version,
    about = "autokey HTTP API: sells and delivers license keys.",
    long_about = "autokey HTTP API: records orders and enqueues fulfillment jobs in PostgreSQL.\n\n\
Secrets and the database come from the environment only (a .env file in the working directory is read too):\n\
  DATABASE_URL             PostgreSQL URL (required); add ?sslmode=verify-full to require TLS\n\
  ENCRYPTION_KEY           64 hex chars: encrypts newly uploaded keys (required for serve)\n\
  ENCRYPTION_KEY_ID        label stored beside each ciphertext (default k1)\n\
  ENCRYPTION_KEYS_RETIRED  id:hex,id:hex: older keys still able to decrypt\n\
  FINGERPRINT_KEY          64 hex chars: HMAC key of the dedupe fingerprint (required for serve)\n\
  PAYMENT_WEBHOOK_SECRET   whsec_<base64>: Standard Webhooks signing secret\n\
  METRICS_TOKEN            bearer token Prometheus presents to GET /metrics (admin tokens work too)\n\
  RUST_LOG, LOG_FORMAT     log filter; LOG_FORMAT=json for JSON lines\n\n\
The seller commands (keys upload, pools) use the HTTP API only: AUTOKEY_URL (default\n\
http://localhost:4000) and AUTOKEY_TOKEN (a seller token), or --url and --token.\n\n\
Every other setting of `serve` (SIMULATED_PAYMENTS, PORT, OIDC_* sign-in, rate limits, timeouts...) is listed with its\n\
environment variable and default by `autokey-api serve --help`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the HTTP front (the default). SIMULATED_PAYMENTS (default false) turns on
    /// POST /orders/:id/pay for development.
    Serve(Box<ServeArgs>),
    /// Apply every pending migration (the project's and the job queue's); idempotent.
    Migrate,
    /// Create or revoke API tokens.
    Token {
        #[command(subcommand)]
        action: token::TokenAction,
    },
    /// Keys: a seller's upload over the HTTP API; the operator's re-encryption and
    /// encrypted backups on the database.
    Keys {
        #[command(subcommand)]
        action: keys::KeysAction,
    },
    /// Print fresh secrets in .env format.
    Keygen,
    /// Print the OpenAPI document served at /api/openapi.json (committed as
    /// docs/openapi.json: `autokey-api openapi > docs/openapi.json`).
    Openapi,
    /// Print the caller's key pools and their counts as a table, over the HTTP API
    /// (AUTOKEY_URL, AUTOKEY_TOKEN).
    Pools {
        #[command(flatten)]
        remote: seller::Remote,
    },
}

/// Runs the CLI; returns the process exit code. (`.env` was read before parsing.)
pub async fn run(cli: Cli) -> i32 {
    match cli.command {
        Some(Command::Keygen) => {
            print!("{}", config::generate_env_secrets());
            0
        }
        Some(Command::Openapi) => {
            print!("{}", crate::openapi::document_json());
            0
        }
        Some(Command::Migrate) => exit_code(migrate().await),
        Some(Command::Token { action }) => exit_code(token::run(action).await),
        Some(Command::Keys { action }) => exit_code(keys::run(action).await),
        Some(Command::Pools { remote }) => exit_code(seller::pools(remote).await),
        Some(Command::Serve(args)) => exit_code(serve(*args).await),
        None => exit_code(serve(config::args_from_env::<ServeArgs>("serve")).await),
    }
}

async fn connect(max: u32) -> Result<sqlx::PgPool, String> {
    let cfg = DatabaseConfig::from_env().map_err(|e| e.to_string())?;
    db::connect(&cfg, max)
        .await
        .map_err(|e| format!("cannot connect to the database (DATABASE_URL): {e}"))
}

async fn migrate() -> Result<(), String> {
    autokey_shared::telemetry::init("info");
    let pool = connect(2).await?;
    db::migrate(&pool)
        .await
        .map_err(|e| format!("migration failed: {e}"))?;
    eprintln!("migrations applied");
    Ok(())
}
