//! `latency`: api + 1 worker running; PENDING orders paid at a steady rate with the api's
//! own `mark_paid` (PENDING -> PAID + FulfillOrder job, one transaction); latency from the
//! pay commit to the worker's ORDER_FULFILLED_CHANNEL notification.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use autokey_shared::model::ORDER_FULFILLED_CHANNEL;
use sqlx::postgres::PgListener;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::common::*;

const POOLS: usize = 10;
/// Pays in flight at most (a connection each).
const IN_FLIGHT: usize = 32;

pub async fn run(env: &Env, rates: &[u64], phase: Duration) -> Res<serde_json::Value> {
    let db = BenchDb::create(env, IN_FLIGHT as u32 + 4).await?;
    let result = body(env, &db, rates, phase).await;
    db.drop_now().await;
    result
}

type Times = Arc<Mutex<HashMap<Uuid, Instant>>>;

async fn body(env: &Env, db: &BenchDb, rates: &[u64], phase: Duration) -> Res<serde_json::Value> {
    let secrets = Secrets::generate();
    let vault = secrets.vault();
    let total: usize = rates.iter().map(|r| (*r * phase.as_secs()) as usize).sum();
    let shop = seed_shop(&db.pool, &vault, POOLS, total / POOLS + 500, 500).await?;
    let pending = seed_orders(&db.pool, &shop, total, false, false).await?;
    eprintln!("latency: seeded {total} PENDING orders");

    let port = free_port()?;
    let api = start_api(env, db, &secrets, port, "latency-api").await?;
    let mut worker = start_worker(env, db, &secrets, "latency-worker")?;
    // Let the worker register and go idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.check_alive(env)?;

    let arrivals: Times = Arc::default();
    let mut listener = PgListener::connect_with(&db.pool).await?;
    listener.listen(ORDER_FULFILLED_CHANNEL).await?;
    let arr = arrivals.clone();
    let listen_task = tokio::spawn(async move {
        while let Ok(note) = listener.recv().await {
            let now = Instant::now();
            if let Ok(id) = note.payload().parse::<Uuid>() {
                arr.lock().unwrap().entry(id).or_insert(now);
            }
        }
    });

    let mut rows = Vec::new();
    let mut out = Vec::new();
    let mut next = 0usize;
    for &rate in rates {
        let n = (rate * phase.as_secs()) as usize;
        let orders: Vec<Uuid> = pending[next..next + n].iter().map(|(o, _)| *o).collect();
        next += n;
        let commits: Times = Arc::default();
        let sem = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut late_starts = 0usize;
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for (i, order_id) in orders.iter().copied().enumerate() {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
            if tokio::time::Instant::now() > due + Duration::from_millis(5) {
                late_starts += 1;
            }
            let permit = sem.clone().acquire_owned().await.unwrap();
            let pool = db.pool.clone();
            let commits = commits.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                let mut tx = pool.begin().await?;
                let paid = autokey_shared::transitions::pay(&mut tx, order_id, Some("bench"))
                    .await
                    .map_err(|e| sqlx::Error::Protocol(e.to_string()))?
                    .is_some();
                tx.commit().await?;
                let at = Instant::now();
                if paid {
                    commits.lock().unwrap().insert(order_id, at);
                }
                Ok::<bool, sqlx::Error>(paid)
            }));
        }
        let mut pay_errors = 0;
        for t in tasks {
            if !matches!(t.await, Ok(Ok(true))) {
                pay_errors += 1;
            }
        }
        let pay_secs = start.elapsed().as_secs_f64();
        // Drain: wait for the last notifications (bounded).
        let drain_deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let missing = {
                let c = commits.lock().unwrap();
                let a = arrivals.lock().unwrap();
                c.keys().filter(|id| !a.contains_key(id)).count()
            };
            if missing == 0 || Instant::now() > drain_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let drained_after = start.elapsed().as_secs_f64();
        let (mut lat, missing) = {
            let c = commits.lock().unwrap();
            let a = arrivals.lock().unwrap();
            let mut lat = Vec::with_capacity(c.len());
            let mut missing = 0;
            for (id, at) in c.iter() {
                match a.get(id) {
                    // The notification can beat our own commit acknowledgement: count 0.
                    Some(got) => {
                        lat.push(got.saturating_duration_since(*at).as_secs_f64() * 1000.0)
                    }
                    None => missing += 1,
                }
            }
            (lat, missing)
        };
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (p50, p95, p99) = (
            percentile(&lat, 50.0),
            percentile(&lat, 95.0),
            percentile(&lat, 99.0),
        );
        let max = lat.last().copied().unwrap_or(f64::NAN);
        let split = breakdown(&db.pool, &orders).await?;
        let achieved = n as f64 / pay_secs;
        worker.check_alive(env)?;
        rows.push(vec![
            rate.to_string(),
            f0(achieved),
            lat.len().to_string(),
            f2(p50),
            f2(p95),
            f2(p99),
            f2(max),
            split.lane.to_string(),
            split.batched.to_string(),
            split.queue.to_string(),
            missing.to_string(),
            pay_errors.to_string(),
        ]);
        out.push(serde_json::json!({
            "rate_per_s": rate, "seconds": phase.as_secs(), "achieved_pay_rate_per_s": achieved,
            "measured": lat.len(), "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "max_ms": max,
            "not_fulfilled_within_30s_drain": missing, "pay_errors": pay_errors,
            "late_pay_starts": late_starts, "drained_after_s": drained_after,
            "served_by_fast_lane": split.lane, "served_in_a_batch": split.batched,
            "served_by_queue_fetch": split.queue,
        }));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    listen_task.abort();
    let (_, api_hwm) = rss_mib(api.pid()).unwrap_or_default();
    let (_, worker_hwm) = rss_mib(worker.pid()).unwrap_or_default();
    api.kill().await;
    worker.kill().await;
    print_table(
        "latency: pay commit -> FULFILLED notification, api + 1 worker (--concurrency 8), ms (target p50 <= 3, p99 <= 15 at 200/s); via = which path served the orders (fast lane, another order's batch, the queue's fetch)",
        &[
            "rate/s",
            "achieved/s",
            "orders",
            "p50",
            "p95",
            "p99",
            "max",
            "via lane",
            "batched",
            "via queue",
            "not fulfilled",
            "pay errors",
        ],
        &rows,
    );
    let results = serde_json::json!({ "phases": out, "api_peak_rss_mib": api_hwm, "worker_peak_rss_mib": worker_hwm });
    record(env, &db.pool, "latency", results.clone()).await?;
    Ok(results)
}

/// Which path served the orders: the worker's fast lane, another order's batch, or a
/// job fetched by the queue's own workers (apalis), from the jobs' recorded results.
struct Breakdown {
    lane: i64,
    batched: i64,
    queue: i64,
}

async fn breakdown(db: &sqlx::PgPool, orders: &[Uuid]) -> Res<Breakdown> {
    let row: (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE r = 'served by the fast lane'),
                count(*) FILTER (WHERE r = 'served in a batch'),
                count(*) FILTER (WHERE r IS DISTINCT FROM 'served by the fast lane'
                                   AND r IS DISTINCT FROM 'served in a batch')
         FROM (SELECT j.last_result ->> 'Ok' AS r
               FROM orders o
               JOIN apalis.jobs j ON j.job_type = $2 AND j.idempotency_key = o.id::text
               WHERE o.id = ANY($1) AND o.status = 'FULFILLED') t",
    )
    .bind(orders)
    .bind(<autokey_shared::jobs::FulfillOrder as autokey_shared::jobs::Job>::QUEUE)
    .fetch_one(db)
    .await?;
    Ok(Breakdown {
        lane: row.0,
        batched: row.1,
        queue: row.2,
    })
}
