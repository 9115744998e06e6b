//! `limit`: what the database and the job queue allow on this machine, same run.
//! 1. pgbench with the minimal SQL of one fulfillment (claim a job from a simple job table,
//!    lock one AVAILABLE key of the order's pool through the partial index, deliver it,
//!    fulfill the order, finish the job, commit) on a database seeded like `fulfill`'s.
//! 2. A bare apalis-postgres burn-down of no-op jobs, wired like worker/src/runner.rs.

use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_postgres::{Config as QueueConfig, PostgresStorage, Pubsub};
use serde::{Deserialize, Serialize};
use sqlx::Executor;

use super::fulfill::{DELIVERED_PER_POOL, POOLS};
use crate::common::*;

const SCRIPT: &str = r#"-- The minimal SQL of one fulfillment (autokey schema, quantity 1).
BEGIN;
SELECT id AS job_id, order_id AS oid, pool_id AS pid FROM bench_jobs
 WHERE NOT done ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED \gset
SELECT id AS kid FROM keys WHERE pool_id = :pid AND status = 'AVAILABLE'
 ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED \gset
UPDATE keys SET status = 'DELIVERED', order_id = :oid, delivered_at = now() WHERE id = :kid;
INSERT INTO order_deliveries (order_id, key_id) VALUES (:oid, :kid);
UPDATE orders SET status = 'FULFILLED', fulfilled_at = now() WHERE id = :oid AND status = 'PAID';
UPDATE bench_jobs SET done = true WHERE id = :job_id;
COMMIT;
"#;

pub fn pgbench_path() -> Res<std::path::PathBuf> {
    if let Ok(out) = std::process::Command::new("sh")
        .args(["-c", "command -v pgbench"])
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !p.is_empty() {
            return Ok(p.into());
        }
    }
    for entry in std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = entry.path().join("bin/pgbench");
        if p.exists() {
            return Ok(p);
        }
    }
    Err(err("pgbench not found (PATH or /usr/lib/postgresql/*/bin)"))
}

pub async fn run(
    env: &Env,
    orders: usize,
    clients: &[usize],
    workers: &[usize],
    fulfill: Option<serde_json::Value>,
) -> Res<serde_json::Value> {
    let pgbench = pgbench_path()?;
    let script = env.tmp_dir().join("limit-fulfillment.sql");
    std::fs::write(&script, SCRIPT)?;

    let mut pg_rows = Vec::new();
    let mut pg_results = Vec::new();
    for &c in clients {
        let db = BenchDb::create(env, 4).await?;
        let r = pgbench_one(env, &db, &pgbench, &script, orders, c).await;
        db.drop_now().await;
        let tps = r?;
        pg_rows.push(vec![c.to_string(), f0(tps)]);
        pg_results.push(serde_json::json!({ "clients": c, "tps": tps }));
    }
    print_table(
        &format!(
            "limit: pgbench of the minimal fulfillment SQL ({orders} transactions per run, -M prepared)"
        ),
        &["clients", "tps"],
        &pg_rows,
    );

    let db = BenchDb::create(env, 40).await?;
    let bare = bare_apalis(&db, orders, workers).await;
    let rows: Vec<Vec<String>> = match &bare {
        Ok(v) => v
            .iter()
            .map(|(n, s)| vec![n.to_string(), (n * 8).to_string(), f0(*s)])
            .collect(),
        Err(_) => vec![],
    };
    let bare = match bare {
        Ok(b) => b,
        Err(e) => {
            db.drop_now().await;
            return Err(e);
        }
    };
    print_table(
        &format!(
            "limit: bare apalis-postgres no-op burn-down ({orders} jobs, in-process workers wired like runner.rs)"
        ),
        &["workers", "jobs in flight", "jobs/s"],
        &rows,
    );

    // Ratios against the fulfill run of this invocation, else the last recorded one.
    let (ours, ours_from) = match fulfill {
        Some(v) => (v, "this run".to_string()),
        None => match last_recorded(env, "fulfill") {
            Some(v) => {
                let d = v["date"].as_str().unwrap_or("?").to_string();
                (v["results"].clone(), format!("recorded {d}"))
            }
            None => (serde_json::Value::Null, "none".into()),
        },
    };
    let mut ratio_rows = Vec::new();
    let mut ratios = Vec::new();
    let best_pg = pg_results
        .iter()
        .filter_map(|r| r["tps"].as_f64())
        .fold(0.0, f64::max);
    if let Some(runs) = ours["runs"].as_array() {
        for run in runs {
            let n = run["workers"].as_u64().unwrap_or(0) as usize;
            let ours_s = run["orders_per_s"].as_f64().unwrap_or(f64::NAN);
            let pg_same = pg_results
                .iter()
                .find(|r| r["clients"].as_u64() == Some(n as u64))
                .and_then(|r| r["tps"].as_f64())
                .unwrap_or(f64::NAN);
            let pg_inflight = pg_results
                .iter()
                .find(|r| r["clients"].as_u64() == Some(8 * n as u64))
                .and_then(|r| r["tps"].as_f64())
                .unwrap_or(f64::NAN);
            let bare_same = bare
                .iter()
                .find(|(w, _)| *w == n)
                .map(|(_, s)| *s)
                .unwrap_or(f64::NAN);
            ratio_rows.push(vec![
                n.to_string(),
                f0(ours_s),
                f2(ours_s / pg_same),
                f2(ours_s / pg_inflight),
                f2(ours_s / best_pg),
                f2(ours_s / bare_same),
            ]);
            ratios.push(serde_json::json!({
                "workers": n, "ours_orders_per_s": ours_s,
                "ours_over_pgbench_same_clients": ours_s / pg_same,
                "ours_over_pgbench_clients_8n": ours_s / pg_inflight,
                "ours_over_pgbench_best": ours_s / best_pg,
                "ours_over_bare_apalis": ours_s / bare_same,
            }));
        }
    }
    print_table(
        &format!("limit: ratios (ours = fulfill orders/s, {ours_from})"),
        &[
            "N",
            "ours orders/s",
            "/ pgbench c=N",
            "/ pgbench c=8N",
            "/ best pgbench",
            "/ bare apalis N",
        ],
        &ratio_rows,
    );
    let results = serde_json::json!({
        "orders": orders,
        "pgbench": pg_results,
        "bare_apalis": bare.iter().map(|(n, s)| serde_json::json!({"workers": n, "concurrency_per_worker": 8, "jobs_per_s": s})).collect::<Vec<_>>(),
        "ours_from": ours_from,
        "ratios": ratios,
    });
    record(env, &db.pool, "limit", results.clone()).await?;
    db.drop_now().await;
    Ok(results)
}

async fn pgbench_one(
    env: &Env,
    db: &BenchDb,
    pgbench: &std::path::Path,
    script: &std::path::Path,
    orders: usize,
    clients: usize,
) -> Res<f64> {
    let secrets = Secrets::generate();
    let vault = secrets.vault();
    let per_pool = orders.div_ceil(POOLS);
    let shop = seed_shop(&db.pool, &vault, POOLS, per_pool + 500, DELIVERED_PER_POOL).await?;
    let backlog = seed_orders(&db.pool, &shop, orders, true).await?;
    db.pool
        .execute(
            "CREATE TABLE bench_jobs (id bigint PRIMARY KEY, order_id uuid NOT NULL, pool_id uuid NOT NULL,
                                      done boolean NOT NULL DEFAULT false);
             CREATE INDEX bench_jobs_pending ON bench_jobs (id) WHERE NOT done;",
        )
        .await?;
    let (o, p): (Vec<_>, Vec<_>) = backlog.into_iter().unzip();
    sqlx::query(
        "INSERT INTO bench_jobs (id, order_id, pool_id)
         SELECT n, o, p FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS t(o, p, n)",
    )
    .bind(&o)
    .bind(&p)
    .execute(&db.pool)
    .await?;
    db.pool.execute("VACUUM ANALYZE").await?;
    let per_client = orders / clients;
    let out = tokio::process::Command::new(pgbench)
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-t", &per_client.to_string(), "-f"])
        .arg(script)
        .arg(&db.url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out)
        .await
        .map_err(|_| err("pgbench took more than 180 s"))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::fs::write(
        env.tmp_dir().join(format!("limit-pgbench-c{clients}.log")),
        format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)),
    )?;
    let tps = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| {
            err(format!(
                "pgbench c={clients} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
    let fulfilled = {
        let mut conn = db.pool.acquire().await?;
        let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
        autokey_shared::store::orders::fulfilled_since(&mut conn, hour_ago).await?
    };
    let expected = (per_client * clients) as i64;
    if fulfilled != expected {
        return Err(err(format!(
            "pgbench c={clients}: {fulfilled} orders fulfilled, expected {expected}"
        )));
    }
    eprintln!("limit: pgbench c={clients}: {tps:.0} tps ({fulfilled} orders fulfilled)");
    Ok(tps)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop {
    n: u64,
}

const NOOP_QUEUE: &str = "bench::noop";

async fn noop(_job: Noop) -> Result<(), BoxDynError> {
    Ok(())
}

async fn wait_for_stop(mut rx: tokio::sync::watch::Receiver<bool>) -> Result<(), std::io::Error> {
    let _ = rx.wait_for(|stop| *stop).await;
    Ok(())
}

/// Same queue configuration as worker/src/runner.rs `storage()` (concurrency 8).
fn storage(pool: &sqlx::PgPool) -> PollWith<PostgresStorage<Noop>, Strategy> {
    let queue = QueueConfig::default()
        .queue(NOOP_QUEUE)
        .batch_size(8)
        .heartbeat_interval(Duration::from_secs(2))
        .missed_heartbeats(3);
    let strategy = Strategy::new()
        .stream(Pubsub::new(pool.clone(), NOOP_QUEUE.to_string()))
        .interval(Duration::from_millis(500));
    PostgresStorage::<Noop>::new(pool)
        .with_config(queue)
        .poll_with_strategy(strategy)
}

async fn bare_apalis(db: &BenchDb, jobs: usize, workers: &[usize]) -> Res<Vec<(usize, f64)>> {
    let mut out = Vec::new();
    for &n in workers {
        sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1")
            .bind(NOOP_QUEUE)
            .execute(&db.pool)
            .await?;
        db.pool.execute("VACUUM ANALYZE apalis.jobs").await?;
        let ids: Vec<String> = (0..jobs).map(|_| ulid::Ulid::new().to_string()).collect();
        let payloads: Vec<Vec<u8>> = (0..jobs as u64)
            .map(|n| serde_json::to_vec(&Noop { n }).unwrap())
            .collect();
        sqlx::query(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
             SELECT id, $2, job, 'Pending', 0, 12, now(), 0, ''::hstore FROM unnest($1::text[], $3::bytea[]) AS t(id, job)",
        )
        .bind(&ids)
        .bind(NOOP_QUEUE)
        .bind(&payloads)
        .execute(&db.pool)
        .await?;
        db.pool.execute("ANALYZE apalis.jobs").await?;

        // Each worker gets its own pool, like a process of its own would.
        let mut pools = Vec::new();
        for _ in 0..n {
            pools.push(
                autokey_shared::db::connect_with(db.pool.connect_options().as_ref().clone(), 22)
                    .await?,
            );
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let start = Instant::now();
        let mut handles = Vec::new();
        for (i, pool) in pools.iter().enumerate() {
            let worker = WorkerBuilder::new(format!("bench-noop-{i}-{}", ulid::Ulid::new()))
                .backend(storage(pool))
                .concurrency(8)
                .build(noop)
                .run_until(wait_for_stop(stop_rx.clone()));
            handles.push(tokio::spawn(worker));
        }
        let deadline = start + Duration::from_secs(180);
        let elapsed = loop {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status NOT IN ('Done', 'Failed', 'Killed')",
            )
            .bind(NOOP_QUEUE)
            .fetch_one(&db.pool)
            .await?;
            if left == 0 {
                break start.elapsed();
            }
            if Instant::now() > deadline {
                let _ = stop_tx.send(true);
                return Err(err(format!(
                    "bare apalis N={n}: {left} jobs left after 180 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _ = stop_tx.send(true);
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
        for p in pools {
            p.close().await;
        }
        let rate = jobs as f64 / elapsed.as_secs_f64();
        eprintln!(
            "limit: bare apalis N={n}: {jobs} jobs in {:.2} s = {rate:.0}/s",
            elapsed.as_secs_f64()
        );
        out.push((n, rate));
    }
    Ok(out)
}
