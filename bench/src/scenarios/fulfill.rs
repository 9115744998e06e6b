//! `fulfill`: a backlog of PAID orders (quantity 1, over 10 pools), each with its
//! FulfillOrder job, burnt down by N real worker processes; orders/s per N.

use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::common::*;

pub struct Cfg {
    pub orders: usize,
    pub workers: Vec<usize>,
    pub timeout: Duration,
}

pub const POOLS: usize = 10;
/// Older keys per pool, already sold: the claim walks past them.
pub const DELIVERED_PER_POOL: usize = 1000;

pub async fn run(env: &Env, cfg: &Cfg) -> Res<serde_json::Value> {
    let mut rows = Vec::new();
    let mut results = Vec::new();
    for &n in &cfg.workers {
        let db = BenchDb::create(env, 6).await?;
        let r = one(env, &db, cfg, n).await;
        match r {
            Ok(v) => {
                rows.push(vec![
                    n.to_string(),
                    (n * 8).to_string(),
                    cfg.orders.to_string(),
                    f2(v["seconds"].as_f64().unwrap_or(0.0)),
                    f0(v["orders_per_s"].as_f64().unwrap_or(0.0)),
                    f0(v["steady_orders_per_s"].as_f64().unwrap_or(0.0)),
                    v["deliveries"].to_string(),
                    v["distinct_keys"].to_string(),
                    f1(v["worker_peak_rss_mib"].as_f64().unwrap_or(0.0)),
                ]);
                results.push(v);
            }
            Err(e) => {
                db.drop_now().await;
                return Err(e);
            }
        }
        db.drop_now().await;
    }
    print_table(
        &format!(
            "fulfill: {} PAID orders backlog over {POOLS} pools, N worker processes (--concurrency 8)",
            cfg.orders
        ),
        &[
            "N",
            "jobs in flight",
            "orders",
            "seconds",
            "orders/s",
            "steady orders/s",
            "deliveries",
            "distinct keys",
            "worker peak RSS MiB",
        ],
        &rows,
    );
    let results = serde_json::json!({ "orders": cfg.orders, "pools": POOLS, "runs": results });
    // The record needs a live database for the machine description: use a short-lived one.
    let db = BenchDb::create(env, 2).await?;
    let r = record(env, &db.pool, "fulfill", results.clone()).await;
    db.drop_now().await;
    r?;
    Ok(results)
}

async fn one(env: &Env, db: &BenchDb, cfg: &Cfg, n: usize) -> Res<serde_json::Value> {
    let secrets = Secrets::generate();
    let vault = secrets.vault();
    let per_pool = cfg.orders.div_ceil(POOLS);
    let t = Instant::now();
    let shop = seed_shop(&db.pool, &vault, POOLS, per_pool + 500, DELIVERED_PER_POOL).await?;
    let backlog = seed_orders(&db.pool, &shop, cfg.orders, true, true).await?;
    let ids: Vec<Uuid> = backlog.iter().map(|(o, _)| *o).collect();
    eprintln!(
        "fulfill N={n}: seeded {} keys and {} PAID orders with jobs in {:.1} s",
        POOLS * (per_pool + 500 + DELIVERED_PER_POOL),
        cfg.orders,
        t.elapsed().as_secs_f64()
    );

    // The newest order of pool 0 asks whether an older one waits: before the run, every
    // other order of the pool is older and PAID.
    let newest = backlog
        .iter()
        .rev()
        .find(|(_, p)| *p == shop.pools[0])
        .map(|(o, _)| *o)
        .unwrap();
    let waits_before = explain(
        env, db, &format!("fulfill-n{n}-older-order-waits"),
        "SELECT EXISTS (
             SELECT 1 FROM orders o, orders me
             WHERE me.id = $2 AND o.pool_id = $1 AND o.status = 'PAID' AND o.backordered_at IS NOT NULL
               AND (o.paid_at, o.id) < (me.paid_at, me.id))",
        shop.pools[0], Some(newest),
    ).await?;
    let claim_before = explain(
        env,
        db,
        &format!("fulfill-n{n}-claim-before"),
        CLAIM,
        shop.pools[0],
        None,
    )
    .await?;

    let start = Instant::now();
    let mut workers = Vec::new();
    for i in 0..n {
        workers.push(start_worker(
            env,
            db,
            &secrets,
            &format!("fulfill-n{n}-worker{i}"),
        )?);
    }
    let total = cfg.orders as i64;
    let mut first_done: Option<Duration> = None;
    let mut first_done_count = 0i64;
    let mut peak_rss: f64 = 0.0;
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
        for w in workers.iter_mut() {
            w.check_alive(env)?;
        }
        if start.elapsed() > cfg.timeout {
            for w in workers {
                w.kill().await;
            }
            return Err(err(format!(
                "fulfill N={n}: {waiting} of {total} orders still PAID after {:?}",
                cfg.timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for w in &workers {
        if let Some((_, hwm)) = rss_mib(w.pid()) {
            peak_rss = peak_rss.max(hwm);
        }
    }
    for w in workers {
        w.kill().await;
    }

    let (fulfilled, deliveries, distinct): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders WHERE id = ANY($1) AND status = 'FULFILLED'),
                count(*), count(DISTINCT key_id)
         FROM order_deliveries WHERE order_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(&db.pool)
    .await?;
    let jobs: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM apalis.jobs WHERE job_type = $1 GROUP BY status ORDER BY status",
    )
    .bind(<autokey_shared::jobs::FulfillOrder as autokey_shared::jobs::Job>::QUEUE)
    .fetch_all(&db.pool)
    .await?;
    if fulfilled != total || deliveries != total || distinct != total {
        return Err(err(format!(
            "fulfill N={n}: verification failed: {fulfilled} FULFILLED, {deliveries} deliveries, {distinct} distinct keys (expected {total})"
        )));
    }
    // Right after the burn-down (no vacuum yet): the claim on a pool whose oldest keys
    // are now all delivered.
    let claim_after = explain(
        env,
        db,
        &format!("fulfill-n{n}-claim-after"),
        CLAIM,
        shop.pools[0],
        None,
    )
    .await?;
    let secs = finished.as_secs_f64();
    let first = first_done.unwrap_or(finished);
    let steady = if finished > first {
        (total - first_done_count) as f64 / (finished - first).as_secs_f64()
    } else {
        f64::NAN
    };
    eprintln!("fulfill N={n}: {total} orders in {secs:.2} s; jobs by status: {jobs:?}");
    Ok(serde_json::json!({
        "workers": n,
        "concurrency_per_worker": 8,
        "seconds": secs,
        "orders_per_s": total as f64 / secs,
        "first_fulfilled_after_s": first.as_secs_f64(),
        "steady_orders_per_s": steady,
        "fulfilled": fulfilled,
        "deliveries": deliveries,
        "distinct_keys": distinct,
        "jobs_by_status": jobs.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "worker_peak_rss_mib": peak_rss,
        "explain": {
            "claim_before": claim_before,
            "claim_after_burn_down": claim_after,
            "older_order_waits_before": waits_before,
        },
    }))
}

/// worker/src/fulfillment.rs `claim_available`, quantity 1.
const CLAIM: &str = "SELECT id FROM keys WHERE pool_id = $1 AND status = 'AVAILABLE'
         ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED";

/// EXPLAIN (ANALYZE, BUFFERS) of `sql` with bound parameters ($1 = pool, $2 = order), in a
/// transaction rolled back; the plan goes to bench-results/tmp/<label>.txt. Returns the
/// execution time (ms) and the top node's buffer line.
async fn explain(
    env: &Env,
    db: &BenchDb,
    label: &str,
    sql: &str,
    pool_id: Uuid,
    order_id: Option<Uuid>,
) -> Res<serde_json::Value> {
    let mut tx = db.pool.begin().await?;
    let q = format!("EXPLAIN (ANALYZE, BUFFERS) {sql}");
    let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(q)).bind(pool_id);
    if let Some(o) = order_id {
        query = query.bind(o);
    }
    let lines: Vec<String> = query.fetch_all(&mut *tx).await?;
    tx.rollback().await?;
    let text = lines.join("\n");
    std::fs::write(
        env.tmp_dir().join(format!("{label}.txt")),
        format!("{sql}\n\n{text}\n"),
    )?;
    let exec_ms = lines
        .iter()
        .find(|l| l.starts_with("Execution Time:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok());
    let buffers = lines
        .iter()
        .find(|l| l.trim_start().starts_with("Buffers:"))
        .map(|l| l.trim().to_string());
    Ok(serde_json::json!({ "execution_ms": exec_ms, "buffers": buffers }))
}
