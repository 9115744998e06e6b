//! Events: written in the transaction of the change they record, once per stock crossing,
//! visible to whom they concern, and read in an order with no gaps.

use std::time::Duration;

/// The reader's horizon is the whole server's oldest running transaction: the test that
/// holds one open runs alone, the others together.
static HORIZON: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

use autokey_tests::{TestApp, spawn_app};
use autokey_worker::fulfillment;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// A pool with `threshold` and an active offer on it; returns (pool, offer).
async fn shop(app: &TestApp, seller: &str, threshold: i32) -> (Uuid, Uuid) {
    let r = app
        .post(
            "/key-pools",
            seller,
            json!({ "name": "p", "lowStockThreshold": threshold }),
        )
        .await;
    let pool: Uuid = r.body["id"].as_str().unwrap().parse().unwrap();
    let r = app
        .post(
            "/offers/draft",
            seller,
            json!({"title": "Game", "priceCents": 500, "currency": "EUR",
                   "deliveryType": "AUTO_KEY", "keyPoolId": pool}),
        )
        .await;
    let offer: Uuid = r.body["id"].as_str().unwrap().parse().unwrap();
    app.post("/offers/publish", seller, json!({ "offerId": offer }))
        .await;
    (pool, offer)
}

async fn upload(app: &TestApp, seller: &str, pool: Uuid, n: usize) {
    let keys: Vec<String> = (0..n)
        .map(|_| format!("EV-{}", Uuid::new_v4().simple()))
        .collect();
    let r = app
        .post(
            &format!("/key-pools/{pool}/keys/upload"),
            seller,
            json!({ "keys": keys }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

/// Places, pays and serves (the worker's routine, once) an order of `quantity`.
async fn sell(app: &TestApp, storefront: &str, offer: Uuid, quantity: i32) -> Uuid {
    let id = place(app, storefront, offer, quantity).await;
    pay_and_serve(app, storefront, id).await
}

async fn place(app: &TestApp, storefront: &str, offer: Uuid, quantity: i32) -> Uuid {
    let r = app
        .post(
            "/orders",
            storefront,
            json!({ "offerId": offer, "quantity": quantity, "buyerId": Uuid::new_v4() }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body["id"].as_str().unwrap().parse().unwrap()
}

async fn pay_and_serve(app: &TestApp, storefront: &str, id: Uuid) -> Uuid {
    app.post(&format!("/orders/{id}/pay"), storefront, json!(null))
        .await;
    fulfillment::fulfill_order(&app.pool, id, Duration::from_secs(5))
        .await
        .unwrap();
    id
}

/// Waits until every transaction that started before now has ended: the events written
/// so far are then visible. (The horizon is the whole server's: transactions of tests
/// running beside this one count too.)
async fn settle(app: &TestApp) {
    let mut conn = app.pool.acquire().await.unwrap();
    let now: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let horizon: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        if horizon > now {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "transactions never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every event the token may see, following the cursor.
async fn events(app: &TestApp, token: &str, kind: Option<&str>) -> Vec<Value> {
    settle(app).await;
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/events?limit=2".to_owned();
        if let Some(a) = &after {
            path += &format!("&after={a}");
        }
        if let Some(k) = kind {
            path += &format!("&type={k}");
        }
        let r = app.get(&path, token).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let items = r.body["items"].as_array().unwrap().clone();
        if items.is_empty() {
            return out;
        }
        out.extend(items);
        after = r.body["nextCursor"].as_str().map(str::to_owned);
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn stock_alerts_fire_once_per_crossing_with_hysteresis() {
    let _shared = HORIZON.read().await;
    let app = spawn_app().await;
    let (seller, _) = app.seller().await;
    let storefront = app.storefront().await;
    let (pool, offer) = shop(&app, &seller, 2).await;
    upload(&app, &seller, pool, 5).await; // out -> ok: restocked
    sell(&app, &storefront, offer, 1).await; // 4
    sell(&app, &storefront, offer, 2).await; // 2: low
    sell(&app, &storefront, offer, 1).await; // 1: still low
    sell(&app, &storefront, offer, 1).await; // 0: out
    upload(&app, &seller, pool, 1).await; // 1: low again, not news
    upload(&app, &seller, pool, 1).await; // 2: at the threshold
    upload(&app, &seller, pool, 1).await; // 3: past the margin: restocked
    let seen = events(&app, &seller, None).await;
    let pool_events: Vec<&Value> = seen
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("pool."))
        .collect();
    let kinds: Vec<&str> = pool_events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "pool.restocked",
            "pool.low_stock",
            "pool.out_of_stock",
            "pool.restocked"
        ]
    );
    assert_eq!(pool_events[1]["data"]["availableKeys"], 2);
    assert_eq!(pool_events[1]["data"]["poolId"], pool.to_string());
    assert_eq!(pool_events[2]["data"]["availableKeys"], 0);
    assert_eq!(pool_events[3]["data"]["availableKeys"], 3);
    // The seller also sees the orders of its offers; the type filter works.
    assert_eq!(
        events(&app, &seller, Some("order.fulfilled")).await.len(),
        4
    );
}

#[tokio::test]
async fn concurrent_deliveries_cross_a_threshold_once() {
    let _shared = HORIZON.read().await;
    let app = spawn_app().await;
    let (seller, _) = app.seller().await;
    let storefront = app.storefront().await;
    let (pool, offer) = shop(&app, &seller, 5).await;
    upload(&app, &seller, pool, 12).await;
    let worker = app.start_worker();
    let orders: Vec<Uuid> = futures::future::join_all((0..12).map(|_| {
        let (app, sf) = (&app, &storefront);
        async move {
            let r = app
                .post(
                    "/orders",
                    sf,
                    json!({ "offerId": offer, "buyerId": Uuid::new_v4() }),
                )
                .await;
            let id: Uuid = r.body["id"].as_str().unwrap().parse().unwrap();
            app.post(&format!("/orders/{id}/pay"), sf, json!(null))
                .await;
            id
        }
    }))
    .await;
    for id in orders {
        app.wait_for_status(id, "FULFILLED", Duration::from_secs(20))
            .await;
    }
    worker.stop().await.unwrap();
    let seen = events(&app, &seller, None).await;
    let kinds = types(&seen);
    let count = |k: &str| kinds.iter().filter(|t| **t == k).count();
    // Low stock is crossed once, or skipped when one batch takes the pool from above the
    // threshold straight to empty (then out of stock is the one crossing).
    assert!(count("pool.low_stock") <= 1, "{kinds:?}");
    assert_eq!(count("pool.out_of_stock"), 1, "{kinds:?}");
    assert_eq!(count("pool.restocked"), 1, "{kinds:?}");
    assert_eq!(count("order.paid"), 12);
    assert_eq!(count("order.fulfilled"), 12);
}

#[tokio::test]
async fn order_and_key_events_reach_whom_they_concern_only() {
    let _shared = HORIZON.read().await;
    let app = spawn_app().await;
    let (seller, _) = app.seller().await;
    let (rival, _) = app.seller().await;
    let storefront = app.storefront().await;
    let other_storefront = app.storefront().await;
    let (pool, offer) = shop(&app, &seller, 0).await;
    upload(&app, &seller, pool, 2).await;
    let (one, two) = (
        place(&app, &storefront, offer, 1).await,
        place(&app, &storefront, offer, 2).await,
    );
    let fulfilled = pay_and_serve(&app, &storefront, one).await;
    // Backordered (2 wanted, 1 left), then canceled.
    let waiting = pay_and_serve(&app, &storefront, two).await;
    let r = app
        .post(
            &format!("/orders/{waiting}/cancel"),
            &storefront,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let keys = app
        .get(&format!("/key-pools/{pool}/keys?status=AVAILABLE"), &seller)
        .await;
    let key = keys.body["items"][0]["id"].as_str().unwrap().to_owned();
    let r = app
        .call(
            reqwest::Method::DELETE,
            &format!("/key-pools/{pool}/keys/{key}"),
            Some(&seller),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let mine = events(&app, &storefront, None).await;
    assert_eq!(
        types(&mine),
        [
            "order.paid",
            "order.fulfilled",
            "order.paid",
            "order.backordered",
            "order.canceled"
        ]
    );
    assert_eq!(mine[1]["data"]["id"], fulfilled.to_string());
    assert_eq!(mine[1]["data"]["status"], "FULFILLED");
    assert!(
        mine[1]["data"].get("keys").is_none(),
        "events never carry keys"
    );
    assert_eq!(mine[4]["data"]["status"], "CANCELED");
    let seller_events = events(&app, &seller, None).await;
    let seller_sees = types(&seller_events)
        .into_iter()
        .filter(|t| t.starts_with("key.") || t.starts_with("order."))
        .collect::<Vec<_>>();
    assert_eq!(seller_sees.len(), 6);
    assert!(seller_sees.contains(&"key.invalidated"));
    assert!(events(&app, &other_storefront, None).await.is_empty());
    assert!(events(&app, &rival, None).await.is_empty());
    let (buyer, _) = app.buyer().await;
    assert_eq!(
        app.get("/events", &buyer).await.status,
        StatusCode::FORBIDDEN
    );
    let r = app.get("/events?type=order.exploded", &seller).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = app.get("/events?after=nonsense", &seller).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_event_that_commits_late_is_never_skipped_by_a_reader() {
    let _alone = HORIZON.write().await;
    let app = spawn_app().await;
    let (seller, _) = app.seller().await;
    let storefront = app.storefront().await;
    // Two pools, so the two payments do not wait on each other's pool row.
    let (pool_a, offer_a) = shop(&app, &seller, 0).await;
    let (pool_b, offer_b) = shop(&app, &seller, 0).await;
    upload(&app, &seller, pool_a, 1).await;
    upload(&app, &seller, pool_b, 1).await;
    let place = |offer: Uuid| {
        let (app, storefront) = (&app, &storefront);
        async move {
            let r = app
                .post(
                    "/orders",
                    storefront,
                    json!({ "offerId": offer, "buyerId": Uuid::new_v4() }),
                )
                .await;
            r.body["id"].as_str().unwrap().parse::<Uuid>().unwrap()
        }
    };
    let (slow, fast) = (place(offer_a).await, place(offer_b).await);
    // A transaction pays `slow` (its event is written) and stays open...
    let mut open = app.pool.begin().await.unwrap();
    autokey_shared::transitions::pay(
        &mut open,
        slow,
        None,
        autokey_shared::transitions::Announce::InTransaction,
    )
    .await
    .unwrap();
    // ...while `fast` is paid and committed after it.
    let r = app
        .post(&format!("/orders/{fast}/pay"), &storefront, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let before = app.get("/events", &storefront).await;
    assert_eq!(
        before.body["items"].as_array().unwrap().len(),
        0,
        "{:?}",
        before.body
    );
    let cursor = before.body["nextCursor"].clone();
    open.commit().await.unwrap();
    let all = events(&app, &storefront, None).await;
    let paid: Vec<&str> = all
        .iter()
        .map(|e| e["data"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(paid, [slow.to_string(), fast.to_string()]);
    assert!(cursor.is_null());
}
