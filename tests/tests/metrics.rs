//! Every series of the metrics moves when the api and the worker do their work: requests
//! by route template and status with their latency, orders created, paid, canceled,
//! fulfilled and backordered, the pay -> FULFILLED latency, job attempts, retries, failures
//! and deaths by queue, queue depth and oldest job age, uploaded keys and webhook
//! deliveries. The api's series are read from its GET /metrics, the worker's from the
//! worker's own (as served on METRICS_PORT).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use autokey_shared::jobs::{self, FulfillOrder, Job};
use autokey_tests::{METRICS_TOKEN, TestApp, db, fixtures, spawn_app, test_worker_config};
use axum::{Router, http::StatusCode as AxumStatus, routing::post};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

/// One scrape: (name, labels, value) per sample line.
struct Scrape(Vec<(String, HashMap<String, String>, f64)>, String);

async fn scrape(url: &str) -> Scrape {
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        samples.push((name.to_owned(), labels, value.parse().unwrap()));
    }
    Scrape(samples, text)
}

impl Scrape {
    /// The sum of `name`'s samples having every label of `with` (0 when there is none).
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && with
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
            .sum()
    }
}

/// Asserts `name` (with `with`) grew by at least `by` between the scrapes.
fn grew(before: &Scrape, after: &Scrape, name: &str, with: &[(&str, &str)], by: f64) {
    let (b, a) = (before.sum(name, with), after.sum(name, with));
    assert!(
        a - b >= by,
        "{name}{with:?} went from {b} to {a}, expected +{by}:\n{}",
        after.1
    );
}

async fn order(app: &TestApp, token: &str, offer_id: Uuid, quantity: i32) -> Uuid {
    let r = app
        .post(
            "/orders",
            token,
            json!({"offerId": offer_id, "buyerId": Uuid::new_v4(), "quantity": quantity}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body["id"].as_str().unwrap().parse().unwrap()
}

async fn pay(app: &TestApp, token: &str, id: Uuid) {
    let r = app
        .post(&format!("/orders/{id}/pay"), token, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

const FULFILL: &str = FulfillOrder::QUEUE;
const REPLENISH: &str = "autokey::replenish_pool";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_series_moves() {
    let app = spawn_app().await;
    let api_metrics = format!("{}/metrics", app.base);
    let shop = fixtures::shop(&app, 3).await;
    let storefront = app.storefront().await;

    // A receiver of the storefront's order.fulfilled events.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let receiver = Router::new().route("/hook", post(|| async { AxumStatus::NO_CONTENT }));
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    let r = app
        .post(
            "/webhook-endpoints",
            &storefront,
            json!({"url": hook, "eventTypes": ["order.fulfilled"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    // The worker's metrics server, scraped first once jobs wait (the queue's gauges are
    // read at most every 5 s per process: the api's were read by its first scrape below).
    let worker_metrics = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        let pool = db::pool_for(&app.db_name, 2).await;
        let token = Some(secrecy::SecretString::from(METRICS_TOKEN.to_owned()));
        tokio::spawn(autokey_worker::metrics::serve(listener, pool, token));
        url
    };
    let api_before = scrape(&api_metrics).await;
    // Three keys: `a` and `retried` take one each, `waiting` (2) is backordered until
    // more arrive; `canceled` is canceled.
    let a = order(&app, &storefront, shop.offer_id, 1).await;
    let retried = order(&app, &storefront, shop.offer_id, 1).await;
    let waiting = order(&app, &storefront, shop.offer_id, 2).await;
    let canceled = order(&app, &storefront, shop.offer_id, 1).await;
    pay(&app, &storefront, a).await;
    pay(&app, &storefront, retried).await;
    let r = app
        .post(
            &format!("/orders/{canceled}/cancel"),
            &storefront,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // Keys uploaded over HTTP by a seller of its own.
    let (seller, _) = app.seller().await;
    let pool = app
        .post("/key-pools", &seller, json!({"name": "metrics"}))
        .await;
    let pool_id = pool.body["id"].as_str().unwrap();
    let keys: Vec<String> = (0..10).map(|_| format!("M-{}", Uuid::new_v4())).collect();
    let up = app
        .post_raw(
            &format!("/key-pools/{pool_id}/keys/upload"),
            &seller,
            "text/plain",
            keys.join("\n"),
        )
        .await;
    assert_eq!(up.status, StatusCode::OK, "{:?}", up.body);

    // No worker yet: two jobs wait, the oldest due for over a second (a fulfillment job
    // is due 250 ms after it is enqueued: the fast lane's grace).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let api_after = scrape(&api_metrics).await;
    let worker_before = scrape(&worker_metrics).await;
    let depth = worker_before.sum("autokey_queue_depth", &[("queue", FULFILL)]);
    assert!(depth >= 2.0, "depth {depth}:\n{}", worker_before.1);
    let age = worker_before.sum(
        "autokey_queue_oldest_job_age_seconds",
        &[("queue", FULFILL)],
    );
    assert!(age >= 1.0, "age {age}:\n{}", worker_before.1);
    grew(
        &api_before,
        &api_after,
        "autokey_orders_created_total",
        &[],
        4.0,
    );
    grew(
        &api_before,
        &api_after,
        "autokey_orders_paid_total",
        &[],
        2.0,
    );
    // The orders and pays went through their groups (each request counted once).
    grew(
        &api_before,
        &api_after,
        "autokey_group_size_sum",
        &[("group", "orders")],
        4.0,
    );
    grew(
        &api_before,
        &api_after,
        "autokey_group_size_sum",
        &[("group", "pays")],
        2.0,
    );
    grew(
        &api_before,
        &api_after,
        "autokey_orders_canceled_total",
        &[],
        1.0,
    );
    grew(
        &api_before,
        &api_after,
        "autokey_keys_uploaded_total",
        &[],
        10.0,
    );
    let pay_route = [
        ("method", "POST"),
        ("route", "/orders/{id}/pay"),
        ("status", "200"),
    ];
    grew(
        &api_before,
        &api_after,
        "autokey_http_requests_total",
        &pay_route,
        2.0,
    );
    let created = [("route", "/orders"), ("status", "201")];
    grew(
        &api_before,
        &api_after,
        "autokey_http_requests_total",
        &created,
        4.0,
    );
    let pay_latency = [("method", "POST"), ("route", "/orders/{id}/pay")];
    grew(
        &api_before,
        &api_after,
        "autokey_http_request_duration_seconds_count",
        &pay_latency,
        2.0,
    );
    grew(
        &api_before,
        &api_after,
        "autokey_http_request_duration_seconds_bucket",
        &[("route", "/orders/{id}/pay"), ("le", "+Inf")],
        2.0,
    );
    // Route templates only: no id of an order or a pool is ever a label.
    for id in [a.to_string(), canceled.to_string(), pool_id.to_owned()] {
        assert!(!api_after.1.contains(&id), "{id} in the metrics");
    }

    // `retried`'s row is held, so its job times out on the lock and is retried.
    let mut hold = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(retried)
        .execute(&mut *hold)
        .await
        .unwrap();
    let anonymous = reqwest::get(&worker_metrics).await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let mut config = test_worker_config();
    config.lock_timeout = Duration::from_millis(300);
    config.batch_extra_orders = 0;
    let worker = app.start_worker_with(config);
    app.wait_for_status(a, "FULFILLED", Duration::from_secs(10))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while scrape(&worker_metrics)
        .await
        .sum("autokey_job_retries_total", &[("queue", FULFILL)])
        <= worker_before.sum("autokey_job_retries_total", &[("queue", FULFILL)])
    {
        assert!(
            Instant::now() < deadline,
            "the held order's job was never retried"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hold.rollback().await.unwrap();
    app.wait_for_status(retried, "FULFILLED", Duration::from_secs(15))
        .await;

    // One key left for two: backordered, then served when keys arrive.
    pay(&app, &storefront, waiting).await;
    app.wait_for_job(waiting, "Done", Duration::from_secs(10))
        .await;
    fixtures::add_keys(&app, shop.pool_id, 4).await;
    app.wait_for_status(waiting, "FULFILLED", Duration::from_secs(10))
        .await;

    // A job for an order that does not exist dies at once.
    let ghost = Uuid::now_v7();
    {
        let mut conn = app.pool.acquire().await.unwrap();
        jobs::queue::enqueue(&mut conn, &FulfillOrder::new(ghost))
            .await
            .unwrap();
    }
    app.wait_for_job(ghost, "Killed", Duration::from_secs(10))
        .await;

    // The receiver got order.fulfilled events.
    let deadline = Instant::now() + Duration::from_secs(15);
    let delivered = [("outcome", "delivered")];
    loop {
        let now = scrape(&worker_metrics).await;
        if now.sum("autokey_webhook_deliveries_total", &delivered)
            >= worker_before.sum("autokey_webhook_deliveries_total", &delivered) + 3.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no webhook delivered:\n{}",
            now.1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let w = scrape(&worker_metrics).await;
    grew(
        &worker_before,
        &w,
        "autokey_orders_fulfilled_total",
        &[],
        3.0,
    );
    grew(
        &worker_before,
        &w,
        "autokey_orders_backordered_total",
        &[],
        1.0,
    );
    grew(
        &worker_before,
        &w,
        "autokey_order_pay_to_fulfilled_seconds_count",
        &[],
        3.0,
    );
    grew(
        &worker_before,
        &w,
        "autokey_order_pay_to_fulfilled_seconds_sum",
        &[],
        0.000_001,
    );
    grew(
        &worker_before,
        &w,
        "autokey_job_attempts_total",
        &[("queue", FULFILL)],
        4.0,
    );
    grew(
        &worker_before,
        &w,
        "autokey_job_attempts_total",
        &[("queue", REPLENISH)],
        1.0,
    );
    grew(
        &worker_before,
        &w,
        "autokey_job_retries_total",
        &[("queue", FULFILL)],
        1.0,
    );
    grew(
        &worker_before,
        &w,
        "autokey_job_failures_total",
        &[("queue", FULFILL)],
        2.0,
    );
    grew(
        &worker_before,
        &w,
        "autokey_jobs_died_total",
        &[("queue", FULFILL)],
        1.0,
    );
    grew(
        &worker_before,
        &w,
        "autokey_webhook_deliveries_total",
        &delivered,
        3.0,
    );
    // The api renders the queue's gauges too.
    assert!(
        api_after
            .1
            .contains("autokey_queue_oldest_job_age_seconds{queue=\"autokey::fulfill_order\"}")
    );
    worker.stop().await.unwrap();
}
