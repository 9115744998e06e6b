//! What keeps one client, or too many, from taking the service down: per-token and
//! per-address rate limits, load shedding, request and header-read deadlines, upload caps,
//! and the database session limits of the api's connections.

use std::time::{Duration, Instant};

use autokey_api::settings::Limits;
use autokey_tests::{AppOptions, TestApp, fixtures, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn app_with(limits: Limits) -> TestApp {
    spawn_app_with(AppOptions {
        limits,
        ..AppOptions::default()
    })
    .await
}

#[tokio::test]
async fn a_token_over_its_rate_gets_429_with_retry_after_and_others_are_unaffected() {
    let app = app_with(Limits {
        rate_limit_per_second: 1,
        rate_limit_burst: 3,
        ..Limits::generous()
    })
    .await;
    let (a, _) = app.buyer().await;
    let (b, _) = app.buyer().await;
    for _ in 0..3 {
        assert_eq!(app.get("/me", &a).await.status, StatusCode::OK);
    }
    let r = app.get("/me", &a).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.code(), "rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Another token of the same kind has its own allowance.
    assert_eq!(app.get("/me", &b).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.get("/me", &a).await.status, StatusCode::OK);
}

#[tokio::test]
async fn storefronts_have_their_own_larger_quota_and_requests_without_a_token_are_limited_by_address()
 {
    let app = app_with(Limits {
        rate_limit_per_second: 1,
        rate_limit_burst: 1,
        rate_limit_storefront_per_second: 100,
        rate_limit_storefront_burst: 100,
        rate_limit_anonymous_per_second: 1,
        rate_limit_anonymous_burst: 2,
        ..Limits::generous()
    })
    .await;
    let storefront = app.storefront().await;
    for _ in 0..20 {
        assert_eq!(app.get("/me", &storefront).await.status, StatusCode::OK);
    }
    let anonymous: Vec<StatusCode> = {
        let mut out = Vec::new();
        for _ in 0..3 {
            out.push(app.call(Method::GET, "/healthz", None, None).await.status);
        }
        out
    };
    assert_eq!(anonymous[..2], [StatusCode::OK, StatusCode::OK]);
    assert_eq!(anonymous[2], StatusCode::TOO_MANY_REQUESTS);
    // A forged forwarding header does not buy a new allowance.
    let r = app
        .client
        .get(format!("{}/healthz", app.base))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-real-ip", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Bad tokens count against the address too (guessing tokens is not free).
    let r = app
        .get("/me", "ak_guessguessguessguessguessguessguessguess000")
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_connection_that_sends_half_a_header_is_closed_within_the_header_timeout() {
    let app = app_with(Limits {
        header_read_timeout_secs: 1,
        ..Limits::generous()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: autokey\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // an error response before the close is fine
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was still open after 5 s");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "closed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
}

#[tokio::test]
async fn requests_beyond_the_concurrency_cap_are_shed_with_503_at_once() {
    let app = app_with(Limits {
        max_concurrent_requests: 1,
        ..Limits::generous()
    })
    .await;
    let shop = fixtures::shop(&app, 0).await;
    let (buyer, _) = app.buyer().await;
    // A paid order with no key and no worker: its fulfill call long-polls.
    let order = app
        .post("/orders", &buyer, json!({ "offerId": shop.offer_id }))
        .await;
    // out of stock at 0 keys: give it one key to place, then withdraw it
    let order_id = if order.status == StatusCode::CREATED {
        order.body["id"].as_str().unwrap().to_owned()
    } else {
        fixtures::add_keys(&app, shop.pool_id, 1).await;
        let r = app
            .post("/orders", &buyer, json!({ "offerId": shop.offer_id }))
            .await;
        fixtures::invalidate_keys(&app, shop.pool_id, 1).await;
        r.body["id"].as_str().unwrap().to_owned()
    };
    let r = app
        .post(&format!("/orders/{order_id}/pay"), &buyer, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let busy = {
        let (client, url, token) = (
            app.client.clone(),
            format!("{}/orders/{order_id}/fulfill?wait=3", app.base),
            buyer.clone(),
        );
        tokio::spawn(async move { client.post(url).bearer_auth(token).send().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let r = app.get("/me", &buyer).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.code(), "unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shed, not queued"
    );
    assert_eq!(busy.await.unwrap().unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(app.get("/me", &buyer).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_request_that_outlives_the_request_timeout_is_answered_503() {
    let app = app_with(Limits {
        request_timeout_secs: 1,
        ..Limits::generous()
    })
    .await;
    let shop = fixtures::shop(&app, 1).await;
    let (buyer, _) = app.buyer().await;
    let r = app
        .post("/orders", &buyer, json!({ "offerId": shop.offer_id }))
        .await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    fixtures::invalidate_keys(&app, shop.pool_id, 1).await;
    app.post(&format!("/orders/{id}/pay"), &buyer, json!(null))
        .await;
    let started = Instant::now();
    let r = app
        .post(
            &format!("/orders/{id}/fulfill?wait=10"),
            &buyer,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(r.code(), "unavailable");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A text upload whose body sends one line and then nothing, held open by the test.
fn stalled_upload(
    app: &TestApp,
    token: &str,
    pool: uuid::Uuid,
) -> (
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let body = futures::stream::once(async { Ok::<_, std::io::Error>("STALL-KEY-00001\n") }).chain(
        futures::stream::once(async move {
            let _ = rx.await;
            Ok("")
        }),
    );
    let request = app
        .client
        .post(format!("{}/key-pools/{pool}/keys/upload", app.base))
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .body(reqwest::Body::wrap_stream(body));
    (tokio::spawn(request.send()), tx)
}

use futures::StreamExt;

#[tokio::test]
async fn uploads_are_capped_per_seller_and_a_stalled_upload_fails_after_the_timeout() {
    let app = app_with(Limits {
        max_concurrent_uploads_per_seller: 1,
        max_concurrent_uploads: 2,
        request_timeout_secs: 2,
        ..Limits::generous()
    })
    .await;
    let (seller, _) = app.seller().await;
    let pool = app.post("/key-pools", &seller, json!({})).await.body["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (first, release) = stalled_upload(&app, &seller, pool);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app
        .post(
            &format!("/key-pools/{pool}/keys/upload"),
            &seller,
            json!({"keys": ["OTHER-KEY-1"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    assert_eq!(r.code(), "rate_limited");
    // Another seller may upload meanwhile.
    let (other, _) = app.seller().await;
    let other_pool: uuid::Uuid = app.post("/key-pools", &other, json!({})).await.body["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let r = app
        .post(
            &format!("/key-pools/{other_pool}/keys/upload"),
            &other,
            json!({"keys": ["OTHER-KEY-2"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // The stalled one gives up after the timeout without data, and frees its slot.
    let started = Instant::now();
    let stalled = TestApp::reply(first.await.unwrap().unwrap()).await;
    assert_eq!(
        stalled.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        stalled.body
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    drop(release);
    let r = app
        .post(
            &format!("/key-pools/{pool}/keys/upload"),
            &seller,
            json!({"keys": ["OTHER-KEY-3"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn the_apis_connections_carry_statement_lock_and_idle_timeouts() {
    let app = app_with(Limits {
        db_statement_timeout_ms: 1_500,
        db_lock_timeout_ms: 700,
        db_idle_in_transaction_timeout_ms: 9_000,
        ..Limits::generous()
    })
    .await;
    let (statement, lock, idle): (String, String, String) = sqlx::query_as(
        "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),
                current_setting('idle_in_transaction_session_timeout')",
    )
    .fetch_one(&app.api_pool)
    .await
    .unwrap();
    assert_eq!(
        (statement.as_str(), lock.as_str(), idle.as_str()),
        ("1500ms", "700ms", "9s")
    );
    let err = sqlx::query("SELECT pg_sleep(3)")
        .execute(&app.api_pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("statement timeout"), "{err}");
}
