//! What `serve` reads from the environment besides the secrets: the address, whether
//! payments are simulated, and every limit and timeout. Parsed by clap (each setting is
//! also a flag, and `--help` lists them with their defaults); secrets are read by
//! `autokey_shared::config` and never appear here.

use std::{net::IpAddr, time::Duration};

use clap::{ArgAction, Args, builder::BoolishValueParser};

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// HTTP port.
    #[arg(long, env = "PORT", default_value_t = 4000)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0")]
    pub bind_addr: IpAddr,
    /// Whether POST /orders/:id/pay exists: payments without a payment provider, for
    /// development and tests only (the api warns at start when on).
    #[arg(long, env = "SIMULATED_PAYMENTS", default_value = "false",
          value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub simulated_payments: bool,
    /// Whether webhook endpoints may name private, loopback or link-local addresses
    /// (tests and development only; never where the network has internal services).
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE_URLS", default_value = "false",
          value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub webhook_allow_private_urls: bool,
    #[command(flatten)]
    pub oidc: crate::auth::oidc::settings::OidcArgs,
    #[command(flatten)]
    pub limits: Limits,
}

/// Abuse limits, load shedding and timeouts.
#[derive(Args, Debug, Clone)]
pub struct Limits {
    /// Requests per second per buyer, seller or admin token (one person).
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", default_value_t = 20)]
    pub rate_limit_per_second: u32,
    /// Requests a buyer, seller or admin token may send at once above its rate.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 60)]
    pub rate_limit_burst: u32,
    /// Requests per second per storefront token (one busy server, many customers).
    #[arg(
        long,
        env = "RATE_LIMIT_STOREFRONT_PER_SECOND",
        default_value_t = 20_000
    )]
    pub rate_limit_storefront_per_second: u32,
    /// Burst of a storefront token.
    #[arg(long, env = "RATE_LIMIT_STOREFRONT_BURST", default_value_t = 40_000)]
    pub rate_limit_storefront_burst: u32,
    /// Requests per second per client address without a valid token (webhooks, health,
    /// docs, bad tokens). Keyed by the connection's address, never by a header.
    #[arg(long, env = "RATE_LIMIT_ANONYMOUS_PER_SECOND", default_value_t = 100)]
    pub rate_limit_anonymous_per_second: u32,
    /// Burst of a client address without a valid token.
    #[arg(long, env = "RATE_LIMIT_ANONYMOUS_BURST", default_value_t = 200)]
    pub rate_limit_anonymous_burst: u32,
    /// Requests handled at once by this process; beyond, 503 `unavailable` at once
    /// (load shedding) instead of a queue that grows.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,
    /// Key uploads streamed at once by this process, all sellers together (beyond: 503).
    #[arg(long, env = "MAX_CONCURRENT_UPLOADS", default_value_t = 8)]
    pub max_concurrent_uploads: usize,
    /// Key uploads streamed at once per seller (beyond: 429).
    #[arg(long, env = "MAX_CONCURRENT_UPLOADS_PER_SELLER", default_value_t = 2)]
    pub max_concurrent_uploads_per_seller: usize,
    /// Seconds a request may take (503 beyond; a fulfill long-poll waits at most 30). An
    /// upload may take longer while its body keeps arriving: it fails after this many
    /// seconds without data.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 40)]
    pub request_timeout_secs: u64,
    /// Seconds a client has to send a request's headers before its connection is closed
    /// (slow clients cannot hold connections open).
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// Milliseconds a database statement of the api may run.
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_MS", default_value_t = 10_000)]
    pub db_statement_timeout_ms: u64,
    /// Milliseconds a statement may wait for a row lock.
    #[arg(long, env = "DB_LOCK_TIMEOUT_MS", default_value_t = 5_000)]
    pub db_lock_timeout_ms: u64,
    /// Milliseconds a transaction may sit idle before the server ends it.
    #[arg(
        long,
        env = "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub db_idle_in_transaction_timeout_ms: u64,
    /// Database connections of this process.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 32)]
    pub db_max_connections: u32,
    /// Milliseconds a request waits for a database connection before 503 (also how fast
    /// the api answers 503 while the database is down).
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2_000)]
    pub db_acquire_timeout_ms: u64,
}

impl Limits {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs.max(1))
    }

    /// Session settings of the api's connections.
    pub fn session(&self) -> autokey_shared::db::SessionLimits {
        autokey_shared::db::SessionLimits {
            statement_timeout: Duration::from_millis(self.db_statement_timeout_ms),
            lock_timeout: Duration::from_millis(self.db_lock_timeout_ms),
            idle_in_transaction_timeout: Duration::from_millis(
                self.db_idle_in_transaction_timeout_ms,
            ),
            acquire_timeout: Duration::from_millis(self.db_acquire_timeout_ms.max(1)),
            max_connections: self.db_max_connections.max(2),
        }
    }

    /// Limits that never get in the way (tests and benchmarks that measure something else).
    pub fn generous() -> Self {
        Limits {
            rate_limit_per_second: 1_000_000,
            rate_limit_burst: 1_000_000,
            rate_limit_storefront_per_second: 1_000_000,
            rate_limit_storefront_burst: 1_000_000,
            rate_limit_anonymous_per_second: 1_000_000,
            rate_limit_anonymous_burst: 1_000_000,
            max_concurrent_requests: 100_000,
            max_concurrent_uploads: 64,
            max_concurrent_uploads_per_seller: 64,
            request_timeout_secs: 60,
            header_read_timeout_secs: 10,
            db_statement_timeout_ms: 30_000,
            db_lock_timeout_ms: 10_000,
            db_idle_in_transaction_timeout_ms: 60_000,
            db_max_connections: 8,
            db_acquire_timeout_ms: 5_000,
        }
    }
}
