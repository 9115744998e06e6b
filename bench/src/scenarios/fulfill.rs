//! `fulfill` (SQL-seeded + ANALYZE): a backlog of PAID orders (quantity 1, over 10 pools),
//! each with its FulfillOrder job, written by bulk SQL and then analyzed, burnt down by N
//! real worker processes; orders/s per N. An extra row next to `drain`, whose backlog is
//! built through the API: this one shows what the same work costs with fresh statistics.

use std::time::{Duration, Instant};

use autokey_shared::transitions::delivery;
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
        let r = one(env, &db, cfg, POOLS, n).await;
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
            "fulfill (SQL-seeded + ANALYZE): {} PAID orders backlog over {POOLS} pools, N worker processes (--concurrency 8)",
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

/// One SQL-seeded burn-down: `cfg.orders` PAID orders with their jobs over `pools`
/// pools (bulk SQL, then VACUUM ANALYZE), `n` worker processes.
pub async fn one(
    env: &Env,
    db: &BenchDb,
    cfg: &Cfg,
    pools: usize,
    n: usize,
) -> Res<serde_json::Value> {
    let secrets = Secrets::generate();
    let vault = secrets.vault();
    let per_pool = cfg.orders.div_ceil(pools);
    let t = Instant::now();
    let shop = seed_shop(&db.pool, &vault, pools, per_pool + 500, DELIVERED_PER_POOL).await?;
    let backlog = seed_orders(&db.pool, &shop, cfg.orders, true).await?;
    let ids: Vec<Uuid> = backlog.iter().map(|(o, _)| *o).collect();
    eprintln!(
        "fulfill N={n}: seeded {} keys and {} PAID orders with jobs in {:.1} s",
        pools * (per_pool + 500 + DELIVERED_PER_POOL),
        cfg.orders,
        t.elapsed().as_secs_f64()
    );

    // Whether an order of pool 0 waits on a backordered one, asked before the run: every
    // order of the pool is PAID (the core's own statement).
    let waits_before = explain(
        env,
        db,
        &format!("fulfill-{pools}p-n{n}-first-waiting"),
        delivery::HELD_AND_FIRST_WAITING,
        shop.pools[0],
        Second::Except(Vec::new()),
    )
    .await?;
    let claim_before = explain(
        env,
        db,
        &format!("fulfill-{pools}p-n{n}-claim-before"),
        delivery::CLAIM_KEYS,
        shop.pools[0],
        Second::Limit(1),
    )
    .await?;

    let mut v = burn_down(
        env,
        db,
        &secrets,
        n,
        &ids,
        &format!("fulfill-{pools}p-n{n}"),
        cfg.timeout,
    )
    .await?;
    // Right after the burn-down (no vacuum yet): the claim on a pool whose oldest keys
    // are now all delivered.
    let claim_after = explain(
        env,
        db,
        &format!("fulfill-{pools}p-n{n}-claim-after"),
        delivery::CLAIM_KEYS,
        shop.pools[0],
        Second::Limit(1),
    )
    .await?;
    v["concurrency_per_worker"] = 8.into();
    v["pools"] = pools.into();
    v["explain"] = serde_json::json!({
        "claim_before": claim_before,
        "claim_after_burn_down": claim_after,
        "first_waiting_before": waits_before,
    });
    Ok(v)
}

/// The second parameter of an explained core statement.
enum Second {
    /// `LIMIT $2` of the key claim.
    Limit(i64),
    /// `id <> ALL($2)` of the first waiting order.
    Except(Vec<Uuid>),
}

/// EXPLAIN (ANALYZE, BUFFERS) of `sql` with bound parameters ($1 = pool, $2 = order), in a
/// transaction rolled back; the plan goes to bench-results/tmp/<label>.txt. Returns the
/// execution time (ms) and the top node's buffer line.
async fn explain(
    env: &Env,
    db: &BenchDb,
    label: &str,
    sql: &str,
    pool_id: Uuid,
    second: Second,
) -> Res<serde_json::Value> {
    let mut tx = db.pool.begin().await?;
    let q = format!("EXPLAIN (ANALYZE, BUFFERS) {sql}");
    let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(q)).bind(pool_id);
    query = match second {
        Second::Limit(n) => query.bind(n),
        Second::Except(ids) => query.bind(ids),
    };
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
