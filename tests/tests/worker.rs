//! The worker's guarantees: idempotent jobs, durable retries, crash recovery, the
//! sweeper, pruning, the dead state and graceful shutdown.

use std::time::{Duration, Instant};

use autokey_shared::jobs::{self, FulfillOrder};
use autokey_tests::{TestApp, fixtures, spawn_app, test_worker_config};
use autokey_worker::{fulfillment, maintenance};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

async fn paid_order(app: &TestApp, offer_id: Uuid, quantity: i32) -> Uuid {
    let (buyer, _) = app.buyer().await;
    let r = app
        .post(
            "/orders",
            &buyer,
            json!({ "offerId": offer_id, "quantity": quantity }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id: Uuid = r.body["id"].as_str().unwrap().parse().unwrap();
    let r = app
        .post(&format!("/orders/{id}/pay"), &buyer, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    id
}

async fn scalar(app: &TestApp, sql: &str, id: Uuid) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Waits (10 s at most) for the fulfillment job of `order_id` to die.
async fn wait_until_dead(app: &TestApp, order_id: Uuid) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while scalar(
        app,
        "SELECT count(*) FROM apalis.jobs WHERE status = 'Killed' AND idempotency_key = $1::text",
        order_id,
    )
    .await
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the job of {order_id} never died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn deliveries(app: &TestApp, order_id: Uuid) -> i64 {
    scalar(
        app,
        "SELECT count(*) FROM order_deliveries WHERE order_id = $1",
        order_id,
    )
    .await
}

/// Drops the shop's queued replenishment, which would serve any PAID order of the pool
/// at its own time, so that only the order's own job can serve it.
async fn keep_replenishment_out(app: &TestApp) {
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = 'autokey::replenish_pool'")
        .execute(&app.pool)
        .await
        .unwrap();
}

/// The first `n` attempts to move an order to FULFILLED hit a serialization failure (a
/// real database error; the sequence is not rolled back with the transaction).
async fn fail_fulfillments(app: &TestApp, n: i64) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SEQUENCE injected_failures;
         CREATE FUNCTION fail_fulfillment() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           -- Nested: an AND would not short-circuit, and every update would count.
           IF NEW.status = 'FULFILLED' THEN
             IF nextval('injected_failures') <= {n} THEN
               RAISE EXCEPTION 'injected' USING ERRCODE = '40001';
             END IF;
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER fail_fulfillment BEFORE UPDATE ON orders
             FOR EACH ROW EXECUTE FUNCTION fail_fulfillment();"
    )))
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_job_run_twice_changes_nothing() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 4).await;
    let id = paid_order(&app, shop.offer_id, 2).await;
    let lock = Duration::from_secs(5);
    let first = fulfillment::fulfill_order(&app.pool, id, lock)
        .await
        .unwrap();
    assert_eq!(first, fulfillment::Outcome::Fulfilled { keys: 2 });
    let second = fulfillment::fulfill_order(&app.pool, id, lock)
        .await
        .unwrap();
    assert_eq!(second, fulfillment::Outcome::NothingToDo);
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (2, 0, 2));

    // A duplicate job through a real worker: still two deliveries.
    let mut conn = app.pool.acquire().await.unwrap();
    sqlx::query("DELETE FROM apalis.jobs")
        .execute(&mut *conn)
        .await
        .unwrap();
    assert!(
        jobs::queue::enqueue(&mut conn, &FulfillOrder::new(id))
            .await
            .unwrap()
    );
    assert!(
        !jobs::queue::enqueue(&mut conn, &FulfillOrder::new(id))
            .await
            .unwrap(),
        "one job per order"
    );
    let worker = app.start_worker();
    let deadline = Instant::now() + Duration::from_secs(10);
    while scalar(
        &app,
        "SELECT count(*) FROM apalis.jobs WHERE status = 'Done' AND idempotency_key = $1::text",
        id,
    )
    .await
        == 0
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await.unwrap();
    assert_eq!(deliveries(&app, id).await, 2);
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (2, 0, 2));
}

#[tokio::test]
async fn the_database_refuses_a_second_delivery_of_a_key() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 1).await;
    let a = paid_order(&app, shop.offer_id, 1).await;
    fulfillment::fulfill_order(&app.pool, a, Duration::from_secs(5))
        .await
        .unwrap();
    fixtures::add_keys(&app, shop.pool_id, 1).await;
    let b = paid_order(&app, shop.offer_id, 1).await;
    let key: Uuid = sqlx::query_scalar("SELECT key_id FROM order_deliveries WHERE order_id = $1")
        .bind(a)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let err = sqlx::query("INSERT INTO order_deliveries (order_id, key_id) VALUES ($1, $2)")
        .bind(b)
        .bind(key)
        .execute(&app.pool)
        .await
        .unwrap_err();
    assert_eq!(
        autokey_shared::error::violated_constraint(&err),
        Some("order_deliveries_key_unique")
    );
}

#[tokio::test]
async fn a_transient_failure_is_retried_after_a_delay_and_succeeds() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 1).await;
    fail_fulfillments(&app, 2).await;
    let id = paid_order(&app, shop.offer_id, 1).await;
    // Only the order's own job may run into the injected failures.
    keep_replenishment_out(&app).await;
    let started = Instant::now();
    let worker = app.start_worker();
    app.wait_for_status(id, "FULFILLED", Duration::from_secs(20))
        .await;
    let took = started.elapsed();
    app.wait_for_job(id, "Done", Duration::from_secs(10)).await;
    worker.stop().await.unwrap();
    let attempts = scalar(
        &app,
        "SELECT attempts::bigint FROM apalis.jobs WHERE idempotency_key = $1::text",
        id,
    )
    .await;
    assert_eq!(attempts, 3);
    // Two retries with base 200 ms and exponential growth: at least 200 + 400 ms.
    assert!(
        took >= Duration::from_millis(600),
        "retried too fast: {took:?}"
    );
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (0, 0, 1));
}

#[tokio::test]
async fn a_permanently_failing_job_dies_visibly_and_an_operator_can_retry_it() {
    let app = spawn_app().await;
    let mut conn = app.pool.acquire().await.unwrap();
    // A job for an order that does not exist cannot ever succeed.
    let ghost = Uuid::now_v7();
    jobs::queue::enqueue(&mut conn, &FulfillOrder::new(ghost))
        .await
        .unwrap();
    let worker = app.start_worker();
    wait_until_dead(&app, ghost).await;
    worker.stop().await.unwrap();
    assert_eq!(
        scalar(
            &app,
            "SELECT attempts::bigint FROM apalis.jobs WHERE idempotency_key = $1::text",
            ghost
        )
        .await,
        1
    );
    assert_eq!(jobs::queue::retry_dead(&mut conn).await.unwrap(), 1);
    assert_eq!(scalar(&app, "SELECT count(*) FROM apalis.jobs WHERE status = 'Pending' AND idempotency_key = $1::text", ghost).await, 1);
}

#[tokio::test]
async fn a_worker_killed_mid_job_leaves_nothing_stuck() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 1).await;
    let id = paid_order(&app, shop.offer_id, 1).await;
    // Hold the order's row lock so the first worker's job hangs inside its transaction.
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let doomed = app.start_worker_with(autokey_worker::WorkerConfig {
        lock_timeout: Duration::from_secs(60),
        ..test_worker_config()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while scalar(
        &app,
        "SELECT count(*) FROM apalis.jobs WHERE status = 'Running' AND idempotency_key = $1::text",
        id,
    )
    .await
        == 0
    {
        assert!(Instant::now() < deadline, "job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill();
    blocker.rollback().await.unwrap();
    let started = Instant::now();
    let survivor = app.start_worker();
    app.wait_for_status(id, "FULFILLED", Duration::from_secs(20))
        .await;
    let took = started.elapsed();
    survivor.stop().await.unwrap();
    assert!(took < Duration::from_secs(10), "recovery took {took:?}");
    assert_eq!(deliveries(&app, id).await, 1);
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (0, 0, 1));
}

#[tokio::test]
async fn the_sweeper_gives_a_paid_order_without_a_job_a_new_one() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 1).await;
    let id = paid_order(&app, shop.offer_id, 1).await;
    sqlx::query("DELETE FROM apalis.jobs")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE orders SET paid_at = now() - interval '1 minute' WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    let sweep = maintenance::run_once(&app.pool, &test_worker_config())
        .await
        .unwrap();
    assert_eq!(sweep.fulfill_jobs_added, 1);
    let worker = app.start_worker();
    app.wait_for_status(id, "FULFILLED", Duration::from_secs(10))
        .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn finished_jobs_are_pruned_after_the_retention_period() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 1).await;
    let id = paid_order(&app, shop.offer_id, 1).await;
    let worker = app.start_worker();
    app.wait_for_status(id, "FULFILLED", Duration::from_secs(10))
        .await;
    // The queue acknowledges after the order's commit.
    app.wait_for_job(id, "Done", Duration::from_secs(10)).await;
    worker.stop().await.unwrap();
    let config = test_worker_config();
    maintenance::run_once(&app.pool, &config).await.unwrap();
    let left = scalar(
        &app,
        "SELECT count(*) FROM apalis.jobs WHERE idempotency_key = $1::text",
        id,
    )
    .await;
    assert_eq!(left, 1, "a fresh finished job is kept");
    sqlx::query("UPDATE apalis.jobs SET done_at = now() - interval '2 hours'")
        .execute(&app.pool)
        .await
        .unwrap();
    let sweep = maintenance::run_once(&app.pool, &config).await.unwrap();
    assert!(sweep.pruned >= 1);
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM apalis.jobs WHERE idempotency_key = $1::text",
            id
        )
        .await,
        0
    );
}

#[tokio::test]
async fn graceful_shutdown_returns_ok_and_a_restarted_worker_continues() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 2).await;
    let worker = app.start_worker();
    let a = paid_order(&app, shop.offer_id, 1).await;
    app.wait_for_status(a, "FULFILLED", Duration::from_secs(10))
        .await;
    tokio::time::timeout(Duration::from_secs(10), worker.stop())
        .await
        .expect("stops promptly")
        .unwrap();
    let b = paid_order(&app, shop.offer_id, 1).await;
    let worker = app.start_worker();
    app.wait_for_status(b, "FULFILLED", Duration::from_secs(10))
        .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn backorders_are_served_oldest_paid_first() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 1).await;
    let (buyer, _) = app.buyer().await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = app
            .post("/orders", &buyer, json!({ "offerId": shop.offer_id }))
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        ids.push(r.body["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    let (older, younger) = (ids[0], ids[1]);
    fixtures::invalidate_keys(&app, shop.pool_id, 1).await;
    app.post(&format!("/orders/{older}/pay"), &buyer, json!(null))
        .await;
    assert!(matches!(
        fulfillment::fulfill_order(&app.pool, older, Duration::from_secs(5))
            .await
            .unwrap(),
        fulfillment::Outcome::Backordered {
            reserved: 0,
            quantity: 1
        }
    ));
    app.post(&format!("/orders/{younger}/pay"), &buyer, json!(null))
        .await;
    // One key arrives while both wait; the younger order's own job is still queued.
    fixtures::add_keys(&app, shop.pool_id, 1).await;
    let worker = app.start_worker();
    app.wait_for_status(older, "FULFILLED", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let younger_status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(younger)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(younger_status, "PAID");
    fixtures::add_keys(&app, shop.pool_id, 1).await;
    app.wait_for_status(younger, "FULFILLED", Duration::from_secs(10))
        .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_job_serves_waiting_orders_in_its_own_transaction() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 120).await;
    let other = fixtures::shop(&app, 10).await;
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(paid_order(&app, shop.offer_id, 1).await);
    }
    for _ in 0..5 {
        ids.push(paid_order(&app, other.offer_id, 2).await);
    }
    // An order held by another transaction is skipped by the batch, not waited for.
    let busy = ids[50];
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(busy)
        .execute(&mut *holder)
        .await
        .unwrap();

    // An order whose job a queue worker has fetched is that worker's: left alone. One
    // whose job waits for a retry is served now.
    let (fetched, retrying) = (ids[60], ids[70]);
    let set_job = |order: Uuid, status: &'static str| {
        sqlx::query("UPDATE apalis.jobs SET status = $2 WHERE idempotency_key = $1")
            .bind(order.to_string())
            .bind(status)
            .execute(&app.pool)
    };
    set_job(fetched, "Running").await.unwrap();
    set_job(retrying, "Failed").await.unwrap();
    let job_status = |order: Uuid| {
        sqlx::query_scalar::<_, String>("SELECT status FROM apalis.jobs WHERE idempotency_key = $1")
            .bind(order.to_string())
            .fetch_one(&app.pool)
    };

    let done =
        autokey_worker::batch::fulfill_batch(&app.pool, ids[0], 200, Duration::from_secs(5), None)
            .await
            .unwrap();
    assert_eq!(done.lead(), fulfillment::Outcome::Fulfilled { keys: 1 });
    // Orders of the same pool only: 99 others, less the busy one and the fetched one.
    assert_eq!(done.also_fulfilled, 97, "{done:?}");
    let batched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE status = 'Done' AND last_result ->> 'Ok' = 'served in a batch'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(batched, 97);
    assert_eq!(job_status(busy).await.unwrap(), "Pending");
    assert_eq!(job_status(fetched).await.unwrap(), "Running");
    assert_eq!(job_status(retrying).await.unwrap(), "Done");
    for (order, status) in [(busy, "PAID"), (fetched, "PAID"), (retrying, "FULFILLED")] {
        let now: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
            .bind(order)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(now, status, "order {order}");
    }
    holder.rollback().await.unwrap();
    // The queue worker that fetched it gives it back (as a failed run would).
    set_job(fetched, "Pending").await.unwrap();

    let worker = app.start_worker();
    for id in &ids {
        app.wait_for_status(*id, "FULFILLED", Duration::from_secs(10))
            .await;
    }
    worker.stop().await.unwrap();
    let (delivered, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT key_id) FROM order_deliveries")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((delivered, distinct), (110, 110));
    assert_eq!(
        fixtures::pool_counts(&app, shop.pool_id).await,
        (20, 0, 100)
    );
    assert_eq!(fixtures::pool_counts(&app, other.pool_id).await, (0, 0, 10));
}

#[tokio::test]
async fn a_batch_that_runs_short_serves_the_oldest_and_backorders_the_rest_in_paid_order() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 12).await;
    let (buyer, _) = app.buyer().await;
    // Placed while all 12 keys are sellable, then all paid: 14 units owed on 12 keys.
    let quantities = [3, 3, 4, 3, 1];
    let mut ids = Vec::new();
    for q in quantities {
        let r = app
            .post(
                "/orders",
                &buyer,
                json!({ "offerId": shop.offer_id, "quantity": q }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        ids.push(r.body["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    for id in &ids {
        let r = app
            .post(&format!("/orders/{id}/pay"), &buyer, json!(null))
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }

    // The youngest order's job leads; the batch still serves oldest paid first.
    let done =
        autokey_worker::batch::fulfill_batch(&app.pool, ids[4], 100, Duration::from_secs(5), None)
            .await
            .unwrap();
    assert_eq!(
        done.lead(),
        fulfillment::Outcome::Backordered {
            reserved: 0,
            quantity: 1
        }
    );
    assert_eq!((done.also_fulfilled, done.also_backordered), (3, 1));
    let mut statuses = Vec::new();
    for id in &ids {
        let s: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        statuses.push(s);
    }
    assert_eq!(
        statuses,
        ["FULFILLED", "FULFILLED", "FULFILLED", "PAID", "PAID"]
    );
    // The first short order keeps the 2 keys left; the younger one queues behind it.
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM keys WHERE order_id = $1 AND status = 'RESERVED'",
            ids[3]
        )
        .await,
        2
    );
    for (id, q) in ids.iter().zip(quantities).take(3) {
        assert_eq!(deliveries(&app, *id).await, i64::from(q));
    }
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (0, 2, 10));

    let worker = app.start_worker();
    fixtures::add_keys(&app, shop.pool_id, 2).await;
    for id in &ids {
        app.wait_for_status(*id, "FULFILLED", Duration::from_secs(10))
            .await;
    }
    worker.stop().await.unwrap();
    let (delivered, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT key_id) FROM order_deliveries")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((delivered, distinct), (14, 14));
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (0, 0, 14));
}

async fn job_row(app: &TestApp, order_id: Uuid) -> (String, i32, Option<String>) {
    sqlx::query_as(
        "SELECT status, attempts, coalesce(last_result ->> 'Ok', last_result ->> 'Err')
         FROM apalis.jobs WHERE job_type = $1 AND idempotency_key = $2",
    )
    .bind(<FulfillOrder as jobs::Job>::QUEUE)
    .bind(order_id.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_job_paid_while_a_worker_runs_is_served_by_the_fast_lane_in_one_transaction() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 2).await;
    let worker = app.start_worker();
    // Let the lane start listening.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = paid_order(&app, shop.offer_id, 2).await;
    app.wait_for_status(id, "FULFILLED", Duration::from_secs(10))
        .await;
    // The job is Done in the fulfillment's own commit: no later acknowledgement.
    let (status, attempts, result) = job_row(&app, id).await;
    assert_eq!(
        (status.as_str(), attempts, result.as_deref()),
        ("Done", 1, Some("served by the fast lane"))
    );
    worker.stop().await.unwrap();
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (0, 0, 2));
}

#[tokio::test]
async fn a_new_job_waits_out_the_lane_grace_before_the_queue_fetches_it() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 1).await;
    let id = paid_order(&app, shop.offer_id, 1).await;
    let grace_left: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM run_at - now())::float8 FROM apalis.jobs WHERE idempotency_key = $1",
    )
    .bind(id.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        grace_left > 0.0 && grace_left <= jobs::LANE_GRACE.as_secs_f64(),
        "{grace_left}"
    );
    // No lane anywhere: the queue's workers still deliver it.
    let worker = app.start_worker_with(autokey_worker::WorkerConfig {
        fast_lane: false,
        ..test_worker_config()
    });
    app.wait_for_status(id, "FULFILLED", Duration::from_secs(10))
        .await;
    app.wait_for_job(id, "Done", Duration::from_secs(10)).await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_fast_lane_run_counts_as_an_attempt_and_the_queue_retries_it_later() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 1).await;
    fail_fulfillments(&app, 1).await;
    keep_replenishment_out(&app).await;
    let worker = app.start_worker();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paid_at = Instant::now();
    let id = paid_order(&app, shop.offer_id, 1).await;
    app.wait_for_status(id, "FULFILLED", Duration::from_secs(10))
        .await;
    let took = paid_at.elapsed();
    app.wait_for_job(id, "Done", Duration::from_secs(10)).await;
    worker.stop().await.unwrap();
    let (_, attempts, _) = job_row(&app, id).await;
    // The lane's failed run, then the queue's successful one.
    assert_eq!(attempts, 2);
    // The retry waited for the backoff (base 200 ms), not the moment the lane failed.
    assert!(
        took >= Duration::from_millis(200),
        "retried too fast: {took:?}"
    );
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (0, 0, 1));
}

#[tokio::test]
async fn a_worker_killed_inside_a_fast_lane_run_leaves_the_job_to_the_others() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 1).await;
    keep_replenishment_out(&app).await;
    let doomed = app.start_worker_with(autokey_worker::WorkerConfig {
        lock_timeout: Duration::from_secs(60),
        ..test_worker_config()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // An injected trigger makes the lane's delivery wait on a lock the test holds,
    // mid-statement, with the job, the order and the key already locked.
    sqlx::raw_sql(
        "CREATE FUNCTION wait_for_the_test() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NEW; END $$;
         CREATE TRIGGER wait_for_the_test BEFORE UPDATE ON orders FOR EACH ROW
             WHEN (NEW.status = 'FULFILLED') EXECUTE FUNCTION wait_for_the_test();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(4242)")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let id = paid_order(&app, shop.offer_id, 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND query LIKE 'WITH dk AS%order_deliveries%'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the lane never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill();
    blocker.rollback().await.unwrap();
    let survivor = app.start_worker();
    app.wait_for_status(id, "FULFILLED", Duration::from_secs(10))
        .await;
    app.wait_for_job(id, "Done", Duration::from_secs(10)).await;
    survivor.stop().await.unwrap();
    assert_eq!(deliveries(&app, id).await, 1);
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (0, 0, 1));
}

/// `fulfill?wait` waiters learn of fulfilled orders from a NOTIFY the worker sends after
/// each delivery has committed (not inside it: notifying commits queue on one lock), with
/// many orders per payload. Whichever path served it (fast lane, another order's batch),
/// every order the worker fulfilled is announced, and only once it reads as FULFILLED.
#[tokio::test]
async fn the_worker_announces_fulfilled_orders_after_commit() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 30).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.pool)
        .await
        .unwrap();
    listener
        .listen(autokey_shared::model::ORDER_FULFILLED_CHANNEL)
        .await
        .unwrap();
    let mut paid = Vec::new();
    for _ in 0..20 {
        paid.push(paid_order(&app, shop.offer_id, 1).await);
    }
    let _worker = app.start_worker();
    let mut heard = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !paid.iter().all(|id| heard.contains(id)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let note = tokio::time::timeout(left, listener.recv())
            .await
            .unwrap_or_else(|_| panic!("announced {} of 20 orders", heard.len()))
            .unwrap();
        for id in autokey_shared::announce::ids(note.payload()) {
            let id: Uuid = id.parse().expect("an announcement names order ids");
            // Announced after the commit: the order is FULFILLED for every reader.
            let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
                .bind(id)
                .fetch_one(&app.pool)
                .await
                .unwrap();
            assert_eq!(status, "FULFILLED");
            heard.insert(id);
        }
    }
}

/// Jobs announced while the fast lane's slots are busy are claimed together and served in
/// one transaction (here with no extra waiting orders per batch, so only grouping can put
/// two orders in one commit). A job whose order does not exist, announced in the same
/// breath, does not hold the others back: it dies on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fast_lane_serves_jobs_announced_together_in_one_transaction() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 30).await;
    keep_replenishment_out(&app).await;
    let (buyer, _) = app.buyer().await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        let r = app
            .post("/orders", &buyer, json!({ "offerId": shop.offer_id }))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        ids.push(r.body["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    let worker = app.start_worker_with(autokey_worker::WorkerConfig {
        batch_extra_orders: 0,
        ..test_worker_config()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // All paid in one transaction, the ghost's job with them; then one announcement.
    let ghost = Uuid::now_v7();
    let mut tx = app.pool.begin().await.unwrap();
    let payments: Vec<(Uuid, Option<&str>)> = ids.iter().map(|id| (*id, None)).collect();
    autokey_shared::transitions::pay_many(
        &mut tx,
        &payments,
        autokey_shared::announce::Announce::AfterCommit,
    )
    .await
    .unwrap();
    jobs::queue::enqueue_many_with(
        &mut tx,
        &[FulfillOrder::new(ghost)],
        autokey_shared::announce::Announce::AfterCommit,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let announcer = jobs::lane::LaneAnnouncer::start(app.pool.clone());
    announcer.fulfillments(ids.iter().copied().chain([ghost]));

    for id in &ids {
        app.wait_for_status(*id, "FULFILLED", Duration::from_secs(10))
            .await;
    }
    wait_until_dead(&app, ghost).await;
    worker.stop().await.unwrap();
    for id in &ids {
        let (status, attempts, result) = job_row(&app, *id).await;
        assert_eq!(
            (status.as_str(), attempts, result.as_deref()),
            ("Done", 1, Some("served by the fast lane")),
            "order {id}"
        );
    }
    let commits: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM orders WHERE id = ANY($1) AND status = 'FULFILLED'",
    )
    .bind(&ids)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        commits < 30,
        "30 orders announced together took {commits} commits"
    );
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (0, 0, 30));
}

/// A delivery writes all the pools of its group in one statement, so one statement can
/// change several pools' counters. Their rows are locked in id order: a statement that
/// finds the first pool's row taken waits there without holding the second, so two such
/// statements can never hold one pool each and wait for the other (a deadlock).
#[tokio::test]
async fn a_statement_changing_several_pools_locks_their_counter_rows_in_id_order() {
    let app = spawn_app().await;
    let a = fixtures::shop(&app, 2).await;
    let b = fixtures::shop(&app, 2).await;
    let (low, high) = if a.pool_id < b.pool_id {
        (a.pool_id, b.pool_id)
    } else {
        (b.pool_id, a.pool_id)
    };
    let keys_of = |pool: Uuid| {
        let db = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>("SELECT id FROM keys WHERE pool_id = $1 ORDER BY id")
                .bind(pool)
                .fetch_all(&db)
                .await
                .unwrap()
        }
    };
    let (low_keys, high_keys) = (keys_of(low).await, keys_of(high).await);
    // The lower pool's row moves after the higher one's in the table, so a join that
    // simply scanned the table would take the higher pool's row first.
    sqlx::query("UPDATE key_pools SET name = name || ' (moved)' WHERE id = $1")
        .bind(low)
        .execute(&app.pool)
        .await
        .unwrap();

    // The lower pool's row is taken by a transaction that stays open.
    let mut first = app.pool.begin().await.unwrap();
    sqlx::query("UPDATE keys SET status = 'INVALID' WHERE id = $1")
        .bind(low_keys[0])
        .execute(&mut *first)
        .await
        .unwrap();
    // One statement changing both pools (the high pool's key listed first) waits for it.
    let db = app.pool.clone();
    let both = vec![high_keys[0], low_keys[1]];
    let second = tokio::spawn(async move {
        sqlx::query("UPDATE keys SET status = 'INVALID' WHERE id = ANY($1)")
            .bind(&both)
            .execute(&db)
            .await
            .map(|r| r.rows_affected())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND query LIKE 'UPDATE keys SET status = ''INVALID'' WHERE id = ANY%'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the two-pool statement never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... without holding the higher pool's row meanwhile.
    let mut probe = app.pool.begin().await.unwrap();
    let free = sqlx::query("SELECT 1 FROM key_pools WHERE id = $1 FOR NO KEY UPDATE NOWAIT")
        .bind(high)
        .execute(&mut *probe)
        .await;
    assert!(free.is_ok(), "the higher pool's row was held: {free:?}");
    probe.rollback().await.unwrap();

    first.commit().await.unwrap();
    assert_eq!(second.await.unwrap().unwrap(), 2);
    let invalid = |pool: Uuid| {
        let db = app.pool.clone();
        async move {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT available_keys, invalid_keys FROM key_pools WHERE id = $1",
            )
            .bind(pool)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    assert_eq!(invalid(low).await, (0, 2));
    assert_eq!(invalid(high).await, (1, 1));
}

/// A fast lane group whose orders span several pools is served by one delivery: every
/// pool is planned first and all are written by one statement. Each pool gets exactly its
/// own keys and counts, and a pool running short backorders its youngest orders while the
/// other pools of the same statement are served.
#[tokio::test]
async fn a_fast_lane_group_spanning_several_pools_serves_each_pool_exactly() {
    let app = spawn_app().await;
    let shops = [
        fixtures::shop(&app, 8).await,
        fixtures::shop(&app, 8).await,
        fixtures::shop(&app, 3).await,
    ];
    keep_replenishment_out(&app).await;
    let (buyer, _) = app.buyer().await;
    // Interleaved, so that any few jobs in a row name several pools.
    let mut ids: Vec<(usize, Uuid)> = Vec::new();
    for round in 0..8 {
        for (s, shop) in shops.iter().enumerate() {
            if s == 2 && round >= 5 {
                continue;
            }
            let r = app
                .post("/orders", &buyer, json!({ "offerId": shop.offer_id }))
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
            ids.push((s, r.body["id"].as_str().unwrap().parse().unwrap()));
        }
    }
    let worker = app.start_worker_with(autokey_worker::WorkerConfig {
        batch_extra_orders: 0,
        ..test_worker_config()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tx = app.pool.begin().await.unwrap();
    let payments: Vec<(Uuid, Option<&str>)> = ids.iter().map(|(_, id)| (*id, None)).collect();
    autokey_shared::transitions::pay_many(
        &mut tx,
        &payments,
        autokey_shared::announce::Announce::AfterCommit,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let announcer = jobs::lane::LaneAnnouncer::start(app.pool.clone());
    announcer.fulfillments(ids.iter().map(|(_, id)| *id));
    for (_, id) in &ids {
        app.wait_for_job(*id, "Done", Duration::from_secs(10)).await;
    }
    worker.stop().await.unwrap();

    let status_of = |id: Uuid| {
        let db = app.pool.clone();
        async move {
            sqlx::query_as::<_, (String, String)>(
                "SELECT status, xmin::text FROM orders WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let mut fulfilled = [0usize; 3];
    let mut waiting = [0usize; 3];
    let mut pools_per_commit: std::collections::HashMap<String, std::collections::HashSet<usize>> =
        Default::default();
    for (s, id) in &ids {
        match status_of(*id).await {
            (status, xmin) if status == "FULFILLED" => {
                fulfilled[*s] += 1;
                pools_per_commit.entry(xmin).or_default().insert(*s);
            }
            (status, _) if status == "PAID" => waiting[*s] += 1,
            other => panic!("order {id} of pool {s}: {other:?}"),
        }
    }
    assert_eq!((fulfilled, waiting), ([8, 8, 3], [0, 0, 2]));
    assert!(
        pools_per_commit.values().any(|pools| pools.len() >= 2),
        "no commit fulfilled orders of two pools: {pools_per_commit:?}"
    );
    assert_eq!(
        fixtures::pool_counts(&app, shops[0].pool_id).await,
        (0, 0, 8)
    );
    assert_eq!(
        fixtures::pool_counts(&app, shops[1].pool_id).await,
        (0, 0, 8)
    );
    assert_eq!(
        fixtures::pool_counts(&app, shops[2].pool_id).await,
        (0, 0, 3)
    );
    // Units are still owed to the two waiting orders, to no one else.
    let owed: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT pool_id, sum(units)::bigint FROM pool_owed GROUP BY pool_id HAVING sum(units) <> 0",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(owed, vec![(shops[2].pool_id, 2)]);
    // Each delivered key went to one order of its own pool.
    let strays: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM order_deliveries d JOIN keys k ON k.id = d.key_id
         JOIN orders o ON o.id = d.order_id WHERE k.pool_id <> o.pool_id",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(strays, 0);
}

/// The lane claims its job and marks it Done in one statement, before the order's work:
/// only the commit after that work may finish the job. A run that fails after the claim
/// (here: the order's row lock is held elsewhere past the lock timeout) leaves the job
/// Pending for a retry, and the next run serves it.
#[tokio::test]
async fn a_lane_run_failing_after_its_claim_leaves_the_job_pending() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 1).await;
    let id = paid_order(&app, shop.offer_id, 1).await;
    let job_id = FulfillOrder::job_id_of(id);
    let job = || {
        let pool = app.pool.clone();
        let job_id = job_id.clone();
        async move {
            sqlx::query_as::<_, (String, bool)>(
                "SELECT status, done_at IS NOT NULL FROM apalis.jobs WHERE id = $1",
            )
            .bind(job_id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(job().await, ("Pending".to_owned(), false));

    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let lane = || {
        let pool = app.pool.clone();
        let job_id = job_id.clone();
        async move {
            autokey_worker::batch::fulfill_job(&pool, &job_id, 0, Duration::from_millis(200), None)
                .await
        }
    };
    let failed = lane().await;
    assert!(failed.is_err(), "the order's lock was held: {failed:?}");
    assert_eq!(
        job().await,
        ("Pending".to_owned(), false),
        "a failed run must not finish its job"
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM orders WHERE id = $1 AND status = 'PAID'",
            id
        )
        .await,
        1
    );
    holder.rollback().await.unwrap();

    let served = lane().await.unwrap();
    assert_eq!(served.map(|(order, _)| order), Some(id));
    assert_eq!(job().await, ("Done".to_owned(), true));
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM orders WHERE id = $1 AND status = 'FULFILLED'",
            id
        )
        .await,
        1
    );
}
