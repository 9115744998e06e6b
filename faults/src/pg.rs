//! The private PostgreSQL cluster the run owns (created, and always removed, by
//! `scripts/faults.sh`): stopping and starting it, and the SQL connection the checks use.

use std::{os::unix::fs::MetadataExt, path::PathBuf, str::FromStr, time::Duration};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::Res;

pub struct Cluster {
    pub pgdata: PathBuf,
    pub pg_bin: PathBuf,
    pub log: PathBuf,
}

impl Cluster {
    /// Runs `pg_ctl <args>` as the data directory's owner (root may not run the server).
    async fn pg_ctl(&self, args: &[&str]) -> Res<()> {
        let pg_ctl = self.pg_bin.join("pg_ctl");
        let pgdata = self.pgdata.to_string_lossy().to_string();
        let log = self.log.to_string_lossy().to_string();
        let mut full: Vec<&str> = vec!["-D", &pgdata, "-l", &log, "-w", "-t", "60"];
        full.extend_from_slice(args);
        let as_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0)?;
        let out = if as_root {
            tokio::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&pg_ctl)
                .args(&full)
                .output()
                .await?
        } else {
            tokio::process::Command::new(&pg_ctl)
                .args(&full)
                .output()
                .await?
        };
        if !out.status.success() {
            return Err(format!(
                "pg_ctl {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(())
    }

    /// `mode`: fast (clean) or immediate (like a crash: recovery from WAL at start).
    pub async fn stop(&self, mode: &str) -> Res<()> {
        self.pg_ctl(&["-m", mode, "stop"]).await
    }

    pub async fn start(&self) -> Res<()> {
        self.pg_ctl(&["start"]).await
    }
}

/// The same server URL with another database (and, if given, another user).
pub fn url_for(server_url: &str, db: &str, user: Option<&str>) -> Res<String> {
    let mut url = reqwest::Url::parse(server_url)?;
    url.set_path(&format!("/{db}"));
    if let Some(u) = user {
        url.set_username(u)
            .map_err(|_| format!("cannot set a user on {server_url}"))?;
    }
    Ok(url.to_string())
}

pub async fn pool(url: &str, max: u32) -> Res<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(PgConnectOptions::from_str(url)?.application_name("autokey-faults"))
        .await?)
}

/// Creates the run's database and the role the api connects as (so that its connections,
/// and only its, can be told apart in `pg_stat_activity`).
pub async fn create_database(server_url: &str, db: &str, api_role: &str) -> Res<()> {
    let admin = pool(server_url, 1).await?;
    let role_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(api_role)
            .fetch_one(&admin)
            .await?;
    if !role_exists {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {api_role} LOGIN SUPERUSER"
        )))
        .execute(&admin)
        .await?;
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_another_database_and_user() {
        let server = "postgres://postgres@127.0.0.1:54339/postgres";
        assert_eq!(
            url_for(server, "autokey_faults", None).unwrap(),
            "postgres://postgres@127.0.0.1:54339/autokey_faults"
        );
        assert_eq!(
            url_for(server, "autokey_faults", Some("autokey_api")).unwrap(),
            "postgres://autokey_api@127.0.0.1:54339/autokey_faults"
        );
    }
}
