//! Bad input gets a clear 400, never a 500, and never corrupts data: control and invisible
//! characters, currencies, money overflow, one visible key spelled two ways, extreme
//! webhook headers, over-long headers.

use std::time::Duration;

use autokey_tests::{TestApp, WEBHOOK_SECRET, fixtures, spawn_app};
use autokey_worker::fulfillment;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

fn offer_body(title: &str, price: i64, currency: &str, pool: Uuid) -> Value {
    json!({"title": title, "priceCents": price, "currency": currency,
           "deliveryType": "AUTO_KEY", "keyPoolId": pool})
}

async fn pool(app: &TestApp, seller: &str) -> Uuid {
    let r = app.post("/key-pools", seller, json!({"name": "p"})).await;
    r.body["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn names_and_titles_refuse_nul_control_and_invisible_characters() {
    let app = spawn_app().await;
    let (seller, _) = app.seller().await;
    let pool = pool(&app, &seller).await;
    for bad in [
        "A\u{0}B",
        "line\nbreak",
        "zero\u{200b}width",
        "evil\u{202e}gpj.exe",
    ] {
        let r = app
            .post("/key-pools", &seller, json!({ "name": bad }))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}: {:?}", r.body);
        assert_eq!(r.code(), "validation_failed");
        let r = app
            .post("/offers/draft", &seller, offer_body(bad, 100, "EUR", pool))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}: {:?}", r.body);
    }
    let r = app
        .post(
            "/offers/draft",
            &seller,
            offer_body("Café — 2 players", 100, "EUR", pool),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

#[tokio::test]
async fn currencies_are_iso_4217_and_prices_are_capped_so_amounts_cannot_overflow() {
    let app = spawn_app().await;
    let (seller, _) = app.seller().await;
    let pool = pool(&app, &seller).await;
    for currency in ["XYZ", "eur", "EURO", "E1R"] {
        let r = app
            .post(
                "/offers/draft",
                &seller,
                offer_body("T", 100, currency, pool),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{currency}");
    }
    for price in [1_000_000_001_i64, 1 << 62, i64::MAX, -1] {
        let r = app
            .post(
                "/offers/draft",
                &seller,
                offer_body("T", price, "USD", pool),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{price}: {:?}", r.body);
    }
    // The cap times the largest quantity is a plain amount.
    let r = app
        .post(
            "/offers/draft",
            &seller,
            offer_body("Top", 1_000_000_000, "JPY", pool),
        )
        .await;
    let offer = r.body["id"].as_str().unwrap().to_owned();
    app.post("/offers/publish", &seller, json!({ "offerId": offer }))
        .await;
    let keys: Vec<String> = (0..100).map(|i| format!("CAP-KEY-{i:04}")).collect();
    app.post(
        &format!("/key-pools/{pool}/keys/upload"),
        &seller,
        json!({ "keys": keys }),
    )
    .await;
    let (buyer, _) = app.buyer().await;
    let r = app
        .post(
            "/orders",
            &buyer,
            json!({ "offerId": offer, "quantity": 100 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["amountCents"], json!(100_000_000_000_i64));
}

#[tokio::test]
async fn keys_with_invisible_characters_are_invalid_and_one_visible_key_is_stored_once() {
    let app = spawn_app().await;
    let (seller, _) = app.seller().await;
    let shop_pool = pool(&app, &seller).await;
    let composed = "GAME-\u{e9}T\u{e9}-0001"; // é as one character
    let decomposed = "GAME-e\u{301}Te\u{301}-0001"; // e + combining accent
    let body = format!(
        "GOOD-KEY-0001\nZERO\u{200b}WIDTH-1\nRTL\u{202e}KEY-0001\nMID\u{feff}BOM-0001\n{composed}\n{decomposed}\n"
    );
    let r = app
        .post_raw(
            &format!("/key-pools/{shop_pool}/keys/upload"),
            &seller,
            "text/plain",
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["added"], 2);
    let invalid: Vec<(u64, String)> = r.body["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["line"].as_u64().unwrap(),
                i["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        invalid,
        [2, 3, 4]
            .map(|l| (l, "format_character".to_owned()))
            .to_vec()
    );
    assert_eq!(r.body["duplicates"][0]["line"], 6);
    // The other spelling, later, from another seller: still the same key.
    let (other, _) = app.seller().await;
    let other_pool = pool(&app, &other).await;
    let r = app
        .post(
            &format!("/key-pools/{other_pool}/keys/upload"),
            &other,
            json!({ "keys": [decomposed] }),
        )
        .await;
    assert_eq!(r.body["added"], 0);
    assert_eq!(r.body["duplicates"][0]["reason"], "already_exists");

    // The stored plaintext is what the seller sent.
    let offer = app
        .post(
            "/offers/draft",
            &seller,
            offer_body("Game", 100, "EUR", shop_pool),
        )
        .await;
    let offer = offer.body["id"].as_str().unwrap().to_owned();
    app.post("/offers/publish", &seller, json!({ "offerId": offer }))
        .await;
    let (buyer, _) = app.buyer().await;
    let r = app
        .post(
            "/orders",
            &buyer,
            json!({ "offerId": offer, "quantity": 2 }),
        )
        .await;
    let id: Uuid = r.body["id"].as_str().unwrap().parse().unwrap();
    app.post(&format!("/orders/{id}/pay"), &buyer, json!(null))
        .await;
    fulfillment::fulfill_order(&app.pool, id, Duration::from_secs(5))
        .await
        .unwrap();
    let r = app.get(&format!("/orders/{id}"), &buyer).await;
    let mut keys: Vec<String> = r.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    assert_eq!(keys, ["GAME-\u{e9}T\u{e9}-0001", "GOOD-KEY-0001"]);
    let _ = fixtures::pool_counts;
}

#[tokio::test]
async fn extreme_webhook_headers_are_refused_cleanly() {
    let app = spawn_app().await;
    let body = json!({"type": "payment.succeeded", "data": {"orderId": Uuid::now_v7(),
        "paymentId": "p", "amountCents": 1, "currency": "EUR"}})
    .to_string();
    for ts in [i64::MIN, i64::MAX, 0] {
        let r = app.webhook("msg_x", ts, &body, WEBHOOK_SECRET).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{ts}: {:?}", r.body);
    }
    let long_id = "m".repeat(10_000);
    let now = chrono::Utc::now().timestamp();
    let r = app.webhook(&long_id, now, &body, WEBHOOK_SECRET).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.code(), "validation_failed");
    let r = app
        .client
        .post(format!("{}/webhooks/payments", app.base))
        .header("webhook-id", "msg_1")
        .header("webhook-timestamp", "99999999999999999999999999")
        .header("webhook-signature", "v1,".to_owned() + &"A".repeat(5000))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn over_long_headers_and_fields_are_4xx_never_500() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 1).await;
    let (buyer, _) = app.buyer().await;
    let r = app
        .client
        .post(format!("{}/orders", app.base))
        .bearer_auth(&buyer)
        .header("idempotency-key", "k".repeat(256))
        .json(&json!({ "offerId": shop.offer_id }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = app
        .call(Method::GET, "/me", Some(&"ak_".repeat(4000)), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = app
        .get(&format!("/orders?cursor={}", "x".repeat(5000)), &buyer)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let (seller, _) = app.seller().await;
    let r = app
        .post("/key-pools", &seller, json!({ "name": "n".repeat(201) }))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

/// A token that cannot be checked because the database is unreachable is not an invalid
/// token: 503 `unavailable` (retry), never a 401 that would make a client drop it.
#[tokio::test]
async fn an_unreachable_database_is_503_not_401_for_a_valid_token() {
    let app = spawn_app().await;
    let (token, _) = app.token(autokey_shared::model::Role::Seller, None).await;
    // The api's own connections are gone (as in a database restart); this token was never
    // seen, so the token cache cannot answer for it.
    app.api_pool.close().await;
    let r = app.get("/me", &token).await;
    assert_eq!(r.status.as_u16(), 503, "{:?}", r.body);
    assert_eq!(r.code(), "unavailable");
}
