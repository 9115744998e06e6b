//! The payment provider's signed webhook.

use std::collections::HashSet;

use autokey_tests::{TestApp, WEBHOOK_SECRET, fixtures, spawn_app};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

async fn pending_order(app: &TestApp) -> Uuid {
    let shop = fixtures::shop(app, 2).await;
    let (buyer, _) = app.buyer().await;
    let r = app
        .post("/orders", &buyer, json!({ "offerId": shop.offer_id }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    r.body["id"].as_str().unwrap().parse().unwrap()
}

fn event(order_id: Uuid, amount: i64, currency: &str) -> String {
    json!({ "type": "payment.succeeded", "data": {
        "orderId": order_id, "paymentId": "pay_123", "amountCents": amount, "currency": currency } })
    .to_string()
}

async fn status(app: &TestApp, id: Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn fifty_concurrent_identical_webhooks_make_one_transition_and_one_job() {
    let app = spawn_app().await;
    let id = pending_order(&app).await;
    let body = event(id, 999, "EUR");
    let ts = now();
    let replies = futures::future::join_all(
        (0..50).map(|_| app.webhook("msg_same", ts, &body, WEBHOOK_SECRET)),
    )
    .await;
    let outcomes: Vec<&str> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
            r.body["outcome"].as_str().unwrap()
        })
        .collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "applied").count(), 1);
    assert_eq!(outcomes.iter().filter(|o| **o == "duplicate").count(), 49);
    assert_eq!(status(&app, id).await, "PAID");
    assert_eq!(count(&app, "SELECT count(*) FROM payment_events").await, 1);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'autokey::fulfill_order'"
        )
        .await,
        1
    );
    let payment_id: Option<String> =
        sqlx::query_scalar("SELECT payment_id FROM orders WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(payment_id.as_deref(), Some("pay_123"));

    // A second, distinct event for the same order changes nothing either.
    let r = app.webhook("msg_other", now(), &body, WEBHOOK_SECRET).await;
    assert_eq!(r.body["outcome"], "already_paid");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'autokey::fulfill_order'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn bad_signature_stale_timestamp_or_altered_body_is_401_and_writes_nothing() {
    let app = spawn_app().await;
    let id = pending_order(&app).await;
    let body = event(id, 999, "EUR");
    let cases = [
        app.webhook("m1", now(), &body, b"some-other-secret-some-other-sec")
            .await,
        app.webhook("m2", now() - 301, &body, WEBHOOK_SECRET).await,
        app.webhook("m3", now() + 301, &body, WEBHOOK_SECRET).await,
    ];
    // Altered body: signed one thing, sent another.
    let sig = autokey_shared::webhook_signature::sign(WEBHOOK_SECRET, "m4", now(), body.as_bytes());
    let altered = app
        .client
        .post(format!("{}/webhooks/payments", app.base))
        .header("webhook-id", "m4")
        .header("webhook-timestamp", now().to_string())
        .header("webhook-signature", sig)
        .body(event(id, 1, "EUR"))
        .send()
        .await
        .unwrap();
    let missing = app
        .client
        .post(format!("{}/webhooks/payments", app.base))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    for r in cases {
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
        assert_eq!(r.code(), "unauthorized");
    }
    assert_eq!(altered.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(status(&app, id).await, "PENDING");
    assert_eq!(count(&app, "SELECT count(*) FROM payment_events").await, 0);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'autokey::fulfill_order'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn amount_or_currency_mismatch_leaves_the_order_unpaid_and_is_recorded() {
    let app = spawn_app().await;
    let id = pending_order(&app).await;
    let r = app
        .webhook("m-amount", now(), &event(id, 998, "EUR"), WEBHOOK_SECRET)
        .await;
    assert_eq!(r.body["outcome"], "amount_mismatch");
    let r = app
        .webhook("m-currency", now(), &event(id, 999, "USD"), WEBHOOK_SECRET)
        .await;
    assert_eq!(r.body["outcome"], "amount_mismatch");
    assert_eq!(status(&app, id).await, "PENDING");
    let recorded: HashSet<String> =
        sqlx::query_scalar("SELECT outcome FROM payment_events WHERE order_id = $1")
            .bind(id)
            .fetch_all(&app.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(recorded, HashSet::from(["amount_mismatch".to_string()]));
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'autokey::fulfill_order'"
        )
        .await,
        0
    );

    let r = app
        .webhook("m-good", now(), &event(id, 999, "EUR"), WEBHOOK_SECRET)
        .await;
    assert_eq!(r.body["outcome"], "applied");
    assert_eq!(status(&app, id).await, "PAID");
}

#[tokio::test]
async fn unknown_orders_and_other_event_types_are_acknowledged_and_recorded() {
    let app = spawn_app().await;
    let r = app
        .webhook(
            "m-unknown",
            now(),
            &event(Uuid::now_v7(), 999, "EUR"),
            WEBHOOK_SECRET,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["outcome"], "unknown_order");
    let other = json!({ "type": "payment.failed", "data": {
        "orderId": Uuid::now_v7(), "paymentId": "p", "amountCents": 1, "currency": "EUR" } })
    .to_string();
    let r = app.webhook("m-type", now(), &other, WEBHOOK_SECRET).await;
    assert_eq!(r.body["outcome"], "ignored");
    let r = app
        .webhook("m-bad", now(), "{\"type\": 1}", WEBHOOK_SECRET)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "validation_failed");
    assert_eq!(count(&app, "SELECT count(*) FROM payment_events").await, 2);
}
