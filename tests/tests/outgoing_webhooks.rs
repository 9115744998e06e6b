//! Outgoing webhooks: registration rules, signatures checked by the official Standard
//! Webhooks library, retries with backoff, disabling, ordered exactly-once delivery of a
//! thousand events, the test route and the delivery log, and fulfillment that never waits
//! for a receiver.

use std::{
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use autokey_tests::{AppOptions, TestApp, fixtures, spawn_app, spawn_app_with};
use axum::{Router, body::Bytes, http::HeaderMap, http::StatusCode as AxumStatus, routing::post};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

/// A local receiver: records each request's webhook-id and body; answers 500 to the first
/// `fail_first` requests, and waits `delay` before answering.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(String, Value)>>>,
    calls: Arc<AtomicUsize>,
}

async fn receiver(fail_first: usize, delay: Duration) -> Receiver {
    let got = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (g, c) = (got.clone(), calls.clone());
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let (g, c) = (g.clone(), c.clone());
            async move {
                tokio::time::sleep(delay).await;
                if c.fetch_add(1, Ordering::SeqCst) < fail_first {
                    return AxumStatus::INTERNAL_SERVER_ERROR;
                }
                let id = headers["webhook-id"].to_str().unwrap().to_owned();
                g.lock()
                    .unwrap()
                    .push((id, serde_json::from_slice(&body).unwrap()));
                AxumStatus::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        url: format!("http://{addr}/hook"),
        got,
        calls,
    }
}

/// A new pool of the seller's with `n` keys; their ids.
async fn pool_of_keys(app: &TestApp, seller: &str, n: usize) -> Vec<Uuid> {
    let r = app.post("/key-pools", seller, json!({ "name": "p" })).await;
    let pool: Uuid = r.body["id"].as_str().unwrap().parse().unwrap();
    fixtures::add_keys(app, pool, n).await;
    sqlx::query_scalar("SELECT id FROM keys WHERE pool_id = $1")
        .bind(pool)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

async fn register(app: &TestApp, token: &str, url: &str, types: &[&str]) -> (Uuid, String) {
    let r = app
        .post(
            "/webhook-endpoints",
            token,
            json!({ "url": url, "eventTypes": types }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    (r.body["id"].as_str().unwrap().parse().unwrap(), secret)
}

async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn endpoints_need_public_http_urls_known_event_types_and_the_right_role() {
    let app = spawn_app_with(AppOptions {
        webhook_allow_private_urls: false,
        ..AppOptions::default()
    })
    .await;
    let (seller, _) = app.seller().await;
    for (url, types) in [
        ("ftp://example.com/hook", json!(["order.paid"])),
        ("http://127.0.0.1:9/hook", json!(["order.paid"])),
        ("http://169.254.169.254/latest", json!(["order.paid"])),
        ("http://[::1]/hook", json!(["order.paid"])),
        ("https://hooks.example.com/x", json!(["order.exploded"])),
        ("https://hooks.example.com/x", json!([])),
    ] {
        let r = app
            .post(
                "/webhook-endpoints",
                &seller,
                json!({ "url": url, "eventTypes": types }),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{url} {types}: {:?}",
            r.body
        );
    }
    let (id, _) = register(
        &app,
        &seller,
        "https://hooks.example.com/x",
        &["order.paid"],
    )
    .await;
    let list = app.get("/webhook-endpoints", &seller).await;
    assert_eq!(list.body["items"][0]["id"], id.to_string());
    assert!(list.body["items"][0].get("secret").is_none(), "shown once");
    let (buyer, _) = app.buyer().await;
    let r = app.get("/webhook-endpoints", &buyer).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let (other, _) = app.seller().await;
    let r = app
        .get(&format!("/webhook-endpoints/{id}/deliveries"), &other)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app
        .call(
            reqwest::Method::DELETE,
            &format!("/webhook-endpoints/{id}"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app
        .call(
            reqwest::Method::DELETE,
            &format!("/webhook-endpoints/{id}"),
            Some(&seller),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get("/webhook-endpoints", &seller).await.body["items"],
        json!([])
    );
}

#[tokio::test]
async fn the_official_standard_webhooks_library_verifies_every_delivery() {
    let app = spawn_app().await;
    let (seller, _) = app.seller().await;
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        python.exists(),
        "the Python venv is missing: run ./scripts/test.sh (or scripts/browser-deps.sh)"
    );
    // A free port for the receiver, which can only start once it knows the secret.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let (_, secret) = register(&app, &seller, &url, &["pool.restocked"]).await;
    // A second endpoint on the same receiver, whose secret the receiver does not know.
    register(&app, &seller, &url, &["pool.restocked"]).await;
    let mut child = tokio::process::Command::new(&python)
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("webhooks/receiver.py"))
        .arg(&secret)
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("the receiver never started")
        .unwrap();
    assert_eq!(ready.as_deref(), Some("ready"));
    let worker = app.start_worker();
    // The seller's own pool, restocked by an upload: one event, two deliveries.
    let r = app
        .post("/key-pools", &seller, json!({ "name": "p" }))
        .await;
    let pool = r.body["id"].as_str().unwrap().to_owned();
    app.post(
        &format!("/key-pools/{pool}/keys/upload"),
        &seller,
        json!({ "keys": ["SIG-KEY-0001"] }),
    )
    .await;
    let mut verdicts = Vec::new();
    while verdicts.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
            .await
            .expect("the receiver heard nothing")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        verdicts.push((v["verified"].as_bool().unwrap(), v["type"].clone()));
    }
    verdicts.sort_by_key(|v| !v.0);
    assert_eq!(verdicts[0], (true, json!("pool.restocked")));
    assert!(
        !verdicts[1].0,
        "a delivery signed with another secret must fail verification"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_receiver_that_fails_twice_gets_the_event_on_the_third_try() {
    let app = spawn_app().await;
    let (seller, _) = app.seller().await;
    let recv = receiver(2, Duration::ZERO).await;
    let (id, _) = register(&app, &seller, &recv.url, &["pool.restocked"]).await;
    let worker = app.start_worker();
    let r = app
        .post("/key-pools", &seller, json!({ "name": "p" }))
        .await;
    let pool = r.body["id"].as_str().unwrap().to_owned();
    app.post(
        &format!("/key-pools/{pool}/keys/upload"),
        &seller,
        json!({ "keys": ["RETRY-KEY-1"] }),
    )
    .await;
    wait_until("never delivered", Duration::from_secs(15), || {
        !recv.got.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(recv.calls.load(Ordering::SeqCst), 3);
    // The receiver answered; the worker records the delivery right after (a moment later
    // on a loaded machine).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = app
            .get(&format!("/webhook-endpoints/{id}/deliveries"), &seller)
            .await;
        if log.body["items"][0]["status"] == "delivered" || tokio::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let d = &log.body["items"][0];
    assert_eq!(
        (d["status"].as_str(), d["attempts"].as_i64()),
        (Some("delivered"), Some(3))
    );
    assert_eq!(d["eventType"], "pool.restocked");
    let (event_id, body) = recv.got.lock().unwrap()[0].clone();
    assert_eq!(body["id"], event_id, "webhook-id is the event id");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn an_endpoint_that_keeps_failing_is_disabled_and_says_why() {
    let app = spawn_app().await;
    let (seller, _) = app.seller().await;
    let recv = receiver(usize::MAX, Duration::ZERO).await;
    let (id, _) = register(&app, &seller, &recv.url, &["pool.restocked"]).await;
    let worker = app.start_worker();
    let r = app
        .post("/key-pools", &seller, json!({ "name": "p" }))
        .await;
    let pool = r.body["id"].as_str().unwrap().to_owned();
    app.post(
        &format!("/key-pools/{pool}/keys/upload"),
        &seller,
        json!({ "keys": ["DOOMED-KEY-1"] }),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = app.get("/webhook-endpoints", &seller).await;
        let e = &list.body["items"][0];
        if e["enabled"] == json!(false) {
            assert!(
                e["disabledReason"]
                    .as_str()
                    .unwrap()
                    .contains("consecutive failed")
            );
            break;
        }
        assert!(Instant::now() < deadline, "never disabled: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The test configuration gives up after 5 failures.
    assert_eq!(recv.calls.load(Ordering::SeqCst), 5);
    let _ = id;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_thousand_events_are_each_delivered_once_in_order() {
    let app = spawn_app().await;
    let (seller, _) = app.seller().await;
    let recv = receiver(0, Duration::ZERO).await;
    register(&app, &seller, &recv.url, &["key.invalidated"]).await;
    let keys = pool_of_keys(&app, &seller, 1000).await;
    let worker = app.start_worker();
    // A thousand transactions, several at once, each invalidating one key.
    futures::future::join_all(keys.chunks(125).map(|chunk| {
        let app = &app;
        async move {
            for key in chunk {
                let mut tx = app.pool.begin().await.unwrap();
                autokey_shared::transitions::invalidate(&mut tx, *key)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        }
    }))
    .await;
    wait_until("not all delivered", Duration::from_secs(60), || {
        recv.got.lock().unwrap().len() >= 1000
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Vec<String> = recv
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(got.len(), 1000, "each once");
    let distinct: std::collections::HashSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), 1000);
    // In the order of the event feed.
    let feed: Vec<String> = sqlx::query_scalar(
        "SELECT id::text FROM events WHERE type = 'key.invalidated' ORDER BY xid, seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(got, feed);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_receiver_never_delays_fulfillment_and_the_test_route_reaches_one_endpoint() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 1).await;
    let storefront = app.storefront().await;
    let slow = receiver(0, Duration::from_secs(8)).await;
    register(
        &app,
        &storefront,
        &slow.url,
        &["order.paid", "order.fulfilled"],
    )
    .await;
    let quick = receiver(0, Duration::ZERO).await;
    let (quick_id, _) = register(&app, &storefront, &quick.url, &["order.canceled"]).await;
    let worker = app.start_worker();
    let r = app
        .post(
            "/orders",
            &storefront,
            json!({ "offerId": shop.offer_id, "buyerId": Uuid::new_v4() }),
        )
        .await;
    let order = r.body["id"].as_str().unwrap().to_owned();
    app.post(&format!("/orders/{order}/pay"), &storefront, json!(null))
        .await;
    let started = Instant::now();
    let r = app
        .post(
            &format!("/orders/{order}/fulfill?wait=10"),
            &storefront,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let r = app
        .post(
            &format!("/webhook-endpoints/{quick_id}/test"),
            &storefront,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    wait_until(
        "the test event never arrived",
        Duration::from_secs(10),
        || !quick.got.lock().unwrap().is_empty(),
    )
    .await;
    assert_eq!(quick.got.lock().unwrap()[0].1["type"], "webhook.test");
    assert!(
        slow.got
            .lock()
            .unwrap()
            .iter()
            .all(|(_, e)| e["type"] != "webhook.test")
    );
    worker.stop().await.unwrap();
}

/// A stopping worker finishes the request under way and leaves an endpoint's other due
/// deliveries for the next start: a slow receiver with a backlog cannot hold up a
/// shutdown (here 12 due deliveries at 1 s each would be 12 s), and nothing is lost.
#[tokio::test]
async fn a_stopping_worker_does_not_wait_for_a_slow_receivers_backlog() {
    let app = spawn_app().await;
    let (seller, _) = app.seller().await;
    let slow = receiver(0, Duration::from_secs(1)).await;
    register(&app, &seller, &slow.url, &["key.invalidated"]).await;
    let keys = pool_of_keys(&app, &seller, 12).await;
    for key in &keys {
        let mut tx = app.pool.begin().await.unwrap();
        autokey_shared::transitions::invalidate(&mut tx, *key)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let worker = app.start_worker();
    wait_until(
        "the first request never came",
        Duration::from_secs(10),
        || slow.calls.load(Ordering::SeqCst) > 0,
    )
    .await;
    let asked = Instant::now();
    worker.stop().await.unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(6),
        "stopping took {:?}",
        asked.elapsed()
    );
    let got = slow.got.lock().unwrap().len();
    assert!(got < 12, "all {got} were sent before the worker stopped");
    // The next start sends the rest, each once.
    let worker = app.start_worker();
    wait_until("the rest never arrived", Duration::from_secs(90), || {
        slow.got.lock().unwrap().len() >= 12
    })
    .await;
    worker.stop().await.unwrap();
    let ids: std::collections::HashSet<String> = slow
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(ids.len(), 12);
}
