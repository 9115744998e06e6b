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

pub async fn connect_with(
    options: PgConnectOptions,
    max_connections: u32,
) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.application_name("autokey"))
        .await
}

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
