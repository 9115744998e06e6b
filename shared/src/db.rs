//! Connection pool, migrations (ours and the job queue's) and readiness.

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::DatabaseConfig;

static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

pub async fn connect(config: &DatabaseConfig, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = config.url.expose_secret().parse()?;
    connect_with(options, max_connections).await
}

/// Bounds on what one process may ask of the database: every connection's statement,
/// lock and idle-in-transaction timeouts (server-side, so they hold whatever the code
/// does), the pool's size and how long a caller waits for a connection.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    pub idle_in_transaction_timeout: Duration,
    pub acquire_timeout: Duration,
    pub max_connections: u32,
}

/// A pool whose connections carry `limits` as session settings.
pub async fn connect_limited(
    config: &DatabaseConfig,
    limits: SessionLimits,
) -> Result<PgPool, sqlx::Error> {
    connect_limited_with(config.url.expose_secret().parse()?, limits).await
}

pub async fn connect_limited_with(
    options: PgConnectOptions,
    limits: SessionLimits,
) -> Result<PgPool, sqlx::Error> {
    let ms = |d: Duration| d.as_millis().to_string();
    let options = options.options(PLANNER).options([
        ("statement_timeout", ms(limits.statement_timeout)),
        ("lock_timeout", ms(limits.lock_timeout)),
        (
            "idle_in_transaction_session_timeout",
            ms(limits.idle_in_transaction_timeout),
        ),
    ]);
    PgPoolOptions::new()
        .max_connections(limits.max_connections)
        .min_connections(1)
        .acquire_timeout(limits.acquire_timeout)
        .connect_with(options.application_name("autokey"))
        .await
}

pub async fn connect_with(
    options: PgConnectOptions,
    max_connections: u32,
) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.options(PLANNER).application_name("autokey"))
        .await
}

/// The planner settings of every connection (`tests/tests/plans.rs` checks the hot
/// statements under exactly these).
///
/// `plan_cache_mode`: each prepared statement is planned once (a generic plan) and kept.
/// With PostgreSQL's default, a statement with parameters is planned again on every
/// execution until five custom plans have been made, and for as long after that as the
/// custom plans look cheaper, which for our larger statements (a delivery's write, a pay
/// with its event, an order read with its keys, and the statements of the triggers they
/// fire) they always do. Measured (`autokey-bench steady --rates 200`): planning was the
/// largest single share of PostgreSQL's CPU, and generic plans halved the pay -> fulfilled
/// latency (db p50 24 -> 11 ms). The audit search, the one statement whose index depends
/// on its parameters' values, asks for a custom plan itself (`store::audit::page`).
///
/// `enable_seqscan = off`: a generic plan is kept until something invalidates it (DDL, a
/// VACUUM or ANALYZE of a table it reads), so the plans a service makes in its first
/// seconds on a new database, on empty tables, are the ones it runs a launch with; on an
/// empty table a sequential scan is the cheapest path, and the pay, the delivery's write
/// and the upload's fingerprint check kept theirs as the tables grew to 50k rows
/// (`tests/tests/plans.rs`, plans made on empty tables). Off, the planner takes an index
/// wherever one serves the statement (a table no index serves is still scanned).
pub const PLANNER: [(&str, &str); 2] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
];

/// Our migrations keep their own bookkeeping table, so they and the job queue's
/// (in sqlx's default table) never mistake each other's rows for missing files.
pub const MIGRATIONS_TABLE: &str = "autokey_schema_migrations";

fn project_migrator() -> Migrator {
    let mut m = Migrator::with_migrations(MIGRATOR.iter().cloned().collect());
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    m
}

/// A digest of the embedded migrations (ours and the job queue's): names a migrated
/// template database in tests, so a schema change never reuses a stale one.
pub fn migrations_fingerprint() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for m in MIGRATOR
        .iter()
        .chain(apalis_postgres::PostgresStorage::migrations().iter())
    {
        h.update(m.version.to_le_bytes());
        h.update(&m.checksum);
    }
    hex::encode(&h.finalize()[..8])
}

/// Applies every pending migration: the job queue's first, then the project's.
/// Idempotent, and safe while old processes still serve (sqlx holds an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    apalis_postgres::PostgresStorage::migrations()
        .run(pool)
        .await?;
    project_migrator().run(pool).await
}

/// True when the database answers and every project migration is applied.
pub async fn is_ready(pool: &PgPool) -> bool {
    let expected = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .count() as i64;
    let applied: Result<i64, _> = sqlx::query_scalar(
        "SELECT count(*) FROM autokey_schema_migrations WHERE success AND version = ANY($1)",
    )
    .bind(MIGRATOR.iter().map(|m| m.version).collect::<Vec<_>>())
    .fetch_one(pool)
    .await;
    matches!(applied, Ok(n) if n == expected)
}

/// Begins a transaction in which waiting on a lock longer than `lock_timeout` fails
/// (retryably) instead of holding a worker slot hostage; the setting travels with BEGIN,
/// so it costs no round trip of its own.
pub async fn begin_with_lock_timeout(
    pool: &PgPool,
    lock_timeout: Duration,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let millis = lock_timeout.as_millis().clamp(1, i32::MAX as u128);
    pool.begin_with(sqlx::AssertSqlSafe(format!(
        "BEGIN; SET LOCAL lock_timeout = '{millis}ms'"
    )))
    .await
}
