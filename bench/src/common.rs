//! What every scenario needs: a fresh database, seeded data, the real release binaries as
//! child processes, RSS readings, percentiles, tables and the results file.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
    str::FromStr,
    time::{Duration, Instant},
};

use autokey_shared::{
    jobs::{FulfillOrder, Job},
    vault::{KeyMaterial, Vault},
};
use rand::RngCore;
use sqlx::{Connection, Executor, PgConnection, PgPool, postgres::PgConnectOptions};
use tokio::process::{Child, Command};
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
    fn env(&self) -> [(&'static str, String); 2] {
        [
            ("ENCRYPTION_KEY", hex::encode(self.enc)),
            ("FINGERPRINT_KEY", hex::encode(self.fp)),
        ]
    }
}

// ---------------------------------------------------------------- seeding

/// One seller, `pools` pools each with an active AUTO_KEY offer.
pub struct Shop {
    pub pools: Vec<Uuid>,
    pub offers: Vec<Uuid>,
}

pub const PRICE_CENTS: i64 = 999;

/// Seeds a seller, pools and offers, `available` AVAILABLE keys per pool and, older than
/// them, `delivered` keys per pool that were sold to earlier (FULFILLED) orders. The
/// delivered keys go through AVAILABLE -> DELIVERED like real ones, then the database is
/// vacuumed: the claim query must walk past them through the partial index.
pub async fn seed_shop(
    pool: &PgPool,
    vault: &Vault,
    pools: usize,
    available: usize,
    delivered: usize,
) -> Res<Shop> {
    let seller_id = Uuid::now_v7();
    let pool_ids: Vec<Uuid> = (0..pools).map(|_| Uuid::now_v7()).collect();
    let offer_ids: Vec<Uuid> = (0..pools).map(|_| Uuid::now_v7()).collect();
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO sellers (id) VALUES ($1)")
        .bind(seller_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO key_pools (id, seller_id, name)
         SELECT id, $2, 'bench pool ' || n FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n)",
    )
    .bind(&pool_ids)
    .bind(seller_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO offers (id, seller_id, title, price_cents, currency, delivery_type, key_pool_id, status)
         SELECT o, $3, 'Bench game', $4, 'EUR', 'AUTO_KEY', p, 'active'
         FROM unnest($1::uuid[], $2::uuid[]) AS t(o, p)",
    )
    .bind(&offer_ids)
    .bind(&pool_ids)
    .bind(seller_id)
    .bind(PRICE_CENTS)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    let run = Uuid::new_v4().simple().to_string();
    for (pi, &pool_id) in pool_ids.iter().enumerate() {
        let total = delivered + available;
        // Oldest first: the delivered keys are a day old, the available ones an hour.
        let mut rows = Vec::with_capacity(total);
        for i in 0..total {
            let age_ms: i64 = if i < delivered {
                86_400_000 - i as i64
            } else {
                3_600_000 - (i - delivered) as i64
            };
            rows.push((format!("BENCH-{}-{pi:02}-{i:07}", &run[..10]), age_ms));
        }
        insert_keys(pool, vault, pool_id, &rows).await?;
        if delivered > 0 {
            sell_oldest(pool, pool_id, offer_ids[pi], delivered).await?;
        }
    }
    pool.execute("VACUUM ANALYZE").await?;
    Ok(Shop {
        pools: pool_ids,
        offers: offer_ids,
    })
}

/// Inserts sealed keys (plaintext, age in ms) into a pool by UNNEST batches.
pub async fn insert_keys(
    pool: &PgPool,
    vault: &Vault,
    pool_id: Uuid,
    rows: &[(String, i64)],
) -> Res<()> {
    for chunk in rows.chunks(5000) {
        let mut ids = Vec::with_capacity(chunk.len());
        let mut cts = Vec::with_capacity(chunk.len());
        let mut nonces = Vec::with_capacity(chunk.len());
        let mut fps = Vec::with_capacity(chunk.len());
        let mut ages = Vec::with_capacity(chunk.len());
        for (plain, age) in chunk {
            let id = Uuid::now_v7();
            let sealed = vault.seal(id, pool_id, plain);
            ids.push(id);
            cts.push(sealed.ciphertext);
            nonces.push(sealed.nonce.to_vec());
            fps.push(vault.fingerprint(plain).to_vec());
            ages.push(*age);
        }
        sqlx::query(
            "INSERT INTO keys (id, pool_id, ciphertext, nonce, enc_key_id, fingerprint, created_at)
             SELECT id, $2, ct, nonce, 'k1', fp, now() - age * interval '1 millisecond'
             FROM unnest($1::uuid[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bigint[])
                  AS t(id, ct, nonce, fp, age)",
        )
        .bind(&ids)
        .bind(pool_id)
        .bind(&cts)
        .bind(&nonces)
        .bind(&fps)
        .bind(&ages)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Sells the `n` oldest keys of a pool to as many old FULFILLED orders (with deliveries).
async fn sell_oldest(pool: &PgPool, pool_id: Uuid, offer_id: Uuid, n: usize) -> Res<()> {
    let mut tx = pool.begin().await?;
    let keys: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM keys WHERE pool_id = $1 AND status = 'AVAILABLE' ORDER BY created_at, id LIMIT $2",
    )
    .bind(pool_id)
    .bind(n as i64)
    .fetch_all(&mut *tx)
    .await?;
    let orders: Vec<Uuid> = keys.iter().map(|_| Uuid::now_v7()).collect();
    let buyers: Vec<Uuid> = keys.iter().map(|_| Uuid::new_v4()).collect();
    sqlx::query(
        "INSERT INTO orders (id, buyer_id, offer_id, pool_id, quantity, amount_cents, currency,
                             status, created_at, paid_at, fulfilled_at)
         SELECT o, b, $3, $4, 1, $5, 'EUR', 'FULFILLED',
                now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'
         FROM unnest($1::uuid[], $2::uuid[]) AS t(o, b)",
    )
    .bind(&orders)
    .bind(&buyers)
    .bind(offer_id)
    .bind(pool_id)
    .bind(PRICE_CENTS)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE keys k SET status = 'DELIVERED', order_id = t.o, delivered_at = now() - interval '1 day'
         FROM unnest($1::uuid[], $2::uuid[]) AS t(k, o) WHERE k.id = t.k",
    )
    .bind(&keys)
    .bind(&orders)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO order_deliveries (order_id, key_id, delivered_at)
         SELECT o, k, now() - interval '1 day' FROM unnest($1::uuid[], $2::uuid[]) AS t(o, k)",
    )
    .bind(&orders)
    .bind(&keys)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Inserts `n` orders of quantity 1, round-robin over the shop's pools. PAID orders get
/// their FulfillOrder job in the same transaction (when `with_jobs`), by the api's own
/// `jobs::queue::enqueue_many`.
pub async fn seed_orders(
    pool: &PgPool,
    shop: &Shop,
    n: usize,
    paid: bool,
    with_jobs: bool,
) -> Res<Vec<(Uuid, Uuid)>> {
    let mut out = Vec::with_capacity(n);
    for chunk_start in (0..n).step_by(5000) {
        let m = (n - chunk_start).min(5000);
        let mut ids = Vec::with_capacity(m);
        let mut buyers = Vec::with_capacity(m);
        let mut offers = Vec::with_capacity(m);
        let mut pools = Vec::with_capacity(m);
        let mut ages = Vec::with_capacity(m);
        for j in 0..m {
            let i = chunk_start + j;
            let p = i % shop.pools.len();
            ids.push(Uuid::now_v7());
            buyers.push(Uuid::new_v4());
            offers.push(shop.offers[p]);
            pools.push(shop.pools[p]);
            // Paid in order, oldest first, all in the past.
            ages.push((n - i) as i64);
        }
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO orders (id, buyer_id, offer_id, pool_id, quantity, amount_cents, currency, status, paid_at)
             SELECT id, b, o, p, 1, $5, 'EUR', $6,
                    CASE WHEN $6 = 'PAID' THEN now() - age * interval '1 millisecond' END
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $7::bigint[]) AS t(id, b, o, p, age)",
        )
        .bind(&ids)
        .bind(&buyers)
        .bind(&offers)
        .bind(&pools)
        .bind(PRICE_CENTS)
        .bind(if paid { "PAID" } else { "PENDING" })
        .bind(&ages)
        .execute(&mut *tx)
        .await?;
        if paid && with_jobs {
            // The api's own enqueue (natural job ids, the fast lane's grace and NOTIFY),
            // so the worker finds these jobs exactly as it finds paid orders' jobs.
            let jobs: Vec<FulfillOrder> = ids
                .iter()
                .map(|&order_id| FulfillOrder::new(order_id))
                .collect();
            autokey_shared::jobs::queue::enqueue_many(&mut tx, &jobs).await?;
        }
        tx.commit().await?;
        out.extend(ids.into_iter().zip(pools));
    }
    pool.execute("ANALYZE").await?;
    Ok(out)
}

// ---------------------------------------------------------------- processes

/// A child process of the bench; killed on drop if still running.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
    /// Fails when the process has already exited (it printed why in its log).
    pub fn check_alive(&mut self, env: &Env) -> Res<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(err(format!(
                "{} exited early ({status}); see {}",
                self.name,
                env.tmp_dir().join(format!("{}.log", self.name)).display()
            )));
        }
        Ok(())
    }
}

fn spawn(
    env: &Env,
    bin: &str,
    log_name: &str,
    args: &[&str],
    vars: Vec<(&str, String)>,
) -> Res<Proc> {
    let log = std::fs::File::create(env.tmp_dir().join(format!("{log_name}.log")))?;
    let mut cmd = Command::new(env.bin(bin)?);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let child = cmd.spawn()?;
    Ok(Proc {
        name: log_name.to_string(),
        child,
    })
}

pub fn free_port() -> Res<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The api settings the bench changes from their defaults (all of them rate limits).
pub const API_BENCH_LIMITS: [(&str, &str); 5] = [
    ("RATE_LIMIT_PER_SECOND", "1000000"),
    ("RATE_LIMIT_BURST", "1000000"),
    ("RATE_LIMIT_ANONYMOUS_PER_SECOND", "1000000"),
    ("RATE_LIMIT_ANONYMOUS_BURST", "1000000"),
    ("MAX_CONCURRENT_UPLOADS_PER_SELLER", "8"),
];

/// Starts `autokey-api serve` on 127.0.0.1:`port` and waits until /readyz answers 200.
pub async fn start_api(
    env: &Env,
    db: &BenchDb,
    secrets: &Secrets,
    port: u16,
    log: &str,
) -> Res<Proc> {
    let mut vars: Vec<(&str, String)> = vec![
        ("DATABASE_URL", db.url.clone()),
        ("PORT", port.to_string()),
        ("BIND_ADDR", "127.0.0.1".into()),
        // The load generator pays through the simulated pay route.
        ("SIMULATED_PAYMENTS", "true".into()),
    ];
    // Rate limits raised so that the figures measure the service, not its limiter: the
    // bench's few tokens (and wrk's anonymous /healthz) stand for many real clients. Every
    // other setting (connections, timeouts, load shedding) keeps its default.
    for (k, v) in API_BENCH_LIMITS {
        vars.push((k, v.to_string()));
    }
    for (k, v) in &env.api_env {
        vars.push((k.as_str(), v.clone()));
    }
    vars.extend(secrets.env());
    let mut proc = spawn(env, "autokey-api", log, &["serve"], vars)?;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        proc.check_alive(env)?;
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(proc);
        }
        if Instant::now() > deadline {
            return Err(err("autokey-api did not become ready within 15 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `autokey-worker run` (default `--concurrency`).
pub fn start_worker(env: &Env, db: &BenchDb, secrets: &Secrets, log: &str) -> Res<Proc> {
    let mut vars: Vec<(&str, String)> = vec![("DATABASE_URL", db.url.clone())];
    vars.extend(secrets.env());
    spawn(env, "autokey-worker", log, &["run"], vars)
}

/// (VmRSS, VmHWM) of a process in MiB.
pub fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

// ---------------------------------------------------------------- statistics, output

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn print_table(title: &str, headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    println!("\n## {title}\n");
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:>w$}", w = widths[i]))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(headers.iter().map(|s| s.to_string()).collect());
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| format!("{}:", "-".repeat(w + 1)))
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        line(r.clone());
    }
    println!();
}

pub fn f1(x: f64) -> String {
    format!("{x:.1}")
}
pub fn f0(x: f64) -> String {
    format!("{x:.0}")
}
pub fn f2(x: f64) -> String {
    format!("{x:.2}")
}

/// The machine, as BENCHMARKS.md describes it.
pub async fn machine(db: &PgPool) -> serde_json::Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0);
    let pg: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(db)
        .await
        .unwrap_or_default();
    // The machine may be shared: the load average at the time of recording says how much.
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    serde_json::json!({ "cpus": cpus, "mem_mib": mem_mib, "postgres": pg, "loadavg": loadavg })
}

fn git_head(root: &Path) -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Appends one dated JSON line to bench-results/results.jsonl.
pub async fn record(env: &Env, db: &PgPool, scenario: &str, results: serde_json::Value) -> Res<()> {
    let line = serde_json::json!({
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "scenario": scenario,
        "git": git_head(&env.root),
        "machine": machine(db).await,
        "database_settings": env.db_settings.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "api_env": env.api_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "results": results,
    });
    let dir = env.root.join("bench-results");
    std::fs::create_dir_all(&dir)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("results.jsonl"))?;
    writeln!(f, "{line}")?;
    println!("(appended to {})", dir.join("results.jsonl").display());
    Ok(())
}

/// The latest recorded line of a scenario, if any.
pub fn last_recorded(env: &Env, scenario: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(env.root.join("bench-results/results.jsonl")).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["scenario"] == scenario)
}

// ---------------------------------------------------------------- burn-down

/// Starts `workers` worker processes on a database whose `ids` orders are PAID with
/// their jobs queued, and waits until no order is PAID any more: orders/s overall and
/// after the first fulfillment, then checks that each order got exactly one distinct key.
pub async fn burn_down(
    env: &Env,
    db: &BenchDb,
    secrets: &Secrets,
    workers: usize,
    ids: &[Uuid],
    label: &str,
    timeout: Duration,
) -> Res<serde_json::Value> {
    let total = ids.len() as i64;
    let start = Instant::now();
    let mut procs = Vec::new();
    for i in 0..workers {
        procs.push(start_worker(
            env,
            db,
            secrets,
            &format!("{label}-worker{i}"),
        )?);
    }
    let mut first_done: Option<Duration> = None;
    let mut first_done_count = 0i64;
    let finished = loop {
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PAID'")
            .fetch_one(&db.pool)
            .await?;
        let done = total - waiting;
        if first_done.is_none() && done > 0 {
            first_done = Some(start.elapsed());
            first_done_count = done;
        }
        if waiting == 0 {
            break start.elapsed();
        }
        for w in procs.iter_mut() {
            w.check_alive(env)?;
        }
        if start.elapsed() > timeout {
            for w in procs {
                w.kill().await;
            }
            return Err(err(format!(
                "{label}: {waiting} of {total} orders still PAID after {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut peak_rss: f64 = 0.0;
    for w in &procs {
        if let Some((_, hwm)) = rss_mib(w.pid()) {
            peak_rss = peak_rss.max(hwm);
        }
    }
    for w in procs {
        w.kill().await;
    }
    let (fulfilled, deliveries, distinct): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders WHERE id = ANY($1) AND status = 'FULFILLED'),
                count(*), count(DISTINCT key_id)
         FROM order_deliveries WHERE order_id = ANY($1)",
    )
    .bind(ids)
    .fetch_one(&db.pool)
    .await?;
    if fulfilled != total || deliveries != total || distinct != total {
        return Err(err(format!(
            "{label}: verification failed: {fulfilled} FULFILLED, {deliveries} deliveries, \
             {distinct} distinct keys (expected {total})"
        )));
    }
    let jobs: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM apalis.jobs WHERE job_type = $1 GROUP BY status ORDER BY status",
    )
    .bind(FulfillOrder::QUEUE)
    .fetch_all(&db.pool)
    .await?;
    let secs = finished.as_secs_f64();
    let first = first_done.unwrap_or(finished);
    let steady = if finished > first {
        (total - first_done_count) as f64 / (finished - first).as_secs_f64()
    } else {
        f64::NAN
    };
    eprintln!(
        "{label}: {total} orders fulfilled in {secs:.2} s = {:.0}/s",
        total as f64 / secs
    );
    Ok(serde_json::json!({
        "workers": workers,
        "orders": total,
        "seconds": secs,
        "orders_per_s": total as f64 / secs,
        "first_fulfilled_after_s": first.as_secs_f64(),
        "steady_orders_per_s": steady,
        "fulfilled": fulfilled,
        "deliveries": deliveries,
        "distinct_keys": distinct,
        "jobs_by_status": jobs.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "worker_peak_rss_mib": peak_rss,
    }))
}

// ---------------------------------------------------------------- CPU accounting

/// CPU seconds (user + system) used so far by each of `pids` that still runs, summed.
pub fn cpu_secs(pids: &[u32]) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|s| {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / tick
}

/// The server's processes (the postmaster's children: backends, WAL writer, checkpointer,
/// autovacuum), when the server runs on this machine and its data directory is readable.
pub async fn server_pids(db: &PgPool) -> Vec<u32> {
    let Ok(dir) = sqlx::query_scalar::<_, String>("SELECT current_setting('data_directory')")
        .fetch_one(db)
        .await
    else {
        return Vec::new();
    };
    let Some(postmaster) = std::fs::read_to_string(format!("{dir}/postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return Vec::new();
    };
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("PPid:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u32>().ok())
            });
        if ppid == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

/// CPU used during a phase by the api, the database server, the worker and the bench
/// itself (the load generator), in ms per operation.
pub struct CpuMeter {
    groups: Vec<(&'static str, Vec<u32>, f64)>,
}

impl CpuMeter {
    pub async fn start(db: &PgPool, api: u32, worker: Option<u32>) -> Self {
        let mut groups = vec![
            ("api", vec![api]),
            ("postgres", server_pids(db).await),
            ("generator", vec![std::process::id()]),
        ];
        if let Some(w) = worker {
            groups.push(("worker", vec![w]));
        }
        CpuMeter {
            groups: groups
                .into_iter()
                .map(|(n, p)| {
                    let c = cpu_secs(&p);
                    (n, p, c)
                })
                .collect(),
        }
    }

    /// ms of CPU per operation for each group since `start`, and their sum.
    pub fn per_op(&self, ops: u64) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        let mut total = 0.0;
        for (name, pids, before) in &self.groups {
            let ms = (cpu_secs(pids) - before) * 1000.0 / ops.max(1) as f64;
            total += ms;
            out.insert((*name).into(), ms.into());
        }
        out.insert("total".into(), total.into());
        serde_json::Value::Object(out)
    }
}
