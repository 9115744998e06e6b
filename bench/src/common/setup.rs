//! The database, secrets and settings a run starts from.

use std::{collections::HashMap, path::PathBuf, str::FromStr};

use autokey_shared::vault::{KeyMaterial, Vault};
use rand::RngCore;
use sqlx::{Connection, Executor, PgConnection, PgPool, postgres::PgConnectOptions};
use uuid::Uuid;

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub fn err(msg: impl Into<String>) -> Box<dyn std::error::Error + Send + Sync> {
    msg.into().into()
}

/// Settings shared by every scenario.
#[derive(Clone, Debug)]
pub struct Env {
    /// A URL to the server's maintenance database.
    pub server_url: String,
    /// Where autokey-api and autokey-worker (release builds) are.
    pub bin_dir: PathBuf,
    /// The workspace root (results go to bench-results/ under it).
    pub root: PathBuf,
    /// Settings given to every database the bench creates (`ALTER DATABASE .. SET`), for
    /// experiments; empty by default.
    pub db_settings: Vec<(String, String)>,
    /// Extra environment of every api the bench starts (after its own), for experiments.
    pub api_env: Vec<(String, String)>,
}

impl Env {
    pub fn options(&self, db: &str) -> Res<PgConnectOptions> {
        Ok(PgConnectOptions::from_str(&self.server_url)?.database(db))
    }

    pub fn db_url(&self, db: &str) -> String {
        // The server URL with its database replaced; its query (a socket `host=`, say) kept.
        let (base, query) = match self.server_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (self.server_url.as_str(), String::new()),
        };
        let (prefix, _) = base.rsplit_once('/').unwrap_or((base, ""));
        format!("{prefix}/{db}{query}")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        let d = self.root.join("bench-results").join("tmp");
        let _ = std::fs::create_dir_all(&d);
        d
    }

    pub fn bin(&self, name: &str) -> Res<PathBuf> {
        let p = self.bin_dir.join(name);
        if !p.exists() {
            return Err(err(format!(
                "{} is missing: build it first with `cargo build --release --bins --locked`",
                p.display()
            )));
        }
        Ok(p)
    }
}

/// A fresh, migrated database on the server; dropped by [`BenchDb::drop_now`].
pub struct BenchDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    env: Env,
}

impl BenchDb {
    pub async fn create(env: &Env, max_connections: u32) -> Res<Self> {
        let name = format!(
            "autokey_bench_{}",
            &Uuid::new_v4().simple().to_string()[..12]
        );
        let mut admin = PgConnection::connect_with(&env.options("postgres")?).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        for (k, v) in &env.db_settings {
            if k.is_empty()
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                return Err(err(format!("not a setting name: {k}")));
            }
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "ALTER DATABASE {name} SET {k} = '{}'",
                    v.replace('\'', "''")
                )))
                .await?;
        }
        admin.close().await?;
        let pool = autokey_shared::db::connect_with(env.options(&name)?, max_connections).await?;
        autokey_shared::db::migrate(&pool).await?;
        Ok(Self {
            url: env.db_url(&name),
            name,
            pool,
            env: env.clone(),
        })
    }

    pub async fn drop_now(self) {
        self.pool.close().await;
        match PgConnection::connect_with(&match self.env.options("postgres") {
            Ok(o) => o,
            Err(_) => return,
        })
        .await
        {
            Ok(mut admin) => {
                if let Err(e) = admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        self.name
                    )))
                    .await
                {
                    eprintln!("warning: could not drop {}: {e}", self.name);
                }
                let _ = admin.close().await;
            }
            Err(e) => eprintln!("warning: could not drop {}: {e}", self.name),
        }
    }
}

/// Vault secrets generated in-process; the same ones go to the child processes.
pub struct Secrets {
    enc: [u8; 32],
    fp: [u8; 32],
}

impl Secrets {
    pub fn generate() -> Self {
        let mut enc = [0u8; 32];
        let mut fp = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut enc);
        rand::rngs::OsRng.fill_bytes(&mut fp);
        Self { enc, fp }
    }
    pub fn vault(&self) -> Vault {
        Vault::new(
            "k1".into(),
            KeyMaterial::new(self.enc),
            HashMap::new(),
            KeyMaterial::new(self.fp),
        )
    }
    /// The environment of a rotation to `new` (key id k2), with this key retired as k1.
    pub fn rotated_env(&self, new: &[u8; 32]) -> [(&'static str, String); 4] {
        [
            ("ENCRYPTION_KEY", hex::encode(new)),
            ("ENCRYPTION_KEY_ID", "k2".into()),
            (
                "ENCRYPTION_KEYS_RETIRED",
                format!("k1:{}", hex::encode(self.enc)),
            ),
            ("FINGERPRINT_KEY", hex::encode(self.fp)),
        ]
    }

    pub(super) fn env(&self) -> [(&'static str, String); 2] {
        [
            ("ENCRYPTION_KEY", hex::encode(self.enc)),
            ("FINGERPRINT_KEY", hex::encode(self.fp)),
        ]
    }
}
