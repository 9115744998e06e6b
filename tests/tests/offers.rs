//! Offers through the HTTP API: drafts, publishing, status changes, visibility by role,
//! and live availability from the key pool (and paid, undelivered orders).

use std::time::Duration;

use autokey_shared::{store, transitions};
use autokey_tests::{Reply, TestApp, fixtures, spawn_app};
use autokey_worker::fulfillment;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

async fn create_pool(app: &TestApp, token: &str) -> Uuid {
    let r = app
        .post("/key-pools", token, json!({ "name": "pool" }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body["id"].as_str().unwrap().parse().unwrap()
}

fn auto_key_draft(pool: Uuid) -> Value {
    json!({
        "title": "Space Game (Steam)",
        "priceCents": 1999,
        "currency": "EUR",
        "deliveryType": "AUTO_KEY",
        "keyPoolId": pool,
    })
}

async fn draft(app: &TestApp, token: &str, body: Value) -> Uuid {
    let r = app.post("/offers/draft", token, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body["id"].as_str().unwrap().parse().unwrap()
}

async fn publish(app: &TestApp, token: &str, offer: Uuid) -> Reply {
    app.post("/offers/publish", token, json!({ "offerId": offer }))
        .await
}

async fn set_status(app: &TestApp, token: &str, offer: Uuid, status: &str) -> Reply {
    app.call(
        Method::PATCH,
        &format!("/offers/{offer}/status"),
        Some(token),
        Some(json!({ "status": status })),
    )
    .await
}

async fn upload(app: &TestApp, token: &str, pool: Uuid, keys: &[&str]) {
    let r = app
        .post(
            &format!("/key-pools/{pool}/keys/upload"),
            token,
            json!({ "keys": keys }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["added"].as_u64(), Some(keys.len() as u64));
}

fn availability(offer: &Value) -> (&str, i64) {
    (
        offer["availability"].as_str().unwrap(),
        offer["autoKeyAvailableCount"].as_i64().unwrap(),
    )
}

#[tokio::test]
async fn an_offer_published_with_no_keys_is_out_of_stock_until_keys_are_uploaded() {
    let app = spawn_app().await;
    let (seller, seller_id) = app.seller().await;
    let (buyer, _) = app.buyer().await;
    let pool = create_pool(&app, &seller).await;
    let r = app
        .post("/offers/draft", &seller, auto_key_draft(pool))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let offer = r.body["id"].as_str().unwrap().parse::<Uuid>().unwrap();
    assert_eq!(r.body["status"], "draft");
    assert_eq!(r.body["sellerId"], json!(seller_id));
    assert_eq!(r.body["title"], "Space Game (Steam)");
    assert_eq!(r.body["priceCents"], 1999);
    assert_eq!(r.body["currency"], "EUR");
    assert_eq!(r.body["deliveryType"], "AUTO_KEY");
    assert_eq!(r.body["keyPoolId"], json!(pool));
    assert!(chrono::DateTime::parse_from_rfc3339(r.body["createdAt"].as_str().unwrap()).is_ok());

    let published = publish(&app, &seller, offer).await;
    assert_eq!(published.status, StatusCode::OK, "{:?}", published.body);
    assert_eq!(published.body["status"], "active");
    assert_eq!(availability(&published.body), ("out_of_stock", 0));
    let seen = app.get(&format!("/offers/{offer}"), &buyer).await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(availability(&seen.body), ("out_of_stock", 0));

    upload(
        &app,
        &seller,
        pool,
        &["OFFER-KEY-1", "OFFER-KEY-2", "OFFER-KEY-3"],
    )
    .await;
    let seen = app.get(&format!("/offers/{offer}"), &buyer).await;
    assert_eq!(availability(&seen.body), ("in_stock", 3));
    let list = app.get("/seller/offers", &seller).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(availability(&list.body["items"][0]), ("in_stock", 3));
}

/// A PAID order of `quantity` units on the offer, placed and paid through the core (no
/// worker runs in these tests, so it stays PAID until the test delivers it).
async fn paid_order(app: &TestApp, offer: Uuid, pool: Uuid, quantity: i32) -> Uuid {
    let mut tx = app.pool.begin().await.unwrap();
    let new = store::orders::NewOrder {
        buyer_id: Uuid::now_v7(),
        storefront_id: None,
        offer_id: offer,
        pool_id: Some(pool),
        quantity,
        amount_cents: 0,
        currency: "EUR".into(),
    };
    let order = store::orders::insert(&mut tx, &new).await.unwrap();
    transitions::pay(
        &mut tx,
        order.id,
        None,
        transitions::Announce::InTransaction,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    order.id
}

async fn deliver(app: &TestApp, order: Uuid) -> fulfillment::Outcome {
    fulfillment::fulfill_order(&app.pool, order, Duration::from_secs(5))
        .await
        .unwrap()
}

#[tokio::test]
async fn available_count_subtracts_units_paid_and_not_yet_delivered() {
    let app = spawn_app().await;
    let (seller, _) = app.seller().await;
    let pool = create_pool(&app, &seller).await;
    let offer = draft(&app, &seller, auto_key_draft(pool)).await;
    publish(&app, &seller, offer).await;
    upload(
        &app,
        &seller,
        pool,
        &["AVAIL-01", "AVAIL-02", "AVAIL-03", "AVAIL-04", "AVAIL-05"],
    )
    .await;
    let read = || async {
        let r = app.get(&format!("/offers/{offer}"), &seller).await;
        availability(&r.body).1
    };
    assert_eq!(read().await, 5);

    fixtures::invalidate_keys(&app, pool, 4).await;
    assert_eq!(read().await, 1);
    let order = paid_order(&app, offer, pool, 2).await;
    assert_eq!(read().await, 0, "never below 0");
    // The order reserves the one key left and waits for the other.
    assert_eq!(
        deliver(&app, order).await,
        fulfillment::Outcome::Backordered {
            reserved: 1,
            quantity: 2
        }
    );
    assert_eq!(read().await, 0);
    // Reserving the order's keys does not count them twice: of 4 new keys, the waiting
    // order still needs one, so 3 can be sold.
    upload(
        &app,
        &seller,
        pool,
        &["AVAIL-06", "AVAIL-07", "AVAIL-08", "AVAIL-09"],
    )
    .await;
    assert_eq!(read().await, 3);
    // Delivered: the order no longer waits, its keys are gone from the pool.
    assert_eq!(
        deliver(&app, order).await,
        fulfillment::Outcome::Fulfilled { keys: 2 }
    );
    assert_eq!(read().await, 3);

    paid_order(&app, offer, pool, 10).await;
    let r = app.get(&format!("/offers/{offer}"), &seller).await;
    assert_eq!(availability(&r.body), ("out_of_stock", 0), "never below 0");
    let mut conn = app.pool.acquire().await.unwrap();
    let shared = store::pools::sellable(&mut conn, pool).await.unwrap();
    assert_eq!(shared, 0);
}

#[tokio::test]
async fn drafts_are_created_then_updated_and_only_drafts_can_be_edited() {
    let app = spawn_app().await;
    let (seller, _) = app.seller().await;
    let pool = create_pool(&app, &seller).await;
    let manual = json!({
        "title": "Boxed edition",
        "priceCents": 0,
        "currency": "USD",
        "deliveryType": "MANUAL",
    });
    let offer = draft(&app, &seller, manual).await;

    let update = json!({
        "id": offer,
        "title": "  Boxed edition, signed  ",
        "priceCents": 4500,
        "currency": "USD",
        "deliveryType": "MANUAL",
        "stockCount": 7,
    });
    let r = app.post("/offers/draft", &seller, update.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["id"], json!(offer));
    assert_eq!(r.body["title"], "Boxed edition, signed");
    assert_eq!(r.body["priceCents"], 4500);
    assert_eq!(r.body["status"], "draft");
    assert_eq!(
        availability(&r.body),
        ("in_stock", 7),
        "MANUAL uses stockCount"
    );

    let r = publish(&app, &seller, offer).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app.post("/offers/draft", &seller, update.clone()).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "conflict");

    let r = set_status(&app, &seller, offer, "inactive").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "inactive");
    let r = set_status(&app, &seller, offer, "draft").await;
    assert_eq!(r.body["status"], "draft");
    let mut switch = update.clone();
    switch["deliveryType"] = json!("AUTO_KEY");
    switch["keyPoolId"] = json!(pool);
    let r = app.post("/offers/draft", &seller, switch).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["deliveryType"], "AUTO_KEY");
    assert_eq!(availability(&r.body), ("out_of_stock", 0));
    let r = set_status(&app, &seller, offer, "active").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "active");
    // Publishing what is active already changes nothing.
    let again = publish(&app, &seller, offer).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["status"], "active");

    let mut missing = update;
    missing["id"] = json!(Uuid::now_v7());
    let r = app.post("/offers/draft", &seller, missing).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn invalid_offers_are_rejected_with_400() {
    let app = spawn_app().await;
    let (seller, _) = app.seller().await;
    let (other, _) = app.seller().await;
    let pool = create_pool(&app, &seller).await;
    let foreign_pool = create_pool(&app, &other).await;
    let base = auto_key_draft(pool);
    let with = |field: &str, value: Value| {
        let mut b = base.clone();
        b[field] = value;
        b
    };
    for body in [
        with("title", json!("")),
        with("title", json!("   ")),
        with("title", json!("x".repeat(201))),
        with("priceCents", json!(-1)),
        with("priceCents", json!("12")),
        with("currency", json!("eur")),
        with("currency", json!("EURO")),
        with("currency", json!("E1R")),
        with("deliveryType", json!("EMAIL")),
        with("keyPoolId", json!(foreign_pool)),
        with("keyPoolId", json!(Uuid::now_v7())),
        with("keyPoolId", json!("not-a-uuid")),
        with("stockCount", json!(-3)),
        with("status", json!("active")),
        with("sellerId", json!(Uuid::now_v7())),
    ] {
        let r = app.post("/offers/draft", &seller, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.code(), "validation_failed", "{body}");
    }
    assert_eq!(
        app.post(
            "/offers/draft",
            &seller,
            with("title", json!("x".repeat(200)))
        )
        .await
        .status,
        StatusCode::CREATED
    );

    let mut no_pool = base.clone();
    no_pool.as_object_mut().unwrap().remove("keyPoolId");
    let offer = draft(&app, &seller, no_pool).await;
    for r in [
        publish(&app, &seller, offer).await,
        set_status(&app, &seller, offer, "active").await,
    ] {
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
        assert_eq!(r.code(), "validation_failed");
    }
    let r = set_status(&app, &seller, offer, "sold").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = app
        .post(
            "/offers/publish",
            &seller,
            json!({ "offerId": offer, "x": 1 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = app.get("/offers/not-a-uuid", &seller).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "validation_failed");
}

#[tokio::test]
async fn only_the_owner_sees_drafts_and_inactive_offers_and_others_get_404() {
    let app = spawn_app().await;
    let (seller, _) = app.seller().await;
    let (other, _) = app.seller().await;
    let (buyer, _) = app.buyer().await;
    let storefront = app.storefront().await;
    let pool = create_pool(&app, &seller).await;
    let offer = draft(&app, &seller, auto_key_draft(pool)).await;
    let path = format!("/offers/{offer}");
    let not_found = app
        .get(&format!("/offers/{}", Uuid::now_v7()), &buyer)
        .await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);

    let check = |visible_to_all: bool| {
        let (path, seller, other, buyer, storefront) =
            (&path, &seller, &other, &buyer, &storefront);
        let app = &app;
        let not_found = &not_found;
        async move {
            assert_eq!(app.get(path, seller).await.status, StatusCode::OK);
            for token in [other, buyer, storefront] {
                let r = app.get(path, token).await;
                if visible_to_all {
                    assert_eq!(r.status, StatusCode::OK);
                } else {
                    assert_eq!(r.status, StatusCode::NOT_FOUND);
                    assert_eq!(r.body, not_found.body, "exactly like a missing offer");
                }
            }
        }
    };
    check(false).await;
    publish(&app, &seller, offer).await;
    check(true).await;
    set_status(&app, &seller, offer, "inactive").await;
    check(false).await;

    // Another seller can neither change nor list it.
    let mut edit = auto_key_draft(pool);
    edit["id"] = json!(offer);
    for r in [
        publish(&app, &other, offer).await,
        set_status(&app, &other, offer, "active").await,
        app.post("/offers/draft", &other, edit).await,
    ] {
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
        assert_eq!(r.code(), "not_found");
    }
    let list = app.get("/seller/offers", &other).await;
    assert_eq!(list.body["items"], json!([]));
    let r = app.get(&path, &seller).await;
    assert_eq!(
        r.body["status"], "inactive",
        "unchanged by the other seller"
    );

    for r in [
        app.get("/seller/offers", &buyer).await,
        app.post("/offers/draft", &buyer, auto_key_draft(pool))
            .await,
        publish(&app, &storefront, offer).await,
    ] {
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.code(), "forbidden");
    }
}

#[tokio::test]
async fn the_seller_console_is_one_self_contained_html_page() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(format!("{}/seller", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.starts_with("text/html"), "{ctype}");
    let html = resp.text().await.unwrap();
    assert!(html.contains("<script>") && html.contains("/keys/upload"));
    for external in ["src=\"http", "href=\"http", "src=\"//", "@import"] {
        assert!(!html.contains(external), "{external}");
    }
}
