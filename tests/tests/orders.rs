//! Orders, payment and fulfillment through the API and a real worker.

use std::{collections::HashSet, time::Duration};

use autokey_tests::{AppOptions, TestApp, fixtures, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

async fn order(app: &TestApp, token: &str, offer_id: Uuid, quantity: i32) -> Uuid {
    let r = app
        .post(
            "/orders",
            token,
            json!({ "offerId": offer_id, "quantity": quantity }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["status"], "PENDING");
    r.body["id"].as_str().unwrap().parse().unwrap()
}

async fn pay(app: &TestApp, token: &str, id: Uuid) -> Value {
    let r = app
        .post(&format!("/orders/{id}/pay"), token, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body
}

fn keys_of(body: &Value) -> Vec<String> {
    body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn order_pay_fulfill_returns_a_key_and_the_same_key_again() {
    let app = spawn_app().await;
    let _worker = app.start_worker();
    let shop = fixtures::shop(&app, 3).await;
    let (buyer, buyer_id) = app.buyer().await;

    let id = order(&app, &buyer, shop.offer_id, 1).await;
    let got = app.get(&format!("/orders/{id}"), &buyer).await;
    assert_eq!(got.body["amountCents"], 999);
    assert_eq!(got.body["buyerId"], buyer_id.to_string());
    assert!(got.body.get("keys").is_none());
    let r = app
        .post(&format!("/orders/{id}/fulfill"), &buyer, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "not_paid");

    let paid = pay(&app, &buyer, id).await;
    assert!(matches!(
        paid["status"].as_str(),
        Some("PAID" | "FULFILLED")
    ));
    let first = app
        .post(
            &format!("/orders/{id}/fulfill?wait=10"),
            &buyer,
            json!(null),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.body["status"], "FULFILLED");
    let keys = keys_of(&first.body);
    assert_eq!(keys.len(), 1);
    assert!(keys[0].starts_with("KEY-"));

    let again = app
        .post(&format!("/orders/{id}/fulfill"), &buyer, json!(null))
        .await;
    assert_eq!(keys_of(&again.body), keys);
    let read = app.get(&format!("/orders/{id}"), &buyer).await;
    assert_eq!(keys_of(&read.body), keys);
    assert_eq!(pay(&app, &buyer, id).await["status"], "FULFILLED");

    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (2, 0, 1));
    let audits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE order_id = $1 AND action = 'order.keys_read'",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(audits, 3);

    // Another buyer sees nothing, exactly like a missing order.
    let (other, _) = app.buyer().await;
    let r = app.get(&format!("/orders/{id}"), &other).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "not_found");
    let r = app
        .get(&format!("/orders/{}", Uuid::now_v7()), &other)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = app.get("/orders/not-a-uuid", &other).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "validation_failed");
}

#[tokio::test]
async fn jobs_enqueued_by_sql_run_on_apalis() {
    // `jobs::enqueue` writes apalis-postgres's row format by hand; a real apalis worker
    // must pick such a job up, or payment would never lead to delivery.
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 1).await;
    let (buyer, _) = app.buyer().await;
    let id = order(&app, &buyer, shop.offer_id, 1).await;
    pay(&app, &buyer, id).await;
    let job_status: String =
        sqlx::query_scalar("SELECT status FROM apalis.jobs WHERE idempotency_key = $1")
            .bind(id.to_string())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(job_status, "Pending");
    // The queue's own workers only: no fast lane to take the job first.
    let worker = app.start_worker_with(autokey_worker::WorkerConfig {
        fast_lane: false,
        ..autokey_tests::test_worker_config()
    });
    app.wait_for_status(id, "FULFILLED", Duration::from_secs(10))
        .await;
    app.wait_for_job(id, "Done", Duration::from_secs(10)).await;
    worker.stop().await.unwrap();
    let served_by: Option<String> = sqlx::query_scalar(
        "SELECT last_result ->> 'Ok' FROM apalis.jobs WHERE idempotency_key = $1",
    )
    .bind(id.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_ne!(served_by.as_deref(), Some("served by the fast lane"));
}

#[tokio::test]
async fn fulfill_gives_a_paid_order_that_lost_its_job_a_new_one_after_a_moment() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 1).await;
    let (buyer, _) = app.buyer().await;
    let id = order(&app, &buyer, shop.offer_id, 1).await;
    pay(&app, &buyer, id).await;
    let jobs = || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM apalis.jobs WHERE idempotency_key = $1")
            .bind(id.to_string())
            .fetch_one(&app.pool)
    };
    // As when its finished job was pruned while the order waited (a backorder).
    let lose_job = || {
        sqlx::query("DELETE FROM apalis.jobs WHERE idempotency_key = $1")
            .bind(id.to_string())
            .execute(&app.pool)
    };
    lose_job().await.unwrap();
    assert_eq!(jobs().await.unwrap(), 0);
    // No worker: the call waits, makes sure of the job after its first second, and
    // answers 202 at the end of its wait.
    let r = app
        .post(&format!("/orders/{id}/fulfill?wait=2"), &buyer, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(jobs().await.unwrap(), 1);
    // wait=0 makes sure at once.
    lose_job().await.unwrap();
    let r = app
        .post(&format!("/orders/{id}/fulfill?wait=0"), &buyer, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(jobs().await.unwrap(), 1);
    let worker = app.start_worker();
    let r = app
        .post(
            &format!("/orders/{id}/fulfill?wait=10"),
            &buyer,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn parallel_orders_get_different_keys_and_quantity_three_gets_three() {
    let app = spawn_app().await;
    let _worker = app.start_worker();
    let shop = fixtures::shop(&app, 5).await;
    let storefront = app.storefront().await;
    let mut ids = Vec::new();
    for q in [1, 1, 3] {
        let r = app
            .post(
                "/orders",
                &storefront,
                json!({ "offerId": shop.offer_id, "quantity": q, "buyerId": Uuid::new_v4() }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        ids.push(r.body["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    let results = futures::future::join_all(ids.iter().map(|id| {
        let (app, sf) = (&app, &storefront);
        async move {
            pay(app, sf, *id).await;
            app.post(&format!("/orders/{id}/fulfill?wait=10"), sf, json!(null))
                .await
        }
    }))
    .await;
    let mut all = Vec::new();
    for (r, q) in results.iter().zip([1, 1, 3]) {
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let keys = keys_of(&r.body);
        assert_eq!(keys.len(), q);
        all.extend(keys);
    }
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 5);
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (0, 0, 5));
}

#[tokio::test]
async fn out_of_stock_is_400_until_keys_arrive() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 1).await;
    let (buyer, _) = app.buyer().await;
    let r = app
        .post(
            "/orders",
            &buyer,
            json!({ "offerId": shop.offer_id, "quantity": 2 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "out_of_stock");
    let id = order(&app, &buyer, shop.offer_id, 1).await;
    pay(&app, &buyer, id).await;
    // The only key is promised to the paid order now.
    let r = app
        .post("/orders", &buyer, json!({ "offerId": shop.offer_id }))
        .await;
    assert_eq!(r.code(), "out_of_stock");
    fixtures::add_keys(&app, shop.pool_id, 2).await;
    order(&app, &buyer, shop.offer_id, 2).await;

    for (body, code) in [
        (
            json!({ "offerId": shop.offer_id, "quantity": 0 }),
            "validation_failed",
        ),
        (
            json!({ "offerId": shop.offer_id, "quantity": 101 }),
            "validation_failed",
        ),
        (
            json!({ "offerId": shop.offer_id, "status": "PAID" }),
            "validation_failed",
        ),
        (json!({ "offerId": "nope" }), "validation_failed"),
        (json!({ "offerId": Uuid::now_v7() }), "offer_unavailable"),
    ] {
        let r = app.post("/orders", &buyer, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.code(), code, "{body}");
    }
    sqlx::query("UPDATE offers SET status = 'inactive' WHERE id = $1")
        .bind(shop.offer_id)
        .execute(&app.pool)
        .await
        .unwrap();
    let r = app
        .post("/orders", &buyer, json!({ "offerId": shop.offer_id }))
        .await;
    assert_eq!(r.code(), "offer_unavailable");
    let (seller, _) = app.seller().await;
    let r = app
        .post("/orders", &seller, json!({ "offerId": shop.offer_id }))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn idempotency_key_gives_the_same_order_and_refuses_a_different_body() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 5).await;
    let (buyer, _) = app.buyer().await;
    let send = |q: i32, key: &'static str| {
        let req = app
            .client
            .post(format!("{}/orders", app.base))
            .bearer_auth(&buyer)
            .header("Idempotency-Key", key)
            .json(&json!({ "offerId": shop.offer_id, "quantity": q }));
        async move { TestApp::reply(req.send().await.unwrap()).await }
    };
    let replies = futures::future::join_all((0..20).map(|_| send(1, "k-1"))).await;
    let ids: HashSet<String> = replies
        .iter()
        .map(|r| {
            assert!(r.status.is_success(), "{:?}", r.body);
            r.body["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    let r = send(2, "k-1").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "idempotency_mismatch");
    let other = send(1, "k-2").await;
    assert_ne!(
        other.body["id"].as_str().unwrap(),
        ids.iter().next().unwrap()
    );
}

#[tokio::test]
async fn two_hundred_orders_on_150_keys_then_50_more_keys_fulfil_all_without_a_key_twice() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 150).await;
    let storefront = app.storefront().await;
    let workers: Vec<_> = (0..3).map(|_| app.start_worker()).collect();
    // All 200 are placed while 150 keys are sellable (payments come after), 32 storefront
    // requests in flight at a time: many at once, within a test's pool.
    use futures::StreamExt;
    let ids: Vec<Uuid> = futures::stream::iter((0..200).map(|_| {
        let (app, sf) = (&app, &storefront);
        async move {
            let r = app
                .post(
                    "/orders",
                    sf,
                    json!({ "offerId": shop.offer_id, "buyerId": Uuid::new_v4() }),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
            r.body["id"].as_str().unwrap().parse::<Uuid>().unwrap()
        }
    }))
    .buffer_unordered(32)
    .collect()
    .await;
    futures::stream::iter(ids.iter().map(|id| pay(&app, &storefront, *id)))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let count = |status: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders WHERE status = $1")
                .bind(status)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count("FULFILLED").await < 150 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} fulfilled",
            count("FULFILLED").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count("FULFILLED").await, 150);
    assert_eq!(count("PAID").await, 50);

    fixtures::add_keys(&app, shop.pool_id, 50).await;
    for id in &ids {
        app.wait_for_status(*id, "FULFILLED", Duration::from_secs(30))
            .await;
    }
    let (delivered, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT key_id) FROM order_deliveries")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((delivered, distinct), (200, 200));
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (0, 0, 200));
    for w in workers {
        w.stop().await.unwrap();
    }
}

#[tokio::test]
async fn cancel_of_a_backordered_order_frees_its_reserved_keys() {
    let app = spawn_app().await;
    let _worker = app.start_worker();
    let shop = fixtures::shop(&app, 3).await;
    let (buyer, _) = app.buyer().await;
    let id = order(&app, &buyer, shop.offer_id, 3).await;
    // Two of the three keys go to someone else first; then only 1 is left for 3 wanted.
    fixtures::invalidate_keys(&app, shop.pool_id, 2).await;
    pay(&app, &buyer, id).await;
    let r = app
        .post(&format!("/orders/{id}/fulfill?wait=1"), &buyer, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(r.body["status"], "PAID");
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (0, 1, 0));

    let r = app
        .post(&format!("/orders/{id}/cancel"), &buyer, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "CANCELED");
    assert!(r.body["canceledAt"].is_string());
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (1, 0, 0));
    let r = app
        .post(&format!("/orders/{id}/pay"), &buyer, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = app
        .post(&format!("/orders/{id}/fulfill"), &buyer, json!(null))
        .await;
    assert_eq!(r.code(), "conflict");
}

#[tokio::test]
async fn a_fulfilled_order_cannot_be_canceled() {
    let app = spawn_app().await;
    let _worker = app.start_worker();
    let shop = fixtures::shop(&app, 1).await;
    let (buyer, _) = app.buyer().await;
    let id = order(&app, &buyer, shop.offer_id, 1).await;
    pay(&app, &buyer, id).await;
    app.wait_for_status(id, "FULFILLED", Duration::from_secs(10))
        .await;
    let r = app
        .post(&format!("/orders/{id}/cancel"), &buyer, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "conflict");
}

#[tokio::test]
async fn simulated_payment_can_be_switched_off() {
    let app = spawn_app_with(AppOptions {
        simulated_payments: false,
        ..AppOptions::default()
    })
    .await;
    let shop = fixtures::shop(&app, 1).await;
    let (buyer, _) = app.buyer().await;
    let id = order(&app, &buyer, shop.offer_id, 1).await;
    let r = app
        .post(&format!("/orders/{id}/pay"), &buyer, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "not_found");
}

#[tokio::test]
async fn orders_list_is_paginated_and_scoped() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 10).await;
    let (buyer, buyer_id) = app.buyer().await;
    let mut made = Vec::new();
    for _ in 0..5 {
        made.push(order(&app, &buyer, shop.offer_id, 1).await.to_string());
    }
    let (other, _) = app.buyer().await;
    order(&app, &other, shop.offer_id, 1).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/orders?limit=2&cursor={c}"),
            None => "/orders?limit=2".to_string(),
        };
        let r = app.get(&path, &buyer).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        for o in r.body["items"].as_array().unwrap() {
            assert!(o.get("keys").is_none());
            seen.push(o["id"].as_str().unwrap().to_owned());
        }
        match r.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    made.reverse();
    assert_eq!(seen, made);
    let storefront = app.storefront().await;
    let r = app.get("/orders", &storefront).await;
    assert_eq!(r.code(), "validation_failed");
    // A storefront sees the orders it placed for a customer, never the ones the customer
    // (or another storefront) placed; the buyer sees only its own.
    for _ in 0..2 {
        let r = app
            .post(
                "/orders",
                &storefront,
                json!({ "offerId": shop.offer_id, "buyerId": buyer_id }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        assert_eq!(r.body["buyerId"], buyer_id.to_string());
        assert!(r.body["storefrontId"].is_string());
    }
    let r = app
        .get(
            &format!("/orders?buyerId={buyer_id}&status=PENDING"),
            &storefront,
        )
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2);
    let rival = app.storefront().await;
    let r = app
        .get(&format!("/orders?buyerId={buyer_id}"), &rival)
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 0);
    let r = app.get("/orders?limit=200", &buyer).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 5);
    let r = app.get("/orders?status=LOST", &buyer).await;
    assert_eq!(r.code(), "validation_failed");
    let r = app.get("/orders?cursor=garbage", &buyer).await;
    assert_eq!(r.code(), "validation_failed");
    let r = app.call(Method::GET, "/orders", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// Concurrent orders and simulated pays are written in groups, one statement and one
/// commit for many requests (`orders::intake`). Each request still gets its own answer:
/// a refused order or pay never fails its neighbours, a pay twice is one pay, and every
/// paid order has its one job and its audit row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_orders_and_pays_share_commits_but_never_each_others_failures() {
    let app = spawn_app().await;
    let open = fixtures::shop(&app, 100).await;
    let closed = fixtures::shop(&app, 10).await;
    let scarce = fixtures::shop(&app, 5).await;
    sqlx::query("UPDATE offers SET status = 'inactive' WHERE id = $1")
        .bind(closed.offer_id)
        .execute(&app.pool)
        .await
        .unwrap();
    let storefront = app.storefront().await;
    let (stranger, _) = app.buyer().await;

    // 40 good orders, 10 on an inactive offer and 10 asking for more than is in stock,
    // interleaved and sent at once.
    let asks: Vec<(Uuid, i32, Option<&str>)> = (0..60)
        .map(|i| match i % 6 {
            4 => (closed.offer_id, 1, Some("offer_unavailable")),
            5 => (scarce.offer_id, 6, Some("out_of_stock")),
            q => (open.offer_id, q + 1, None),
        })
        .collect();
    let answers = futures::future::join_all(asks.iter().map(|(offer, quantity, _)| {
        app.post(
            "/orders",
            &storefront,
            json!({"offerId": offer, "quantity": quantity, "buyerId": Uuid::new_v4()}),
        )
    }))
    .await;
    let mut placed = Vec::new();
    for ((_, quantity, refusal), r) in asks.iter().zip(&answers) {
        match refusal {
            None => {
                assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
                assert_eq!(r.body["status"], "PENDING");
                assert_eq!(r.body["quantity"], *quantity);
                assert_eq!(r.body["amountCents"], 999 * i64::from(*quantity));
                placed.push(r.body["id"].as_str().unwrap().parse::<Uuid>().unwrap());
            }
            Some(code) => {
                assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
                assert_eq!(r.code(), *code);
            }
        }
    }
    let (orders, commits): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT xmin::text) FROM orders")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(orders, 40, "only the good orders were written");
    assert!(commits < 40, "40 concurrent orders took {commits} commits");

    // Read at once, each order by its storefront and some by a stranger: grouped
    // lookups still answer each reader for itself.
    let reads = futures::future::join_all(placed.iter().enumerate().flat_map(|(i, id)| {
        let app = &app;
        let mut readers = vec![(storefront.as_str(), StatusCode::OK)];
        if i % 4 == 0 {
            readers.push((stranger.as_str(), StatusCode::NOT_FOUND));
        }
        readers.into_iter().map(move |(token, expect)| async move {
            (*id, expect, app.get(&format!("/orders/{id}"), token).await)
        })
    }))
    .await;
    assert_eq!(reads.len(), 50);
    for (id, expect, r) in reads {
        assert_eq!(r.status, expect, "read of {id}: {:?}", r.body);
        if expect == StatusCode::OK {
            assert_eq!(r.body["id"], id.to_string());
        }
    }

    // One order is canceled first; then every order is paid at once, the first one
    // three times, and a stranger tries to pay one it cannot see.
    let canceled = placed[1];
    let r = app
        .post(
            &format!("/orders/{canceled}/cancel"),
            &storefront,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let mut pays: Vec<(Uuid, &str, StatusCode)> = placed
        .iter()
        .map(|&id| {
            let expect = if id == canceled {
                StatusCode::CONFLICT
            } else {
                StatusCode::OK
            };
            (id, storefront.as_str(), expect)
        })
        .collect();
    pays.insert(10, (placed[0], storefront.as_str(), StatusCode::OK));
    pays.insert(20, (placed[0], storefront.as_str(), StatusCode::OK));
    pays.insert(30, (placed[5], stranger.as_str(), StatusCode::NOT_FOUND));
    let answers = futures::future::join_all(pays.iter().map(|(id, token, _)| {
        let app = &app;
        async move {
            app.post(&format!("/orders/{id}/pay"), token, json!(null))
                .await
        }
    }))
    .await;
    for ((id, _, expect), r) in pays.iter().zip(&answers) {
        assert_eq!(r.status, *expect, "pay of {id}: {:?}", r.body);
        if *expect == StatusCode::OK {
            assert_eq!(r.body["status"], "PAID", "{:?}", r.body);
            assert_eq!(r.body["id"], id.to_string());
            assert!(r.body["paidAt"].is_string(), "{:?}", r.body);
        }
    }
    let (paid, commits): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT xmin::text) FROM orders WHERE status = 'PAID'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(paid, 39);
    assert!(commits < 39, "39 concurrent pays took {commits} commits");
    let (jobs, distinct_jobs): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT idempotency_key) FROM apalis.jobs
         WHERE job_type = 'autokey::fulfill_order'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((jobs, distinct_jobs), (39, 39), "one job per paid order");
    // Each names its order's seller and the order among its objects, as audit_log_derive
    // would (the group's statement gives them, and the trigger's fast path keeps them).
    let (audited, with_token, derived): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(actor_token_id),
                count(*) FILTER (WHERE object_ids = ARRAY[a.order_id]
                    AND seller_id = (SELECT f.seller_id FROM orders o
                                     JOIN offers f ON f.id = o.offer_id WHERE o.id = a.order_id))
         FROM audit_log a WHERE action = 'order.paid_simulated'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (audited, with_token, derived),
        (39, 39, 39),
        "one audit row per pay that moved, naming its seller and order"
    );
}
