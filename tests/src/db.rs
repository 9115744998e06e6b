//! A fresh database per test, cloned from a template migrated once per migration set.

use std::str::FromStr;

use sqlx::{Connection, PgConnection, PgPool, postgres::PgConnectOptions};
use uuid::Uuid;

/// The server the tests use: AUTOKEY_TEST_DATABASE_URL, else DATABASE_URL, else the local default.
pub fn server_url() -> String {
    std::env::var("AUTOKEY_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into())
}

fn options(db: &str) -> PgConnectOptions {
    PgConnectOptions::from_str(&server_url())
        .expect("test database URL")
        .database(db)
}

fn template_name() -> String {
    format!(
        "autokey_test_tmpl_{}",
        autokey_shared::db::migrations_fingerprint()
    )
}

async fn admin() -> PgConnection {
    PgConnection::connect_with(&options("postgres")).await.expect(
        "cannot reach PostgreSQL for tests; run ./scripts/test.sh or set AUTOKEY_TEST_DATABASE_URL",
    )
}

async fn ensure_template(admin: &mut PgConnection, name: &str) {
    // Serialize template creation across concurrently running test processes.
    sqlx::query("SELECT pg_advisory_lock(727274)")
        .execute(&mut *admin)
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut *admin)
            .await
            .unwrap();
    if !exists {
        let building = format!("{name}_building");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {building}"
        )))
        .execute(&mut *admin)
        .await
        .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {building}")))
            .execute(&mut *admin)
            .await
            .unwrap();
        let pool = autokey_shared::db::connect_with(options(&building), 2)
            .await
            .unwrap();
        autokey_shared::db::migrate(&pool)
            .await
            .expect("migrations apply to a fresh database");
        pool.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {building} RENAME TO {name}"
        )))
        .execute(&mut *admin)
        .await
        .unwrap();
    }
    sqlx::query("SELECT pg_advisory_unlock(727274)")
        .execute(&mut *admin)
        .await
        .unwrap();
}

/// Creates a migrated, empty database for one test and returns its name and a pool.
pub async fn fresh_database() -> (String, PgPool) {
    // Small pools: tests run in parallel against one server (max_connections is often 100).
    fresh_database_with(6).await
}

pub async fn fresh_database_with(max_connections: u32) -> (String, PgPool) {
    let mut admin = admin().await;
    let template = template_name();
    ensure_template(&mut admin, &template).await;
    let name = format!("autokey_test_{}", Uuid::new_v4().simple());
    let mut tries = 0;
    loop {
        let created = sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE {template}"
        )))
        .execute(&mut admin)
        .await;
        match created {
            Ok(_) => break,
            // Another test is cloning the same template at this instant.
            Err(e) if tries < 50 && e.to_string().contains("being accessed by other users") => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50 + 20 * tries)).await;
            }
            Err(e) => panic!("cannot create test database: {e}"),
        }
    }
    let pool = autokey_shared::db::connect_with(options(&name), max_connections)
        .await
        .unwrap();
    (name, pool)
}

/// Another pool on an existing test database (a worker's own, as in production).
pub async fn pool_for(name: &str, max_connections: u32) -> PgPool {
    autokey_shared::db::connect_with(options(name), max_connections)
        .await
        .unwrap()
}

/// A pool for an api process on an existing test database, with its session limits.
pub async fn api_pool_for(name: &str, limits: autokey_shared::db::SessionLimits) -> PgPool {
    autokey_shared::db::connect_limited_with(options(name), limits)
        .await
        .unwrap()
}

/// An empty database (no migrations), for tests of `migrate`. Returns its URL.
pub async fn empty_database() -> String {
    let mut admin = admin().await;
    let name = format!("autokey_test_{}", Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    database_url(&name)
}

/// The URL of database `name` on the test server (its query, `sslmode` say, kept).
pub fn database_url(name: &str) -> String {
    let server = server_url();
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b.to_owned(), format!("?{q}")),
        None => (server.clone(), String::new()),
    };
    let base = base
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or(base);
    format!("{base}/{name}{query}")
}
