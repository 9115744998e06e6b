//! After the sale: MANUAL offers delivered by their seller, refunds, reveal tracking.
//! Every path against a real PostgreSQL, with the pools' counts checked after each.

use std::time::Duration;

use autokey_tests::{TestApp, WEBHOOK_SECRET, fixtures, spawn_app};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// A seller with an active MANUAL offer of `stock` units at 999 EUR cents.
async fn manual_offer(app: &TestApp, stock: i32) -> (String, Uuid) {
    let (seller, _) = app.seller().await;
    let r = app
        .post(
            "/offers/draft",
            &seller,
            json!({"title": "Boxed", "priceCents": 999, "currency": "EUR",
                   "deliveryType": "MANUAL", "stockCount": stock}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let offer: Uuid = r.body["id"].as_str().unwrap().parse().unwrap();
    let r = app
        .post("/offers/publish", &seller, json!({"offerId": offer}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    (seller, offer)
}

async fn place(app: &TestApp, token: &str, offer: Uuid, quantity: i32) -> Value {
    let r = app
        .post(
            "/orders",
            token,
            json!({"offerId": offer, "quantity": quantity}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body
}

fn id_of(body: &Value) -> Uuid {
    body["id"].as_str().unwrap().parse().unwrap()
}

async fn pay(app: &TestApp, token: &str, id: Uuid) {
    let r = app
        .post(&format!("/orders/{id}/pay"), token, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

async fn sellable(app: &TestApp, seller: &str, offer: Uuid) -> i64 {
    let r = app.get(&format!("/offers/{offer}"), seller).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["sellableCount"], r.body["autoKeyAvailableCount"]);
    r.body["sellableCount"].as_i64().unwrap()
}

async fn scalar(app: &TestApp, sql: &str, id: Uuid) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Every pool's counters add up and match its keys' statuses.
async fn assert_pool_invariant(app: &TestApp) {
    let bad: Vec<(Uuid, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT p.id, p.total_keys, p.available_keys, p.reserved_keys, p.delivered_keys,
                p.invalid_keys
         FROM key_pools p
         WHERE p.total_keys <> p.available_keys + p.reserved_keys + p.delivered_keys + p.invalid_keys
            OR (p.total_keys, p.available_keys, p.reserved_keys, p.delivered_keys, p.invalid_keys)
               <> (SELECT count(*), count(*) FILTER (WHERE k.status = 'AVAILABLE'),
                          count(*) FILTER (WHERE k.status = 'RESERVED'),
                          count(*) FILTER (WHERE k.status = 'DELIVERED'),
                          count(*) FILTER (WHERE k.status = 'INVALID')
                   FROM keys k WHERE k.pool_id = p.id)",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(bad.is_empty(), "pool counters wrong: {bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_orders_on_a_manual_stock_of_ten_place_exactly_ten() {
    let app = spawn_app().await;
    let (seller, offer) = manual_offer(&app, 10).await;
    let store = app.storefront().await;
    let replies = futures::future::join_all((0..50).map(|_| {
        app.post(
            "/orders",
            &store,
            json!({"offerId": offer, "buyerId": Uuid::new_v4()}),
        )
    }))
    .await;
    let placed = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let refused = replies
        .iter()
        .filter(|r| r.status == StatusCode::BAD_REQUEST && r.code() == "out_of_stock")
        .count();
    assert_eq!((placed, refused), (10, 40), "{:?}", replies.first());
    assert_eq!(sellable(&app, &seller, offer).await, 0);
    // A canceled order gives its unit back.
    let one = replies
        .iter()
        .find(|r| r.status == StatusCode::CREATED)
        .unwrap();
    let r = app
        .post(
            &format!("/orders/{}/cancel", id_of(&one.body)),
            &store,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(sellable(&app, &seller, offer).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_manual_order_waits_for_its_seller_who_delivers_it_once() {
    let app = spawn_app().await;
    let worker = app.start_worker();
    let (seller, offer) = manual_offer(&app, 5).await;
    let (buyer, _) = app.buyer().await;
    let order = place(&app, &buyer, offer, 2).await;
    let id = id_of(&order);
    assert_eq!(sellable(&app, &seller, offer).await, 3);

    // Not paid yet: the seller cannot deliver.
    let keys = json!({"keys": ["MANUAL-AAAAA-1", "MANUAL-BBBBB-2"]});
    let r = app
        .post(
            &format!("/seller/orders/{id}/deliver"),
            &seller,
            keys.clone(),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "not_paid"));

    pay(&app, &buyer, id).await;
    // The worker's job finishes without delivering anything, and nothing loops.
    app.wait_for_job(id, "Done", Duration::from_secs(10)).await;
    let r = app
        .post(&format!("/orders/{id}/fulfill?wait=1"), &buyer, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.body["status"], "PAID");

    // The seller sees it waiting; another seller does not.
    let listed = app.get("/seller/orders?status=PAID", &seller).await;
    assert_eq!(listed.status, StatusCode::OK, "{:?}", listed.body);
    let ids: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.to_string()]);
    assert!(listed.body["items"][0].get("keys").is_none());
    let (other, _) = app.seller().await;
    let theirs = app.get("/seller/orders", &other).await;
    assert_eq!(theirs.body["items"], json!([]));
    let r = app
        .post(
            &format!("/seller/orders/{id}/deliver"),
            &other,
            keys.clone(),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));

    // Wrong count, invalid and repeated keys are refused and change nothing.
    for bad in [
        json!({"keys": ["MANUAL-AAAAA-1"]}),
        json!({"keys": ["MANUAL-AAAAA-1", "abc"]}),
        json!({"keys": ["MANUAL-AAAAA-1", " MANUAL-AAAAA-1 "]}),
    ] {
        let r = app
            .post(
                &format!("/seller/orders/{id}/deliver"),
                &seller,
                bad.clone(),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "validation_failed"),
            "{bad}"
        );
    }
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM manual_keys WHERE order_id = $1",
            id
        )
        .await,
        0
    );

    // Two deliveries at once: one wins, the other is a conflict.
    let deliver = format!("/seller/orders/{id}/deliver");
    let (a, b) = tokio::join!(
        app.post(&deliver, &seller, keys.clone()),
        app.post(
            &deliver,
            &seller,
            json!({"keys": ["MANUAL-CCCCC-3", "MANUAL-DDDDD-4"]})
        ),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{a:?} {b:?}"
    );
    let won = if a.status == StatusCode::OK { &a } else { &b };
    assert_eq!(won.body["status"], "FULFILLED");
    assert!(
        won.body.get("keys").is_none(),
        "the seller never reads them back"
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM manual_keys WHERE order_id = $1",
            id
        )
        .await,
        2
    );
    // Stored sealed: no plaintext in the row.
    let cts: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT ciphertext FROM manual_keys WHERE order_id = $1")
            .bind(id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(
        cts.iter()
            .all(|c| !String::from_utf8_lossy(c).contains("MANUAL-"))
    );
    // Delivered units left the stock and the open orders: sellable is unchanged.
    assert_eq!(sellable(&app, &seller, offer).await, 3);
    assert_eq!(
        scalar(
            &app,
            "SELECT stock_count::bigint FROM offers WHERE id = $1",
            offer
        )
        .await,
        3
    );

    // The buyer reads them, the same every time, and each read is audited.
    let got = app.get(&format!("/orders/{id}"), &buyer).await;
    assert_eq!(got.body["status"], "FULFILLED");
    let mut plain: Vec<&str> = got.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    plain.sort();
    assert!(
        plain == ["MANUAL-AAAAA-1", "MANUAL-BBBBB-2"]
            || plain == ["MANUAL-CCCCC-3", "MANUAL-DDDDD-4"],
        "{plain:?}"
    );
    // The first read recorded each key's reveal; later reads show the same time.
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM manual_keys WHERE order_id = $1 AND revealed_at IS NOT NULL",
            id
        )
        .await,
        2
    );
    let r = app
        .post(&format!("/orders/{id}/fulfill"), &buyer, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["keys"], got.body["keys"]);
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM audit_log WHERE order_id = $1 AND action = 'order.keys_read'",
            id
        )
        .await,
        2
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM audit_log WHERE order_id = $1 AND action = 'order.delivered_manually'",
            id
        )
        .await,
        1
    );
    // Its order.fulfilled event, without plaintext.
    let events: Vec<Value> = sqlx::query_scalar(
        "SELECT data FROM events WHERE order_id = $1 AND type = 'order.fulfilled'",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(events.len(), 1);
    assert!(!events[0].to_string().contains("MANUAL-"));
    // A key delivered once cannot be delivered to another order.
    let second = id_of(&place(&app, &buyer, offer, 1).await);
    pay(&app, &buyer, second).await;
    let r = app
        .post(
            &format!("/seller/orders/{second}/deliver"),
            &seller,
            json!({"keys": [plain[0]]}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "validation_failed")
    );

    // A refund of the delivered MANUAL order: it stays FULFILLED, refunded.
    assert_eq!(refund(&app, "rf-manual", id, 1998).await, "refunded");
    let got = app.get(&format!("/orders/{id}"), &buyer).await;
    assert_eq!(got.body["status"], "FULFILLED");
    assert!(got.body["refundedAt"].is_string(), "{:?}", got.body);

    // The sweeper leaves the paid MANUAL order alone, however often it runs.
    let mut config = autokey_tests::test_worker_config();
    config.job_retention = Duration::ZERO;
    config.heartbeat = Duration::from_millis(1);
    app.wait_for_job(second, "Done", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..3 {
        let sweep = autokey_worker::maintenance::run_once(&app.pool, &config)
            .await
            .unwrap();
        assert_eq!(sweep.fulfill_jobs_added, 0);
    }
    assert_pool_invariant(&app).await;
    worker.stop().await.expect("worker stops");
}

/// An AUTO_KEY shop whose pool counts stay right through it all.
#[tokio::test]
async fn auto_key_offers_show_their_sellable_count() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 4).await;
    let (seller, _) = app
        .token(autokey_shared::model::Role::Seller, Some(shop.seller_id))
        .await;
    assert_eq!(sellable(&app, &seller, shop.offer_id).await, 4);
    assert_pool_invariant(&app).await;
}

fn refund_event(order: Uuid, amount: i64) -> String {
    json!({"type": "payment.refunded", "data": {"orderId": order, "paymentId": "pay_r",
           "amountCents": amount, "currency": "EUR"}})
    .to_string()
}

async fn refund(app: &TestApp, webhook_id: &str, order: Uuid, amount: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let r = app
        .webhook(
            webhook_id,
            now,
            &refund_event(order, amount),
            WEBHOOK_SECRET,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body["outcome"].as_str().unwrap().to_owned()
}

async fn key_statuses(app: &TestApp, pool: Uuid) -> Vec<(String, Option<String>)> {
    sqlx::query_as(
        "SELECT status, invalid_reason FROM keys WHERE pool_id = $1 ORDER BY created_at, id",
    )
    .bind(pool)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_cancels_a_paid_order_and_its_reserved_keys_go_back() {
    let app = spawn_app().await;
    let worker = app.start_worker();
    let shop = fixtures::shop(&app, 1).await;
    // A quantity-3 order on a pool of 1 key, placed through the core (the route's stock
    // check would refuse it): paid, it reserves the one key and waits.
    let three = {
        let mut conn = app.pool.acquire().await.unwrap();
        let order = autokey_shared::store::orders::insert(
            &mut conn,
            &autokey_shared::store::orders::NewOrder {
                buyer_id: Uuid::new_v4(),
                storefront_id: None,
                offer_id: shop.offer_id,
                pool_id: Some(shop.pool_id),
                quantity: 3,
                amount_cents: 2997,
                currency: "EUR".into(),
            },
        )
        .await
        .unwrap();
        order.id
    };
    // Unsigned: refused, nothing written.
    let body = refund_event(three, 2997);
    let r = app
        .webhook(
            "rf-bad",
            chrono::Utc::now().timestamp(),
            &body,
            b"wrong-secret",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refund(&app, "rf-pending", three, 2997).await, "not_paid");
    let pay_body = json!({"type": "payment.succeeded", "data": {"orderId": three,
        "paymentId": "p3", "amountCents": 2997, "currency": "EUR"}})
    .to_string();
    let r = app
        .webhook(
            "pay-3",
            chrono::Utc::now().timestamp(),
            &pay_body,
            WEBHOOK_SECRET,
        )
        .await;
    assert_eq!(r.body["outcome"], "applied");
    // It keeps the one key it could reserve and waits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fixtures::pool_counts(&app, shop.pool_id).await != (0, 1, 0) {
        assert!(tokio::time::Instant::now() < deadline, "never reserved");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(refund(&app, "rf-3", three, 2997).await, "refunded");
    assert_eq!(
        refund(&app, "rf-3", three, 2997).await,
        "duplicate",
        "a replayed webhook-id has no effect"
    );
    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(three)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "CANCELED");
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (1, 0, 0));
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM events WHERE order_id = $1 AND type = 'order.canceled'",
            three
        )
        .await,
        1
    );
    assert_eq!(
        refund(&app, "rf-3-again", three, 2997).await,
        "order_canceled"
    );
    assert_pool_invariant(&app).await;
    worker.stop().await.expect("worker stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refunded_fulfilled_order_gives_its_unrevealed_keys_back_to_be_sold_again() {
    let app = spawn_app().await;
    let worker = app.start_worker();
    let shop = fixtures::shop(&app, 2).await;
    let (buyer, _) = app.buyer().await;
    let id = id_of(&place(&app, &buyer, shop.offer_id, 2).await);
    pay(&app, &buyer, id).await;
    app.wait_for_status(id, "FULFILLED", Duration::from_secs(10))
        .await;
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (0, 0, 2));

    assert_eq!(refund(&app, "rf-a", id, 999).await, "amount_mismatch");
    assert_eq!(refund(&app, "rf-b", id, 1998).await, "refunded");
    assert_eq!(refund(&app, "rf-c", id, 1998).await, "already_refunded");
    // Never revealed: both keys are AVAILABLE again; the order stays FULFILLED, refunded,
    // and no longer shows them.
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (2, 0, 0));
    assert_eq!(
        key_statuses(&app, shop.pool_id).await,
        vec![("AVAILABLE".to_owned(), None); 2]
    );
    let got = app.get(&format!("/orders/{id}"), &buyer).await;
    assert_eq!(got.body["status"], "FULFILLED");
    assert!(got.body["refundedAt"].is_string(), "{:?}", got.body);
    assert_eq!(got.body["keys"], json!([]));
    assert_pool_invariant(&app).await;

    // They are sold again, to another order.
    let again = id_of(&place(&app, &buyer, shop.offer_id, 2).await);
    pay(&app, &buyer, again).await;
    let r = app
        .post(
            &format!("/orders/{again}/fulfill?wait=10"),
            &buyer,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["keys"].as_array().unwrap().len(), 2);
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (0, 0, 2));
    assert_pool_invariant(&app).await;
    worker.stop().await.expect("worker stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_racing_the_worker_either_cancels_or_takes_the_keys_back() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 40).await;
    let (buyer, _) = app.buyer().await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let id = id_of(&place(&app, &buyer, shop.offer_id, 2).await);
        pay(&app, &buyer, id).await;
        ids.push(id);
    }
    // The worker starts as the refunds arrive.
    let worker = app.start_worker();
    let outcomes = futures::future::join_all(ids.iter().enumerate().map(|(i, id)| {
        let app = &app;
        async move { refund(app, &format!("race-{i}"), *id, 1998).await }
    }))
    .await;
    assert!(outcomes.iter().all(|o| o == "refunded"), "{outcomes:?}");
    for id in &ids {
        let (status, refunded, live): (String, bool, i64) = sqlx::query_as(
            "SELECT status, refunded_at IS NOT NULL,
                    (SELECT count(*) FROM order_deliveries d
                     WHERE d.order_id = o.id AND d.returned_at IS NULL)
             FROM orders o WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        match status.as_str() {
            "CANCELED" => assert!(!refunded && live == 0),
            "FULFILLED" => assert!(refunded && live == 0, "{id}: {live} live deliveries"),
            other => panic!("{id} is {other}"),
        }
    }
    // Whichever came first, every key is back and nothing is owed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fixtures::pool_counts(&app, shop.pool_id).await != (40, 0, 0) {
        assert!(tokio::time::Instant::now() < deadline, "keys not back");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let r = app.get(&format!("/offers/{}", shop.offer_id), &buyer).await;
    assert_eq!(r.body["sellableCount"], 40);
    assert_pool_invariant(&app).await;
    worker.stop().await.expect("worker stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_reveal_is_recorded_with_its_audit_row_and_decides_what_a_refund_does() {
    let app = spawn_app().await;
    let worker = app.start_worker();
    let shop = fixtures::shop(&app, 0).await;
    let plaintexts = fixtures::add_keys(&app, shop.pool_id, 3).await;
    let (seller, _) = app
        .token(autokey_shared::model::Role::Seller, Some(shop.seller_id))
        .await;
    let (buyer, _) = app.buyer().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = id_of(&place(&app, &buyer, shop.offer_id, 1).await);
        pay(&app, &buyer, id).await;
        app.wait_for_status(id, "FULFILLED", Duration::from_secs(10))
            .await;
        ids.push(id);
    }
    let (read, fulfilled, untouched) = (ids[0], ids[1], ids[2]);
    let revealed = |id: Uuid| {
        let app = &app;
        async move {
            sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
                "SELECT revealed_at FROM order_deliveries WHERE order_id = $1",
            )
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap()
        }
    };
    assert!(
        revealed(read).await.is_none(),
        "delivery alone reveals nothing"
    );

    let first = app.get(&format!("/orders/{read}"), &buyer).await;
    let at = first.body["keys"][0]["revealedAt"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = revealed(read).await.expect("recorded");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(&at).unwrap(),
        stored,
        "the answer shows the recorded time"
    );
    let again = app.get(&format!("/orders/{read}"), &buyer).await;
    assert_eq!(again.body["keys"][0]["revealedAt"], at.as_str());
    assert_eq!(
        revealed(read).await,
        Some(stored),
        "only the first reveal counts"
    );
    // Each read has its audit row, the first one saying it revealed the key.
    let reveals: Vec<i64> = sqlx::query_scalar(
        "SELECT (details->>'firstReveals')::bigint FROM audit_log
         WHERE order_id = $1 AND action = 'order.keys_read' ORDER BY id",
    )
    .bind(read)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(reveals, [1, 0]);
    // The fulfill answer reveals too; a foreign caller's attempt reveals nothing.
    let (stranger, _) = app.buyer().await;
    let r = app.get(&format!("/orders/{untouched}"), &stranger).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app
        .post(&format!("/orders/{fulfilled}/fulfill"), &buyer, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["keys"][0]["revealedAt"].is_string());
    assert!(revealed(fulfilled).await.is_some());
    assert!(revealed(untouched).await.is_none());

    // Refunds: the revealed keys become INVALID (refunded), the untouched one is sold again.
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(refund(&app, &format!("rv-{i}"), *id, 999).await, "refunded");
    }
    let keys = app
        .get(&format!("/key-pools/{}/keys", shop.pool_id), &seller)
        .await;
    assert_eq!(keys.status, StatusCode::OK, "{:?}", keys.body);
    let mut seen: Vec<(String, Option<String>)> = keys.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["status"].as_str().unwrap().to_owned(),
                k["invalidReason"].as_str().map(str::to_owned),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("AVAILABLE".to_owned(), None),
            ("INVALID".to_owned(), Some("refunded".to_owned())),
            ("INVALID".to_owned(), Some("refunded".to_owned())),
        ]
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM events WHERE pool_id = $1 AND type = 'key.invalidated'
               AND data->>'reason' = 'refunded'",
            shop.pool_id
        )
        .await,
        2
    );
    // No event ever carries a plaintext key.
    let all: Vec<Value> = sqlx::query_scalar("SELECT data FROM events")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(!all.is_empty());
    for data in &all {
        let text = data.to_string();
        assert!(
            plaintexts.iter().all(|p| !text.contains(p.as_str())),
            "{text}"
        );
    }
    assert_pool_invariant(&app).await;
    worker.stop().await.expect("worker stops");
}

/// A shop of `keys` keys, a buyer and one FULFILLED order of `quantity`; returns the
/// seller's token, the buyer's, the order and its keys' ids.
async fn fulfilled_order(
    app: &TestApp,
    keys: usize,
    quantity: i32,
) -> (fixtures::Shop, String, String, Uuid, Vec<Uuid>) {
    let shop = fixtures::shop(app, keys).await;
    let (seller, _) = app
        .token(autokey_shared::model::Role::Seller, Some(shop.seller_id))
        .await;
    let (buyer, _) = app.buyer().await;
    let id = id_of(&place(app, &buyer, shop.offer_id, quantity).await);
    pay(app, &buyer, id).await;
    let r = app
        .post(
            &format!("/orders/{id}/fulfill?wait=10"),
            &buyer,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let key_ids = r.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().parse().unwrap())
        .collect();
    (shop, seller, buyer, id, key_ids)
}

async fn report(app: &TestApp, token: &str, order: Uuid, key: Uuid) -> Value {
    let r = app
        .post(
            &format!("/orders/{order}/keys/{key}/report"),
            token,
            json!({"reason": "already redeemed"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body
}

/// Waits until the report has its replacement; returns it.
async fn replacement_of(app: &TestApp, report: Uuid) -> Uuid {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r: Option<Uuid> =
            sqlx::query_scalar("SELECT replacement_key_id FROM key_reports WHERE id = $1")
                .bind(report)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        if let Some(k) = r {
            return k;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replacement for {report}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn deliveries(app: &TestApp, order: Uuid) -> i64 {
    scalar(
        app,
        "SELECT count(*) FROM order_deliveries WHERE order_id = $1",
        order,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_approvals_at_once_give_one_replacement_shown_in_the_order() {
    let app = spawn_app().await;
    let worker = app.start_worker();
    let (shop, seller, buyer, id, keys) = fulfilled_order(&app, 5, 2).await;
    let reported = report(&app, &buyer, id, keys[0]).await;
    assert_eq!(reported["status"], "open");
    let report_id: Uuid = id_of(&reported);
    // A key of someone else's order, or a second live report, is refused.
    let (stranger, _) = app.buyer().await;
    let r = app
        .post(
            &format!("/orders/{id}/keys/{}/report", keys[0]),
            &stranger,
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app
        .post(
            &format!("/orders/{id}/keys/{}/report", keys[0]),
            &buyer,
            json!({"reason": "again"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "conflict"));

    let listed = app.get("/seller/key-reports?status=open", &seller).await;
    assert_eq!(listed.status, StatusCode::OK, "{:?}", listed.body);
    assert_eq!(listed.body["items"][0]["id"], report_id.to_string());
    let (other_seller, _) = app.seller().await;
    let theirs = app.get("/seller/key-reports", &other_seller).await;
    assert_eq!(theirs.body["items"], json!([]));
    let r = app
        .post(
            &format!("/seller/key-reports/{report_id}/approve"),
            &other_seller,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Two sessions of the seller approve at once.
    let (second, _) = app
        .token(autokey_shared::model::Role::Seller, Some(shop.seller_id))
        .await;
    let path = format!("/seller/key-reports/{report_id}/approve");
    let (a, b) = tokio::join!(
        app.post(&path, &seller, json!(null)),
        app.post(&path, &second, json!(null))
    );
    assert_eq!(
        (a.status, b.status),
        (StatusCode::OK, StatusCode::OK),
        "{a:?} {b:?}"
    );
    assert_eq!(a.body["status"], "approved");
    let new_key = replacement_of(&app, report_id).await;
    // Approving again later changes nothing either.
    let r = app.post(&path, &seller, json!(null)).await;
    assert_eq!(r.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        deliveries(&app, id).await,
        3,
        "two keys and one replacement"
    );
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (2, 0, 2));

    // The order shows the replacement and marks the replaced key.
    let got = app.get(&format!("/orders/{id}"), &buyer).await;
    let shown = got.body["keys"].as_array().unwrap();
    assert_eq!(shown.len(), 3, "{:?}", got.body);
    let old = shown
        .iter()
        .find(|k| k["id"] == keys[0].to_string())
        .unwrap();
    assert_eq!(old["replacedBy"], new_key.to_string());
    let new = shown
        .iter()
        .find(|k| k["id"] == new_key.to_string())
        .unwrap();
    assert_eq!(new["replaces"], keys[0].to_string());
    assert!(new["key"].as_str().unwrap().starts_with("KEY-"));
    let seller_keys = app
        .get(
            &format!("/key-pools/{}/keys?status=INVALID", shop.pool_id),
            &seller,
        )
        .await;
    assert_eq!(seller_keys.body["items"][0]["invalidReason"], "replaced");

    // Reject: another report on the other key; rejecting twice is fine, approving is not.
    let second_report = id_of(&report(&app, &buyer, id, keys[1]).await);
    let reject = format!("/seller/key-reports/{second_report}/reject");
    let r = app
        .post(&reject, &seller, json!({"note": "works for us"}))
        .await;
    assert_eq!(
        (r.status, r.body["status"].as_str()),
        (StatusCode::OK, Some("rejected"))
    );
    assert_eq!(r.body["note"], "works for us");
    let r = app.post(&reject, &seller, json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app
        .post(
            &format!("/seller/key-reports/{second_report}/approve"),
            &seller,
            json!(null),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "conflict"));
    assert_eq!(deliveries(&app, id).await, 3);

    // A refund after it all: the replaced key stays INVALID, the others come back.
    assert_eq!(refund(&app, "rp-refund", id, 1998).await, "refunded");
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (2, 0, 0));
    assert_pool_invariant(&app).await;
    worker.stop().await.expect("worker stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replacement_waits_for_stock_and_races_an_upload_once() {
    let app = spawn_app().await;
    let worker = app.start_worker();
    let (shop, seller, buyer, id, keys) = fulfilled_order(&app, 1, 1).await;
    let report_id = id_of(&report(&app, &buyer, id, keys[0]).await);
    let approve = format!("/seller/key-reports/{report_id}/approve");
    let (approved, added) = tokio::join!(
        app.post(&approve, &seller, json!(null)),
        fixtures::add_keys(&app, shop.pool_id, 1),
    );
    assert_eq!(approved.status, StatusCode::OK, "{:?}", approved.body);
    assert_eq!(added.len(), 1);
    let new_key = replacement_of(&app, report_id).await;
    assert_ne!(new_key, keys[0]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(deliveries(&app, id).await, 2);
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (0, 0, 1));
    assert_pool_invariant(&app).await;

    // The pool is empty now: the next approved replacement waits, then an upload serves it.
    let second = id_of(&report(&app, &buyer, id, new_key).await);
    let r = app
        .post(
            &format!("/seller/key-reports/{second}/approve"),
            &seller,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(deliveries(&app, id).await, 2, "nothing to give yet");
    let r = app
        .get("/seller/key-reports?status=approved", &seller)
        .await;
    assert!(
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == second.to_string() && i.get("replacementKeyId").is_none())
    );
    fixtures::add_keys(&app, shop.pool_id, 2).await;
    replacement_of(&app, second).await;
    assert_eq!(deliveries(&app, id).await, 3);
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (1, 0, 1));
    assert_pool_invariant(&app).await;
    worker.stop().await.expect("worker stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_may_replace_automatically_up_to_its_limit_per_order() {
    let app = spawn_app().await;
    let worker = app.start_worker();
    let (shop, _seller, buyer, id, keys) = fulfilled_order(&app, 5, 2).await;
    {
        let mut conn = app.pool.acquire().await.unwrap();
        autokey_shared::store::pools::set_auto_replace_limit(&mut conn, shop.pool_id, 1)
            .await
            .unwrap();
    }
    let first = report(&app, &buyer, id, keys[0]).await;
    assert_eq!(first["status"], "approved", "{first:?}");
    replacement_of(&app, id_of(&first)).await;
    let second = report(&app, &buyer, id, keys[1]).await;
    assert_eq!(
        second["status"], "open",
        "over the limit: the seller decides"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(deliveries(&app, id).await, 3);
    assert_pool_invariant(&app).await;
    worker.stop().await.expect("worker stops");
}

async fn owed_units(app: &TestApp, pool: Uuid) -> i64 {
    scalar(
        app,
        "SELECT coalesce(sum(units), 0)::bigint FROM pool_owed WHERE pool_id = $1",
        pool,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_replacement_is_owed_by_its_pool_and_a_refund_cancels_it() {
    let app = spawn_app().await;
    let worker = app.start_worker();
    let (shop, seller, buyer, id, keys) = fulfilled_order(&app, 1, 1).await;
    worker.stop().await.expect("worker stops");
    let report_id = id_of(&report(&app, &buyer, id, keys[0]).await);
    let r = app
        .post(
            &format!("/seller/key-reports/{report_id}/approve"),
            &seller,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(owed_units(&app, shop.pool_id).await, 1);

    // A key arrives while no worker runs: it is the waiting replacement's, not for sale.
    fixtures::add_keys(&app, shop.pool_id, 1).await;
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (1, 0, 0));
    assert_eq!(sellable(&app, &seller, shop.offer_id).await, 0);
    let (other_buyer, _) = app.buyer().await;
    let r = app
        .post("/orders", &other_buyer, json!({"offerId": shop.offer_id}))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "out_of_stock"),
        "{:?}",
        r.body
    );

    // The order is refunded before the replacement went out: no replacement, the report
    // is closed, the key is for sale again.
    assert_eq!(refund(&app, "wr-refund", id, 999).await, "refunded");
    let listed = app.get("/seller/key-reports", &seller).await;
    assert_eq!(listed.body["items"][0]["id"], report_id.to_string());
    assert_eq!(listed.body["items"][0]["status"], "canceled");
    assert_eq!(owed_units(&app, shop.pool_id).await, 0);
    assert_eq!(sellable(&app, &seller, shop.offer_id).await, 1);
    let r = app
        .post(
            &format!("/seller/key-reports/{report_id}/approve"),
            &seller,
            json!(null),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "conflict"));
    let worker = app.start_worker();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        deliveries(&app, id).await,
        1,
        "a refunded order gets nothing"
    );
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (1, 0, 0));
    assert_pool_invariant(&app).await;
    worker.stop().await.expect("worker stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_delivered_by_hand_is_reported_and_replaced_by_its_seller_once() {
    let app = spawn_app().await;
    let (seller, offer) = manual_offer(&app, 3).await;
    let (buyer, _) = app.buyer().await;
    let id = id_of(&place(&app, &buyer, offer, 1).await);
    pay(&app, &buyer, id).await;
    let r = app
        .post(
            &format!("/seller/orders/{id}/deliver"),
            &seller,
            json!({"keys": ["HAND-KEY-0001"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let got = app.get(&format!("/orders/{id}"), &buyer).await;
    let old: Uuid = got.body["keys"][0]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(sellable(&app, &seller, offer).await, 2);

    let reported = report(&app, &buyer, id, old).await;
    assert_eq!(reported["status"], "open", "a seller decides by hand");
    let report_id = id_of(&reported);
    let listed = app.get("/seller/key-reports?status=open", &seller).await;
    assert_eq!(listed.body["items"][0]["keyId"], old.to_string());
    // Approving without a key cannot work: the seller types the replacement.
    let r = app
        .post(
            &format!("/seller/key-reports/{report_id}/approve"),
            &seller,
            json!(null),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "conflict"));
    let replace = format!("/seller/key-reports/{report_id}/replace");
    for bad in [
        json!({"key": "abc"}),
        json!({"key": "HAND-KEY-0001"}),
        json!({}),
    ] {
        let r = app.post(&replace, &seller, bad.clone()).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "validation_failed"),
            "{bad}: {:?}",
            r.body
        );
    }
    let (other, _) = app.seller().await;
    let r = app
        .post(&replace, &other, json!({"key": "HAND-KEY-0009"}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Two sessions of the seller answer at once: one replacement.
    let (a, b) = tokio::join!(
        app.post(&replace, &seller, json!({"key": "HAND-KEY-0002"})),
        app.post(&replace, &seller, json!({"key": "HAND-KEY-0003"})),
    );
    assert_eq!(
        (a.status, b.status),
        (StatusCode::OK, StatusCode::OK),
        "{a:?} {b:?}"
    );
    assert_eq!(a.body["status"], "approved");
    assert_eq!(a.body["replacementKeyId"], b.body["replacementKeyId"]);
    let new: Uuid = a.body["replacementKeyId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM manual_keys WHERE order_id = $1",
            id
        )
        .await,
        2
    );
    // The replacement left the seller's stock like a delivered unit.
    assert_eq!(sellable(&app, &seller, offer).await, 1);

    let got = app.get(&format!("/orders/{id}"), &buyer).await;
    let shown = got.body["keys"].as_array().unwrap();
    assert_eq!(shown.len(), 2, "{:?}", got.body);
    let old_shown = shown.iter().find(|k| k["id"] == old.to_string()).unwrap();
    assert_eq!(old_shown["replacedBy"], new.to_string());
    let new_shown = shown.iter().find(|k| k["id"] == new.to_string()).unwrap();
    assert_eq!(new_shown["replaces"], old.to_string());
    assert!(
        ["HAND-KEY-0002", "HAND-KEY-0003"].contains(&new_shown["key"].as_str().unwrap()),
        "{new_shown:?}"
    );
    // The replaced key cannot be reported again; its replacement can.
    let r = app
        .post(
            &format!("/orders/{id}/keys/{old}/report"),
            &buyer,
            json!({"reason": "again"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let second = report(&app, &buyer, id, new).await;
    assert_eq!(second["status"], "open");
    // A refund closes it: a refunded order gets no replacement.
    assert_eq!(refund(&app, "hand-refund", id, 999).await, "refunded");
    let r = app
        .post(
            &format!("/seller/key-reports/{}/replace", id_of(&second)),
            &seller,
            json!({"key": "HAND-KEY-0004"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "conflict"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seller_changes_its_pool_and_reads_reports_a_page_at_a_time() {
    let app = spawn_app().await;
    let worker = app.start_worker();
    let (shop, seller, buyer, id, keys) = fulfilled_order(&app, 5, 3).await;
    worker.stop().await.expect("worker stops");
    let path = format!("/key-pools/{}", shop.pool_id);
    let patch = |token: String, body: Value| {
        let (app, path) = (&app, path.clone());
        async move {
            app.call(reqwest::Method::PATCH, &path, Some(&token), Some(body))
                .await
        }
    };
    let r = patch(
        seller.clone(),
        json!({"autoReplaceLimit": 2, "name": "Renamed"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        (r.body["autoReplaceLimit"].as_i64(), r.body["name"].as_str()),
        (Some(2), Some("Renamed"))
    );
    assert_eq!(r.body["lowStockThreshold"], 0, "left as it was");
    for bad in [
        json!({"autoReplaceLimit": 101}),
        json!({"autoReplaceLimit": -1}),
        json!({"lowStockThreshold": -1}),
        json!({"colour": "red"}),
    ] {
        let r = patch(seller.clone(), bad.clone()).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "validation_failed"),
            "{bad}"
        );
    }
    let (other, _) = app.seller().await;
    assert_eq!(
        patch(other.clone(), json!({"autoReplaceLimit": 0}))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = patch(seller.clone(), json!({"autoReplaceLimit": 0})).await;
    assert_eq!(r.body["autoReplaceLimit"], 0);
    assert_eq!(r.body["name"], "Renamed");

    let mut filed = Vec::new();
    for k in &keys {
        filed.push(id_of(&report(&app, &buyer, id, *k).await));
    }
    let first = app.get("/seller/key-reports?limit=2", &seller).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let page: Vec<&str> = first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        page,
        [filed[2].to_string(), filed[1].to_string()],
        "newest first"
    );
    let cursor = first.body["nextCursor"].as_str().unwrap();
    let next = app
        .get(
            &format!("/seller/key-reports?limit=2&cursor={cursor}"),
            &seller,
        )
        .await;
    assert_eq!(next.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(next.body["items"][0]["id"], filed[0].to_string());
    assert_eq!(next.body["nextCursor"], Value::Null);
    for bad in ["limit=0", "limit=501", "cursor=nope", "status=closed"] {
        let r = app
            .get(&format!("/seller/key-reports?{bad}"), &seller)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_manual_order_stops_holding_its_stock_when_its_hold_runs_out() {
    use autokey_worker::maintenance;
    let app = spawn_app().await;
    let (seller, offer) = manual_offer(&app, 3).await;
    let (buyer, _) = app.buyer().await;
    let abandoned = id_of(&place(&app, &buyer, offer, 2).await);
    let paid = id_of(&place(&app, &buyer, offer, 1).await);
    pay(&app, &buyer, paid).await;
    // An unpaid AUTO_KEY order holds nothing and is left alone.
    let shop = fixtures::shop(&app, 1).await;
    let auto = id_of(&place(&app, &buyer, shop.offer_id, 1).await);
    assert_eq!(sellable(&app, &seller, offer).await, 0);

    let mut config = autokey_tests::test_worker_config();
    config.manual_hold = Duration::from_secs(3600);
    let sweep = maintenance::run_once(&app.pool, &config).await.unwrap();
    assert_eq!(sweep.manual_holds_expired, 0, "the hold has not run out");
    assert_eq!(sellable(&app, &seller, offer).await, 0);

    tokio::time::sleep(Duration::from_millis(50)).await;
    config.manual_hold = Duration::from_millis(10);
    let sweep = maintenance::run_once(&app.pool, &config).await.unwrap();
    assert_eq!(sweep.manual_holds_expired, 1);
    let status = |id: Uuid| {
        let app = &app;
        let buyer = &buyer;
        async move {
            let r = app.get(&format!("/orders/{id}"), buyer).await;
            r.body["status"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(status(abandoned).await, "CANCELED");
    assert_eq!(status(paid).await, "PAID");
    assert_eq!(status(auto).await, "PENDING");
    assert_eq!(sellable(&app, &seller, offer).await, 2);
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM events WHERE order_id = $1 AND type = 'order.canceled'",
            abandoned
        )
        .await,
        1
    );
    // Paying it now is refused; the units are someone else's to buy.
    let r = app
        .post(&format!("/orders/{abandoned}/pay"), &buyer, json!(null))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "conflict"));
    let sweep = maintenance::run_once(&app.pool, &config).await.unwrap();
    assert_eq!(sweep.manual_holds_expired, 0);
}
