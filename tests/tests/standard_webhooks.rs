//! Payment webhooks signed by the official Standard Webhooks library (`standardwebhooks`
//! from PyPI, in the venv) are accepted and move the order to PAID; a tampered body, another
//! secret's signature and a stale timestamp are refused and write nothing
//! (tests/webhooks/standard_webhooks.py).

use std::time::Duration;

use autokey_tests::{WEBHOOK_SECRET, fixtures, spawn_app, tools};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::json;

#[tokio::test]
async fn the_official_library_signs_webhooks_the_api_accepts() {
    let python = tools::venv_bin("python");
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 1).await;
    let storefront = app.storefront().await;
    let order = app
        .post(
            "/orders",
            &storefront,
            json!({"offerId": shop.offer_id, "buyerId": uuid::Uuid::new_v4()}),
        )
        .await;
    let id = order.body["id"].as_str().expect("order").to_owned();
    let amount = order.body["amountCents"].as_i64().unwrap().to_string();
    let currency = order.body["currency"].as_str().unwrap().to_owned();
    let secret = format!("whsec_{}", STANDARD.encode(WEBHOOK_SECRET));
    let script = tools::workspace_root().join("tests/webhooks/standard_webhooks.py");
    let out = tools::run(
        "standard_webhooks.py",
        tokio::process::Command::new(python)
            .arg(script)
            .args([&app.base, &secret, &id, &amount, &currency]),
        Duration::from_secs(60),
    )
    .await;
    println!("{out}");

    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "PAID");
    // One event recorded: the refused ones wrote nothing, the replay added nothing.
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(events, 1);
}
