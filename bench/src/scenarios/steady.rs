//! `steady`: the api and one worker running on a shop built over HTTP; orders arrive at a
//! constant rate (open loop: arrival i is due at i/rate s, whatever the answers before it)
//! and each is created, paid and then fetched with `POST /orders/:id/fulfill?wait=`, by
//! storefront and buyer tokens. pay -> fulfilled latency twice: from the database's own
//! timestamps (orders.paid_at -> orders.fulfilled_at, each the start of its transaction),
//! and at the client (pay response received -> fulfill answer received).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::{common::*, front::*};

pub struct Cfg {
    pub rates: Vec<u64>,
    pub seconds: u64,
    pub pools: usize,
    pub buyers: usize,
    pub max_in_flight: usize,
    pub wait: u64,
}

/// One arrival's client-side timings (ms) and the fulfill answer's status.
struct Arrival {
    id: Uuid,
    create_ms: f64,
    pay_ms: f64,
    client_ms: f64,
    status: u16,
}

pub async fn run(env: &Env, cfg: &Cfg) -> Res<serde_json::Value> {
    let front = Arc::new(Front::start(env, "steady", cfg.buyers).await?);
    let r = body(env, cfg, &front).await;
    if let Ok(f) = Arc::try_unwrap(front) {
        f.close().await;
    }
    r
}

async fn body(env: &Env, cfg: &Cfg, front: &Arc<Front>) -> Res<serde_json::Value> {
    let total: usize = cfg.rates.iter().map(|r| (*r * cfg.seconds) as usize).sum();
    let shop = front
        .shop(cfg.pools, total.div_ceil(cfg.pools) + 500)
        .await?;
    eprintln!(
        "steady: {} keys uploaded over HTTP in {:.1} s",
        shop.keys, shop.upload_secs
    );
    let mut worker = start_worker(env, &front.db, &front.secrets, "steady-worker")?;
    // Let the worker register and go idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.check_alive(env)?;

    let mut rows = Vec::new();
    let mut out = Vec::new();
    let mut base = 0usize;
    for &rate in &cfg.rates {
        let n = (rate * cfg.seconds) as usize;
        let arrivals: Arc<Mutex<Vec<Arrival>>> = Arc::default();
        let errors: Arc<Mutex<(u64, Option<String>)>> = Arc::default();
        let sem = Arc::new(Semaphore::new(cfg.max_in_flight));
        let mut late_starts = 0usize;
        let mut max_late_ms = 0f64;
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(n);
        let window_end = start + Duration::from_secs(cfg.seconds);
        let mut not_issued = 0usize;
        for i in 0..n {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
            // At most `max_in_flight` arrivals wait for answers; an arrival that cannot
            // start before the window closes is not sent (the rate was not sustained).
            let permit =
                match tokio::time::timeout_at(window_end, sem.clone().acquire_owned()).await {
                    Ok(p) => p.unwrap(),
                    Err(_) => {
                        not_issued = n - i;
                        break;
                    }
                };
            let late = tokio::time::Instant::now().saturating_duration_since(due);
            if late > Duration::from_millis(5) {
                late_starts += 1;
            }
            max_late_ms = max_late_ms.max(late.as_secs_f64() * 1000.0);
            let (f, offers) = (front.clone(), shop.offers.clone());
            let (arrivals, errors) = (arrivals.clone(), errors.clone());
            let wait = cfg.wait;
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let who = f.who(base + i);
                let r = async {
                    let t0 = Instant::now();
                    let id = f.create_order(&who, offers[i % offers.len()]).await?;
                    let t1 = Instant::now();
                    f.pay(&who, id).await?;
                    let t2 = Instant::now();
                    let status = f.fulfill(&who, id, wait).await?;
                    let t3 = Instant::now();
                    Ok::<_, String>(Arrival {
                        id,
                        create_ms: ms(t1 - t0),
                        pay_ms: ms(t2 - t1),
                        client_ms: ms(t3 - t2),
                        status,
                    })
                }
                .await;
                match r {
                    Ok(a) => arrivals.lock().unwrap().push(a),
                    Err(e) => {
                        let mut g = errors.lock().unwrap();
                        g.0 += 1;
                        g.1.get_or_insert(e);
                    }
                }
            }));
        }
        let issued_secs = start.elapsed().as_secs_f64();
        for t in tasks {
            let _ = t.await;
        }
        let done_secs = start.elapsed().as_secs_f64();
        base += n;
        worker.check_alive(env)?;
        let arrivals = std::mem::take(&mut *arrivals.lock().unwrap());
        let (errs, first_error) = errors.lock().unwrap().clone();
        if let Some(e) = &first_error {
            eprintln!("steady {rate}/s: {errs} errors; first: {e}");
        }
        let ids: Vec<Uuid> = arrivals.iter().map(|a| a.id).collect();
        let not_fulfilled_in_wait = arrivals.iter().filter(|a| a.status != 200).count();
        let sorted = |f: fn(&Arrival) -> f64| {
            let mut v: Vec<f64> = arrivals.iter().map(f).collect();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v
        };
        let client: Vec<f64> = {
            let mut v: Vec<f64> = arrivals
                .iter()
                .filter(|a| a.status == 200)
                .map(|a| a.client_ms)
                .collect();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v
        };
        let create = sorted(|a| a.create_ms);
        let pay = sorted(|a| a.pay_ms);
        let db_ms = {
            let mut conn = front.db.pool.acquire().await?;
            autokey_shared::store::orders::pay_to_fulfilled_ms(&mut conn, &ids).await?
        };
        let split = breakdown(&front.db.pool, &ids).await?;
        let achieved = (n - not_issued) as f64 / issued_secs;
        let target = rate == 200;
        let (db50, db99, c50) = (
            percentile(&db_ms, 50.0),
            percentile(&db_ms, 99.0),
            percentile(&client, 50.0),
        );
        rows.push(vec![
            rate.to_string(),
            f0(achieved),
            format!("{} of {n}", arrivals.len()),
            f2(db50),
            f2(percentile(&db_ms, 95.0)),
            f2(db99),
            f2(c50),
            f2(percentile(&client, 99.0)),
            f2(percentile(&create, 50.0)),
            f2(percentile(&pay, 50.0)),
            format!("{}/{}/{}", split.0, split.1, split.2),
            (errs as usize + not_fulfilled_in_wait).to_string(),
            if target {
                let met = db50 <= 3.0 && db99 <= 15.0 && c50 <= 6.0;
                if met { "met" } else { "NOT met" }.to_string()
            } else {
                "-".into()
            },
        ]);
        out.push(serde_json::json!({
            "rate_per_s": rate, "seconds": cfg.seconds, "arrivals": n,
            "not_issued_in_window": not_issued,
            "achieved_arrival_rate_per_s": achieved, "all_answered_after_s": done_secs,
            "late_starts_over_5ms": late_starts, "max_start_delay_ms": max_late_ms,
            "completed": arrivals.len(), "errors": errs, "first_error": first_error,
            "not_fulfilled_within_wait": not_fulfilled_in_wait,
            "db_pay_to_fulfilled_ms": { "measured": db_ms.len(), "p50": db50,
                "p95": percentile(&db_ms, 95.0), "p99": db99, "max": db_ms.last().copied() },
            "client_pay_to_fulfill_answer_ms": { "measured": client.len(), "p50": c50,
                "p95": percentile(&client, 95.0), "p99": percentile(&client, 99.0),
                "max": client.last().copied() },
            "create_ms": { "p50": percentile(&create, 50.0), "p99": percentile(&create, 99.0) },
            "pay_ms": { "p50": percentile(&pay, 50.0), "p99": percentile(&pay, 99.0) },
            "served_by_fast_lane": split.0, "served_in_a_batch": split.1,
            "served_by_queue_fetch": split.2,
        }));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (_, api_hwm) = rss_mib(front.api.pid()).unwrap_or_default();
    let (_, worker_hwm) = rss_mib(worker.pid()).unwrap_or_default();
    let stats = front.table_stats().await?;
    worker.kill().await;
    print_table(
        &format!(
            "steady: orders created + paid + fetched with fulfill?wait={} at a constant rate for {} s, api + 1 worker, ms \
             (targets at 200/s: db p50 <= 3, db p99 <= 15, client p50 <= 6); via = fast lane/batch/queue",
            cfg.wait, cfg.seconds
        ),
        &[
            "rate/s",
            "achieved/s",
            "orders done",
            "db p50",
            "db p95",
            "db p99",
            "client p50",
            "client p99",
            "create p50",
            "pay p50",
            "via",
            "errors + not fulfilled",
            "target met",
        ],
        &rows,
    );
    let results = serde_json::json!({
        "phases": out, "pools": cfg.pools, "max_in_flight": cfg.max_in_flight,
        "api_peak_rss_mib": api_hwm, "worker_peak_rss_mib": worker_hwm,
        "table_stats_at_end": stats,
        "api_settings_changed": API_BENCH_LIMITS.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
    });
    record(env, &front.db.pool, "steady", results.clone()).await?;
    Ok(results)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Which path served the orders (fast lane, another order's batch, the queue's fetch),
/// from the jobs' recorded results.
async fn breakdown(db: &sqlx::PgPool, orders: &[Uuid]) -> Res<(i64, i64, i64)> {
    let mut conn = db.acquire().await?;
    Ok(autokey_shared::jobs::queue::fulfillment_breakdown(&mut conn, orders).await?)
}
