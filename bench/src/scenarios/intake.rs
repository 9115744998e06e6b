//! `intake`: POST /orders + POST /orders/:id/pay over HTTP (keep-alive, storefront token)
//! at several concurrency levels, with 1 worker fulfilling behind; then GET /orders/:id
//! polling.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use autokey_shared::{model::Role, store::tokens};
use uuid::Uuid;

use crate::common::*;

const POOLS: usize = 10;
const KEYS_PER_POOL: usize = 10_000;
const POLL_CONCURRENCY: usize = 32;

pub async fn run(env: &Env, levels: &[usize], phase: Duration) -> Res<serde_json::Value> {
    let db = BenchDb::create(env, 4).await?;
    let result = body(env, &db, levels, phase).await;
    db.drop_now().await;
    result
}

#[derive(Default)]
struct Sample {
    intakes: u64,
    create_ms: Vec<f64>,
    pay_ms: Vec<f64>,
    pair_ms: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
    ids: Vec<Uuid>,
}

async fn body(
    env: &Env,
    db: &BenchDb,
    levels: &[usize],
    phase: Duration,
) -> Res<serde_json::Value> {
    let secrets = Secrets::generate();
    let vault = secrets.vault();
    let shop = seed_shop(&db.pool, &vault, POOLS, KEYS_PER_POOL, 500).await?;
    let token = {
        let mut conn = db.pool.acquire().await?;
        tokens::create_token(&mut conn, Role::Storefront, None)
            .await?
            .token
    };
    let port = free_port()?;
    let api = start_api(env, db, &secrets, port, "intake-api").await?;
    let mut worker = start_worker(env, db, &secrets, "intake-worker")?;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(10))
        .build()?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut rows = Vec::new();
    let mut out = Vec::new();
    let mut all_ids: Vec<Uuid> = Vec::new();
    for &c in levels {
        let sample = Arc::new(Mutex::new(Sample::default()));
        let start = Instant::now();
        let end = start + phase;
        let mut tasks = Vec::new();
        for v in 0..c {
            let client = client.clone();
            let base = base.clone();
            let token = token.clone();
            let offers = shop.offers.clone();
            let sample = sample.clone();
            tasks.push(tokio::spawn(async move {
                let mut local = Sample::default();
                let mut i = v;
                while Instant::now() < end {
                    i += 1;
                    let offer = offers[i % offers.len()];
                    let t0 = Instant::now();
                    let created = client
                        .post(format!("{base}/orders"))
                        .bearer_auth(&token)
                        .json(&serde_json::json!({ "offerId": offer, "buyerId": Uuid::new_v4() }))
                        .send()
                        .await;
                    let t1 = Instant::now();
                    let id = match created {
                        Ok(r) if r.status().as_u16() == 201 => {
                            let body: serde_json::Value = r.json().await.unwrap_or_default();
                            body["id"].as_str().and_then(|s| s.parse::<Uuid>().ok())
                        }
                        Ok(r) => {
                            local.first_error.get_or_insert(format!(
                                "POST /orders: {} {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            ));
                            None
                        }
                        Err(e) => {
                            local
                                .first_error
                                .get_or_insert(format!("POST /orders: {e}"));
                            None
                        }
                    };
                    let Some(id) = id else {
                        local.errors += 1;
                        continue;
                    };
                    let t1b = Instant::now();
                    let paid = client
                        .post(format!("{base}/orders/{id}/pay"))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    let t2 = Instant::now();
                    match paid {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            local.intakes += 1;
                            local.create_ms.push((t1 - t0).as_secs_f64() * 1000.0);
                            local.pay_ms.push((t2 - t1b).as_secs_f64() * 1000.0);
                            local.pair_ms.push((t2 - t0).as_secs_f64() * 1000.0);
                            local.ids.push(id);
                        }
                        Ok(r) => {
                            local.errors += 1;
                            local.first_error.get_or_insert(format!(
                                "pay: {} {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            ));
                        }
                        Err(e) => {
                            local.errors += 1;
                            local.first_error.get_or_insert(format!("pay: {e}"));
                        }
                    }
                }
                let mut s = sample.lock().unwrap();
                s.intakes += local.intakes;
                s.errors += local.errors;
                s.create_ms.extend(local.create_ms);
                s.pay_ms.extend(local.pay_ms);
                s.pair_ms.extend(local.pair_ms);
                s.ids.extend(local.ids);
                if s.first_error.is_none() {
                    s.first_error = local.first_error;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let secs = start.elapsed().as_secs_f64();
        let mut s = std::mem::take(&mut *sample.lock().unwrap());
        for v in [&mut s.create_ms, &mut s.pay_ms, &mut s.pair_ms] {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        }
        let intakes_s = s.intakes as f64 / secs;
        let backlog: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PAID'")
            .fetch_one(&db.pool)
            .await?;
        worker.check_alive(env)?;
        if let Some(e) = &s.first_error {
            eprintln!("intake c={c}: first error: {e}");
        }
        rows.push(vec![
            c.to_string(),
            f0(intakes_s),
            f0(intakes_s * 2.0),
            f2(percentile(&s.create_ms, 50.0)),
            f2(percentile(&s.create_ms, 99.0)),
            f2(percentile(&s.pay_ms, 99.0)),
            f2(percentile(&s.pair_ms, 99.0)),
            s.errors.to_string(),
            backlog.to_string(),
        ]);
        out.push(serde_json::json!({
            "concurrency": c, "seconds": secs, "intakes": s.intakes, "intakes_per_s": intakes_s,
            "requests_per_s": intakes_s * 2.0,
            "create_p50_ms": percentile(&s.create_ms, 50.0), "create_p99_ms": percentile(&s.create_ms, 99.0),
            "pay_p50_ms": percentile(&s.pay_ms, 50.0), "pay_p99_ms": percentile(&s.pay_ms, 99.0),
            "pair_p99_ms": percentile(&s.pair_ms, 99.0), "errors": s.errors,
            "first_error": s.first_error, "paid_backlog_at_end": backlog,
        }));
        all_ids.extend(s.ids);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    print_table(
        "intake: POST /orders + POST /orders/:id/pay over HTTP (1 worker fulfilling behind), latencies in ms (target >= 5000 intakes/s)",
        &[
            "concurrency",
            "intakes/s",
            "req/s",
            "create p50",
            "create p99",
            "pay p99",
            "pair p99",
            "errors",
            "PAID backlog at end",
        ],
        &rows,
    );

    // GET /orders/:id polling over the orders just created (most are FULFILLED by now:
    // the response decrypts their keys and writes an audit row, as the API specifies).
    let poll = if all_ids.is_empty() {
        serde_json::Value::Null
    } else {
        let ids = Arc::new(all_ids);
        let start = Instant::now();
        let end = start + phase;
        let mut tasks = Vec::new();
        for v in 0..POLL_CONCURRENCY {
            let (client, base, token, ids) =
                (client.clone(), base.clone(), token.clone(), ids.clone());
            tasks.push(tokio::spawn(async move {
                let mut ok = 0u64;
                let mut errors = 0u64;
                let mut lat = Vec::new();
                let mut i = v * 7919;
                while Instant::now() < end {
                    i = (i + 104_729) % ids.len();
                    let t0 = Instant::now();
                    match client
                        .get(format!("{base}/orders/{}", ids[i]))
                        .bearer_auth(&token)
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            ok += 1;
                            lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                        }
                        _ => errors += 1,
                    }
                }
                (ok, errors, lat)
            }));
        }
        let (mut ok, mut errors, mut lat) = (0, 0, Vec::new());
        for t in tasks {
            if let Ok((o, e, l)) = t.await {
                ok += o;
                errors += e;
                lat.extend(l);
            }
        }
        let secs = start.elapsed().as_secs_f64();
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let fulfilled: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'FULFILLED' AND created_at > now() - interval '1 hour'")
            .fetch_one(&db.pool)
            .await?;
        print_table(
            "intake: GET /orders/:id polling (orders created above), ms",
            &[
                "concurrency",
                "req/s",
                "p50",
                "p99",
                "errors",
                "fulfilled orders polled over",
            ],
            &[vec![
                POLL_CONCURRENCY.to_string(),
                f0(ok as f64 / secs),
                f2(percentile(&lat, 50.0)),
                f2(percentile(&lat, 99.0)),
                errors.to_string(),
                format!("{fulfilled} of {}", ids.len()),
            ]],
        );
        serde_json::json!({
            "concurrency": POLL_CONCURRENCY, "requests_per_s": ok as f64 / secs,
            "p50_ms": percentile(&lat, 50.0), "p99_ms": percentile(&lat, 99.0), "errors": errors,
            "orders": ids.len(), "fulfilled_orders": fulfilled,
        })
    };
    let (_, api_hwm) = rss_mib(api.pid()).unwrap_or_default();
    api.kill().await;
    worker.kill().await;
    let results =
        serde_json::json!({ "levels": out, "get_polling": poll, "api_peak_rss_mib": api_hwm });
    record(env, &db.pool, "intake", results.clone()).await?;
    Ok(results)
}
