//! `drain`: a backlog built through the API, then burnt down. On a fresh database (no
//! ANALYZE, no VACUUM, autovacuum at its defaults) the seller creates pools, uploads keys
//! and publishes offers over HTTP; storefront and buyer tokens create and pay `orders`
//! orders with no worker running; then `workers` worker processes start and the bench
//! measures orders/s until no order is PAID. Two shapes: over 10 pools, and a hot pool (a
//! launch: every order on one offer). Each is followed, unless `--no-sql-seeded`, by the
//! same backlog written by bulk SQL + ANALYZE (`fulfill`'s seeding), labelled so.

use std::{sync::Arc, time::Duration};

use crate::{common::*, front::*, scenarios::fulfill};

pub struct Cfg {
    pub orders: usize,
    pub pools: usize,
    pub clients: usize,
    pub buyers: usize,
    pub workers: usize,
    pub sql_seeded: bool,
    pub timeout: Duration,
}

/// Keys uploaded per pool beyond the orders it will get.
const KEY_MARGIN: usize = 500;

pub async fn run(env: &Env, cfg: &Cfg) -> Res<serde_json::Value> {
    let mut rows = Vec::new();
    let mut out = Vec::new();
    let shapes = [("10 pools", cfg.pools, 10_000.0), ("hot pool", 1, 5_000.0)];
    for (shape, pools, target) in shapes {
        let api = api_one(env, cfg, shape, pools).await?;
        let api_rate = api["drain"]["orders_per_s"].as_f64().unwrap_or(f64::NAN);
        rows.push(row(shape, "API", pools, cfg, &api, target));
        let sql = if cfg.sql_seeded {
            let db = BenchDb::create(env, 6).await?;
            let fcfg = fulfill::Cfg {
                orders: cfg.orders,
                workers: vec![cfg.workers],
                timeout: cfg.timeout,
            };
            let r = fulfill::one(env, &db, &fcfg, pools, cfg.workers).await;
            db.drop_now().await;
            let v = r?;
            let sql_rate = v["orders_per_s"].as_f64().unwrap_or(f64::NAN);
            let wrapped = serde_json::json!({ "drain": v });
            rows.push(row(
                shape,
                "SQL-seeded + ANALYZE",
                pools,
                cfg,
                &wrapped,
                target,
            ));
            rows.last_mut().unwrap()[9] = format!("{:.2} (API/SQL)", api_rate / sql_rate);
            Some(v)
        } else {
            None
        };
        let ratio = sql
            .as_ref()
            .and_then(|v| v["orders_per_s"].as_f64())
            .map(|s| api_rate / s);
        out.push(serde_json::json!({
            "shape": shape, "pools": pools, "api_built": api, "sql_seeded_analyzed": sql,
            "api_over_sql_seeded": ratio, "target_orders_per_s": target,
            "target_met": api_rate >= target && ratio.is_none_or(|r| r >= 0.6),
        }));
    }
    print_table(
        &format!(
            "drain: {} orders created + paid over HTTP with no worker, then {} worker process(es) start; \
             orders/s until none is PAID (targets: >= 10k/s over 10 pools, >= 5k/s hot pool, API >= 60% of SQL-seeded)",
            cfg.orders, cfg.workers
        ),
        &[
            "backlog",
            "built by",
            "pools",
            "orders",
            "intake pairs/s (no worker)",
            "drain s",
            "orders/s",
            "after 1st orders/s",
            "worker peak RSS MiB",
            "target met",
        ],
        &rows,
    );
    let results = serde_json::json!({
        "orders": cfg.orders, "clients": cfg.clients, "buyers": cfg.buyers,
        "workers": cfg.workers, "shapes": out,
        "api_settings_changed": API_BENCH_LIMITS.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
    });
    let db = BenchDb::create(env, 2).await?;
    let r = record(env, &db.pool, "drain", results.clone()).await;
    db.drop_now().await;
    r?;
    Ok(results)
}

fn row(
    shape: &str,
    by: &str,
    pools: usize,
    cfg: &Cfg,
    v: &serde_json::Value,
    target: f64,
) -> Vec<String> {
    let d = &v["drain"];
    let rate = d["orders_per_s"].as_f64().unwrap_or(f64::NAN);
    vec![
        shape.to_string(),
        by.to_string(),
        pools.to_string(),
        d["orders"]
            .as_i64()
            .unwrap_or(cfg.orders as i64)
            .to_string(),
        v["intake"]["pairs_per_s"]
            .as_f64()
            .map(f0)
            .unwrap_or_else(|| "-".into()),
        f2(d["seconds"].as_f64().unwrap_or(f64::NAN)),
        f0(rate),
        f0(d["steady_orders_per_s"].as_f64().unwrap_or(f64::NAN)),
        f1(d["worker_peak_rss_mib"].as_f64().unwrap_or(f64::NAN)),
        if by == "API" {
            if rate >= target { "met" } else { "NOT met" }.to_string()
        } else {
            String::new()
        },
    ]
}

async fn api_one(env: &Env, cfg: &Cfg, shape: &str, pools: usize) -> Res<serde_json::Value> {
    let label = format!("drain-{}p", pools);
    let front = Arc::new(Front::start(env, &label, cfg.buyers).await?);
    let r = api_body(env, cfg, shape, pools, &front, &label).await;
    if let Ok(f) = Arc::try_unwrap(front) {
        f.close().await;
    }
    r
}

async fn api_body(
    env: &Env,
    cfg: &Cfg,
    shape: &str,
    pools: usize,
    front: &Arc<Front>,
    label: &str,
) -> Res<serde_json::Value> {
    let per_pool = cfg.orders.div_ceil(pools) + KEY_MARGIN;
    let shop = front.shop(pools, per_pool).await?;
    eprintln!(
        "drain {shape}: {} keys uploaded over HTTP in {:.1} s ({:.0} keys/s)",
        shop.keys,
        shop.upload_secs,
        shop.keys as f64 / shop.upload_secs
    );
    let intake = create_and_pay(front, &shop.offers, cfg.clients, Until::Count(cfg.orders)).await;
    intake.report_error(&format!("drain {shape} intake"));
    let counts = front.status_counts().await?;
    let paid = counts.get("PAID").copied().unwrap_or(0);
    eprintln!(
        "drain {shape}: {} orders created + paid over HTTP in {:.1} s ({:.0} pairs/s, {} errors); by status: {counts:?}",
        intake.ok,
        intake.secs,
        intake.per_s(),
        intake.errors
    );
    if paid as u64 != intake.ok {
        return Err(err(format!(
            "drain {shape}: {paid} orders PAID but {} pays answered 200",
            intake.ok
        )));
    }
    let stats_before = front.table_stats().await?;
    let drain = burn_down(
        env,
        &front.db,
        &front.secrets,
        cfg.workers,
        &intake.order_ids(),
        label,
        cfg.timeout,
    )
    .await?;
    let stats_after = front.table_stats().await?;
    Ok(serde_json::json!({
        "keys_uploaded": shop.keys,
        "upload_keys_per_s": shop.keys as f64 / shop.upload_secs,
        "intake": {
            "clients": cfg.clients, "pairs": intake.ok, "errors": intake.errors,
            "first_error": intake.first_error, "seconds": intake.secs,
            "pairs_per_s": intake.per_s(), "pair_p50_ms": intake.p(50.0), "pair_p99_ms": intake.p(99.0),
        },
        "table_stats_before_drain": stats_before,
        "table_stats_after_drain": stats_after,
        "drain": drain,
    }))
}
