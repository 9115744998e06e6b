//! The `autokey-api` command line (OPERATIONS.md): serve, migrate, token, keygen.

use std::{net::SocketAddr, sync::Arc};

use autokey_shared::{
    config::{self, ConfigError, DatabaseConfig},
    db,
    model::Role,
    process::{self, exit_code},
    store::tokens,
};
use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::{AppState, Settings, auth::cache::TokenCache, fulfillment_wait::FulfillmentWaiter};

#[derive(Parser)]
#[command(
    name = "autokey-api",
    version,
    about = "autokey HTTP API: sells and delivers license keys.",
    long_about = "autokey HTTP API: records orders and enqueues fulfillment jobs in PostgreSQL.\n\n\
Configuration comes from the environment (a .env file in the working directory is read too):\n\
  DATABASE_URL             PostgreSQL URL (required)\n\
  PORT / BIND_ADDR         HTTP port (default 4000) and address (default 0.0.0.0) of `serve`\n\
  ENCRYPTION_KEY           64 hex chars: encrypts newly uploaded keys (required for serve)\n\
  ENCRYPTION_KEY_ID        label stored beside each ciphertext (default k1)\n\
  ENCRYPTION_KEYS_RETIRED  id:hex,id:hex: older keys still able to decrypt\n\
  FINGERPRINT_KEY          64 hex chars: HMAC key of the dedupe fingerprint (required for serve)\n\
  PAYMENT_WEBHOOK_SECRET   whsec_<base64>: Standard Webhooks signing secret\n\
  SIMULATED_PAYMENTS       true/false: whether POST /orders/:id/pay exists (default true)\n\
  RUST_LOG, LOG_FORMAT     log filter; LOG_FORMAT=json for JSON lines"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the HTTP front (the default).
    Serve,
    /// Apply every pending migration (the project's and the job queue's); idempotent.
    Migrate,
    /// Create or revoke API tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Print fresh secrets in .env format.
    Keygen,
}

#[derive(Subcommand)]
pub enum TokenAction {
    /// Print a new token alone on stdout (a new subject id, when generated, goes to stderr).
    Create {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The seller or buyer id this token acts as (generated when omitted).
        #[arg(long)]
        subject: Option<Uuid>,
    },
    /// Revoke a token by its id.
    Revoke { id: Uuid },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
        .map_err(|_| format!("unknown role {s:?} (expected seller, buyer, storefront or admin)"))
}

/// Runs the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    config::load_dotenv();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Keygen => {
            print!("{}", config::generate_env_secrets());
            0
        }
        Command::Migrate => exit_code(migrate().await),
        Command::Token { action } => exit_code(token(action).await),
        Command::Serve => exit_code(serve().await),
    }
}

fn cfg_err(e: ConfigError) -> String {
    e.to_string()
}

async fn connect(max: u32) -> Result<sqlx::PgPool, String> {
    let cfg = DatabaseConfig::from_env().map_err(cfg_err)?;
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

async fn token(action: TokenAction) -> Result<(), String> {
    let pool = connect(2).await?;
    let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
    match action {
        TokenAction::Create { role, subject } => {
            if subject.is_some() && !role.has_subject() {
                return Err(format!(
                    "--subject is only for seller and buyer tokens, not {role}"
                ));
            }
            let created = tokens::create_token(&mut conn, role, subject)
                .await
                .map_err(|e| e.to_string())?;
            if subject.is_none()
                && let Some(s) = created.subject
            {
                eprintln!("{role} id: {s}");
            }
            eprintln!("token id: {}", created.id);
            println!("{}", created.token);
            Ok(())
        }
        TokenAction::Revoke { id } => {
            if tokens::revoke_token(&mut conn, id)
                .await
                .map_err(|e| e.to_string())?
            {
                eprintln!("token {id} revoked");
                Ok(())
            } else {
                Err(format!("no live token with id {id}"))
            }
        }
    }
}

/// Reads every setting `serve` needs; the error is the one line to print.
pub fn settings_from_env() -> Result<(Arc<autokey_shared::vault::Vault>, Settings), String> {
    let vault = config::vault_from_env().map_err(cfg_err)?;
    let settings = Settings {
        simulated_payments: config::bool_from_env("SIMULATED_PAYMENTS", true).map_err(cfg_err)?,
        webhook_secret: config::webhook_secret_from_env().map_err(cfg_err)?,
    };
    Ok((Arc::new(vault), settings))
}

async fn serve() -> Result<(), String> {
    autokey_shared::telemetry::init("info,sqlx=warn");
    let db_cfg = DatabaseConfig::from_env().map_err(cfg_err)?;
    let (vault, settings) = settings_from_env()?;
    let port = config::u64_from_env("PORT", 4000).map_err(cfg_err)?;
    let port = u16::try_from(port)
        .map_err(|_| "configuration error: PORT is malformed: expected 0-65535".to_string())?;
    let bind = config::optional("BIND_ADDR").unwrap_or_else(|| "0.0.0.0".into());
    let addr: SocketAddr = format!("{bind}:{port}").parse().map_err(|_| {
        "configuration error: BIND_ADDR is malformed: expected an IP address".to_string()
    })?;
    let pool = db::connect(&db_cfg, 32)
        .await
        .map_err(|e| format!("cannot connect to the database (DATABASE_URL): {e}"))?;
    let state = AppState {
        waiter: FulfillmentWaiter::start(pool.clone()),
        tokens: TokenCache::start(pool.clone()),
        pool,
        vault,
        settings: Arc::new(settings),
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "autokey-api listening");
    crate::serve(listener, state, process::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}
