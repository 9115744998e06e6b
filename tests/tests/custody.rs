//! Key custody and administration: rotation with re-encryption (in-process and as an
//! admin-requested worker job), the append-only audit trail and its readers, and the
//! admin routes.

use std::{collections::HashMap, collections::HashSet, sync::Arc, time::Duration};

use autokey_shared::{
    model::Role,
    rotation,
    store::tokens,
    vault::{KeyMaterial, Vault},
};
use autokey_tests::{AppOptions, TestApp, spawn_app, spawn_app_sealing_with};
use rand::RngCore;
use serde_json::{Value, json};
use uuid::Uuid;

fn material() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// A vault sealing with `current` (id, material), able to open `retired`.
fn vault(current: (&str, [u8; 32]), retired: &[(&str, [u8; 32])], fp: [u8; 32]) -> Arc<Vault> {
    Arc::new(Vault::new(
        current.0.into(),
        KeyMaterial::new(current.1),
        retired
            .iter()
            .map(|(id, m)| (id.to_string(), KeyMaterial::new(*m)))
            .collect::<HashMap<_, _>>(),
        KeyMaterial::new(fp),
    ))
}

struct Shop {
    seller: String,
    pool: Uuid,
    offer: Value,
    keys: Vec<String>,
}

/// A seller with one pool of `n` uploaded keys (text/plain) behind a published offer.
async fn shop(app: &TestApp, n: usize) -> Shop {
    let (seller, _) = app.token(Role::Seller, None).await;
    let pool = app
        .post("/key-pools", &seller, json!({"name": "custody"}))
        .await;
    let pool: Uuid = serde_json::from_value(pool.body["id"].clone()).unwrap();
    let keys: Vec<String> = (0..n)
        .map(|i| format!("CUSTODY-{i:05}-{}", Uuid::new_v4()))
        .collect();
    let up = app
        .post_raw(
            &format!("/key-pools/{pool}/keys/upload"),
            &seller,
            "text/plain",
            keys.join("\n"),
        )
        .await;
    assert_eq!(up.body["added"], n, "{:?}", up.body);
    let draft = app
        .post(
            "/offers/draft",
            &seller,
            json!({"title": "rotating", "priceCents": 100, "currency": "EUR",
                   "deliveryType": "AUTO_KEY", "keyPoolId": pool}),
        )
        .await;
    let offer = draft.body["id"].clone();
    let published = app
        .post("/offers/publish", &seller, json!({"offerId": offer}))
        .await;
    assert!(published.status.is_success(), "{:?}", published.body);
    Shop {
        seller,
        pool,
        offer,
        keys,
    }
}

/// Creates and pays `n` orders of quantity 1 as storefront `store`; returns their ids.
async fn order_and_pay(app: &TestApp, store: &str, offer: &Value, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let created = app
            .post(
                "/orders",
                store,
                json!({"offerId": offer, "buyerId": Uuid::now_v7()}),
            )
            .await;
        assert_eq!(created.status.as_u16(), 201, "{:?}", created.body);
        let id: Uuid = created.body["id"].as_str().unwrap().parse().unwrap();
        let paid = app
            .post(&format!("/orders/{id}/pay"), store, json!({}))
            .await;
        assert!(paid.status.is_success(), "{:?}", paid.body);
        ids.push(id);
    }
    ids
}

/// Every stored key, opened with `vault`: (key id, plaintext, status, enc key id).
async fn open_all(app: &TestApp, vault: &Vault) -> Vec<(Uuid, String, String, String)> {
    let rows: Vec<(Uuid, Uuid, Vec<u8>, Vec<u8>, String, String)> = sqlx::query_as(
        "SELECT id, pool_id, ciphertext, nonce, enc_key_id, status FROM keys ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, pool, c, n, enc, status)| {
            let key =
                autokey_shared::store::keys::SealedKey::from_parts(id, pool, c, n, enc.clone())
                    .unwrap();
            let plain = vault
                .open(id, pool, &key.sealed)
                .unwrap_or_else(|e| panic!("key {id} under {enc} does not open: {e}"));
            (id, plain, status, enc)
        })
        .collect()
}

async fn pool_counts_hold(app: &TestApp, pool: Uuid, uploaded: i64) {
    let (total, a, r, d, i): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT total_keys, available_keys, reserved_keys, delivered_keys, invalid_keys
         FROM key_pools WHERE id = $1",
    )
    .bind(pool)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((total, a + r + d + i), (uploaded, uploaded));
    let real: i64 = sqlx::query_scalar("SELECT count(*) FROM keys WHERE pool_id = $1")
        .bind(pool)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(real, uploaded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotating_twice_under_concurrent_orders_keeps_every_key_readable() {
    let (m1, m2, m3, fp) = (material(), material(), material(), material());
    let v1 = vault(("k1", m1), &[], fp);
    let v2 = vault(("k2", m2), &[("k1", m1)], fp);
    let v3 = vault(("k3", m3), &[("k1", m1), ("k2", m2)], fp);
    let app = spawn_app_sealing_with(AppOptions::default(), v1.clone()).await;
    let worker = app.start_worker();
    let shop = shop(&app, 1500).await;
    // An endpoint's signing secret is sealed too, and must follow the rotation.
    let endpoint = app
        .post(
            "/webhook-endpoints",
            &shop.seller,
            json!({"url": "http://127.0.0.1:9/rotation", "eventTypes": ["pool.low_stock"]}),
        )
        .await;
    assert_eq!(endpoint.status.as_u16(), 201, "{:?}", endpoint.body);
    let fingerprints_before: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT fingerprint FROM keys ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();

    // Orders flow through both rotations.
    let orders = {
        let (base, offer) = (app.another_api().await, shop.offer.clone());
        let (store, _) = app.token(Role::Storefront, None).await;
        tokio::spawn(async move {
            let mut all = Vec::new();
            for _ in 0..8 {
                all.extend(order_and_pay(&base, &store, &offer, 25).await);
            }
            all
        })
    };
    let batches = std::sync::atomic::AtomicU64::new(0);
    let (moved_to_k2, _) = rotation::reencrypt_all(&app.pool, &v2, 100, None, |_| {
        batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .await
    .unwrap();
    assert!(moved_to_k2 >= 1501, "moved {moved_to_k2}");
    assert!(
        batches.into_inner() >= 15,
        "small batches, each its own commit"
    );
    let mut conn = app.pool.acquire().await.unwrap();
    assert_eq!(
        rotation::progress(&mut conn, "k2")
            .await
            .unwrap()
            .remaining(),
        0
    );
    let (moved_to_k3, _) = rotation::reencrypt_all(&app.pool, &v3, 100, None, |_| {})
        .await
        .unwrap();
    assert!(moved_to_k3 >= 1501, "moved {moved_to_k3}");
    let orders = orders.await.unwrap();
    assert_eq!(orders.len(), 200);
    for id in &orders {
        app.wait_for_status(*id, "FULFILLED", Duration::from_secs(30))
            .await;
    }

    // Only k3 is needed now: every key opens with a vault that knows nothing else, to
    // exactly what was uploaded; statuses and fingerprints are untouched by rotation.
    let only_k3 = vault(("k3", m3), &[], fp);
    let opened = open_all(&app, &only_k3).await;
    assert!(opened.iter().all(|(_, _, _, enc)| enc == "k3"));
    let plain: HashSet<&str> = opened.iter().map(|(_, p, _, _)| p.as_str()).collect();
    let uploaded: HashSet<&str> = shop.keys.iter().map(String::as_str).collect();
    assert_eq!(plain, uploaded);
    let delivered = opened
        .iter()
        .filter(|(_, _, s, _)| s == "DELIVERED")
        .count();
    assert_eq!(delivered, 200);
    let fingerprints_after: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT fingerprint FROM keys ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(fingerprints_before, fingerprints_after);
    let distinct: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT key_id) FROM order_deliveries WHERE order_id = ANY($1)",
    )
    .bind(&orders)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(distinct, 200, "200 orders, 200 distinct keys");
    pool_counts_hold(&app, shop.pool, 1500).await;
    let secret_key: String = sqlx::query_scalar("SELECT secret_key_id FROM webhook_endpoints")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(secret_key, "k3");

    // An api configured with k3 alone serves the delivered keys.
    let after = app.another_api_sealing_with(only_k3).await;
    let (store, _) = app.token(Role::Storefront, None).await;
    let fresh = order_and_pay(&after, &store, &shop.offer, 1).await[0];
    let read = after
        .post(
            &format!("/orders/{fresh}/fulfill?wait=20"),
            &store,
            json!({}),
        )
        .await;
    assert_eq!(read.body["status"], "FULFILLED", "{:?}", read.body);
    let key = read.body["keys"][0]["key"].as_str().unwrap();
    assert!(uploaded.contains(key));
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_rotation_runs_as_a_worker_job_and_reports_progress() {
    let (m1, m2, fp) = (material(), material(), material());
    let v1 = vault(("k1", m1), &[], fp);
    let v2 = vault(("k2", m2), &[("k1", m1)], fp);
    let old = spawn_app_sealing_with(AppOptions::default(), v1).await;
    let shop = shop(&old, 300).await;
    // The api restarts with k2 current and k1 retired.
    let app = old.another_api_sealing_with(v2.clone()).await;
    let (admin, _) = app.token(Role::Admin, None).await;
    let before = app.get("/admin/keys/reencrypt", &admin).await;
    assert_eq!(before.status.as_u16(), 200, "{:?}", before.body);
    assert_eq!(before.body["currentKeyId"], "k2");
    assert_eq!(before.body["remainingByKeyId"]["k1"], 300);
    assert_eq!(before.body["running"], false);
    let started = app.post("/admin/keys/reencrypt", &admin, json!({})).await;
    assert_eq!(started.status.as_u16(), 202, "{:?}", started.body);
    assert_eq!(started.body["running"], true);
    let again = app.post("/admin/keys/reencrypt", &admin, json!({})).await;
    assert_eq!(again.status.as_u16(), 202);
    let jobs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE job_type = 'autokey::reencrypt_keys'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(jobs, 1, "a second request while one is queued adds nothing");
    let worker = app.start_worker_with({
        let mut config = autokey_tests::test_worker_config();
        config.vault = Some(v2.clone());
        config
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = app.get("/admin/keys/reencrypt", &admin).await;
        if now.body["remainingByKeyId"] == json!({}) && now.body["running"] == false {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:?}", now.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let opened = open_all(&app, &vault(("k2", m2), &[], fp)).await;
    assert_eq!(opened.len(), 300);
    let trail = app
        .get("/admin/audit?action=keys.reencrypt_requested", &admin)
        .await;
    assert_eq!(
        trail.body["items"].as_array().unwrap().len(),
        1,
        "{:?}",
        trail.body
    );
    pool_counts_hold(&app, shop.pool, 300).await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn the_audit_trail_is_append_only() {
    let app = spawn_app().await;
    let shop = shop(&app, 3).await;
    let _ = shop;
    for statement in [
        "UPDATE audit_log SET action = 'forged'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = sqlx::query(statement)
            .execute(&app.pool)
            .await
            .expect_err(statement);
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(rows >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_read_the_whole_trail_filtered_and_sellers_their_own() {
    let app = spawn_app().await;
    let worker = app.start_worker();
    let a = shop(&app, 5).await;
    let b = shop(&app, 5).await;
    let (admin, _) = app.token(Role::Admin, None).await;
    // A read of delivered keys, an invalidation, a token revocation.
    let (store, _) = app.token(Role::Storefront, None).await;
    let order = order_and_pay(&app, &store, &a.offer, 1).await[0];
    let read = app
        .post(
            &format!("/orders/{order}/fulfill?wait=20"),
            &store,
            json!({}),
        )
        .await;
    assert_eq!(read.body["status"], "FULFILLED");
    let plaintext = read.body["keys"][0]["key"].as_str().unwrap().to_owned();
    let available = app
        .get(
            &format!("/key-pools/{}/keys?status=AVAILABLE", a.pool),
            &a.seller,
        )
        .await;
    let key: Uuid = available.body["items"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let gone = app
        .call(
            reqwest::Method::DELETE,
            &format!("/key-pools/{}/keys/{key}", a.pool),
            Some(&a.seller),
            None,
        )
        .await;
    assert_eq!(gone.status.as_u16(), 200);
    let mut conn = app.pool.acquire().await.unwrap();
    let victim = tokens::create_token(&mut conn, Role::Buyer, None)
        .await
        .unwrap();
    let revoked = app
        .post(
            &format!("/admin/tokens/{}/revoke", victim.id),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(revoked.status.as_u16(), 200, "{:?}", revoked.body);
    let twice = app
        .post(
            &format!("/admin/tokens/{}/revoke", victim.id),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(twice.status.as_u16(), 404);

    let actions = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["action"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = app.get("/admin/audit?limit=500", &admin).await;
    assert_eq!(all.status.as_u16(), 200, "{:?}", all.body);
    let text = all.body.to_string();
    assert!(!text.contains(&plaintext), "an audit row carries a key");
    let seen = actions(&all.body);
    for want in [
        "keys.uploaded",
        "order.keys_read",
        "key.invalidated",
        "token.revoked",
    ] {
        assert!(
            seen.iter().any(|a| a == want),
            "{want} missing from {seen:?}"
        );
    }
    // Newest first.
    let ids: Vec<i64> = all.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");

    let uploads = app.get("/admin/audit?action=keys.uploaded", &admin).await;
    assert_eq!(actions(&uploads.body), ["keys.uploaded", "keys.uploaded"]);
    let about_key = app
        .get(&format!("/admin/audit?objectId={key}"), &admin)
        .await;
    assert_eq!(actions(&about_key.body), ["key.invalidated"]);
    let about_order = app
        .get(&format!("/admin/audit?objectId={order}"), &admin)
        .await;
    assert!(actions(&about_order.body).contains(&"order.keys_read".to_owned()));
    let by_token = app
        .get(&format!("/admin/audit?objectId={}", victim.id), &admin)
        .await;
    assert_eq!(actions(&by_token.body), ["token.revoked"]);
    let future = app
        .get("/admin/audit?from=2999-01-01T00:00:00Z", &admin)
        .await;
    assert_eq!(future.body["items"], json!([]));
    let past = app
        .get("/admin/audit?to=2000-01-01T00:00:00Z", &admin)
        .await;
    assert_eq!(past.body["items"], json!([]));

    // Cursor pagination walks the same rows, one at a time.
    let mut walked = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = app
            .get(&format!("/admin/audit?limit=1&cursor={cursor}"), &admin)
            .await;
        walked.extend(
            page.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_i64().unwrap()),
        );
        match page.body["nextCursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(walked, ids);
    let bad = app.get("/admin/audit?cursor=nonsense", &admin).await;
    assert_eq!(bad.status.as_u16(), 400);

    // Sellers: their own rows only, never the trail of another seller.
    let own_a = app.get("/audit", &a.seller).await;
    assert_eq!(own_a.status.as_u16(), 200, "{:?}", own_a.body);
    let own_text = own_a.body.to_string();
    assert!(own_text.contains(&a.pool.to_string()));
    assert!(own_text.contains(&order.to_string()));
    assert!(!own_text.contains(&b.pool.to_string()));
    let own_b = app.get("/audit", &b.seller).await;
    assert!(!own_b.body.to_string().contains(&a.pool.to_string()));
    assert!(own_b.body.to_string().contains(&b.pool.to_string()));
    assert_eq!(
        app.get("/admin/audit", &a.seller).await.status.as_u16(),
        403
    );
    assert_eq!(app.get("/audit", &store).await.status.as_u16(), 403);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_see_every_seller_and_manage_keys_tokens_and_dead_jobs() {
    let app = spawn_app().await;
    let worker = app.start_worker();
    let a = shop(&app, 4).await;
    let b = shop(&app, 2).await;
    let (admin, _) = app.token(Role::Admin, None).await;
    let sellers = app.get("/admin/sellers", &admin).await;
    assert_eq!(sellers.status.as_u16(), 200, "{:?}", sellers.body);
    let items = sellers.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let totals: HashSet<i64> = items
        .iter()
        .map(|s| s["totalKeys"].as_i64().unwrap())
        .collect();
    assert_eq!(totals, HashSet::from([4, 2]));
    assert!(items.iter().all(|s| s["pools"] == 1));
    let page = app.get("/admin/sellers?limit=1", &admin).await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 1);
    assert!(page.body["nextCursor"].is_string());

    let pool = app
        .get(&format!("/admin/key-pools/{}", b.pool), &admin)
        .await;
    assert_eq!(pool.body["totalKeys"], 2, "{:?}", pool.body);
    let keys = app
        .get(&format!("/admin/key-pools/{}/keys", b.pool), &admin)
        .await;
    let key = keys.body["items"][0]["id"].as_str().unwrap().to_owned();
    let invalid = app
        .call(
            reqwest::Method::DELETE,
            &format!("/admin/key-pools/{}/keys/{key}", b.pool),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(invalid.body["status"], "INVALID", "{:?}", invalid.body);
    let wrong_pool = app
        .call(
            reqwest::Method::DELETE,
            &format!("/admin/key-pools/{}/keys/{key}", a.pool),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(wrong_pool.status.as_u16(), 404);
    assert_eq!(
        app.get(&format!("/admin/key-pools/{}", Uuid::now_v7()), &admin)
            .await
            .status
            .as_u16(),
        404
    );

    let (store, _) = app.token(Role::Storefront, None).await;
    let order = order_and_pay(&app, &store, &a.offer, 1).await[0];
    let read = app
        .post(
            &format!("/orders/{order}/fulfill?wait=20"),
            &store,
            json!({}),
        )
        .await;
    let plaintext = read.body["keys"][0]["key"].as_str().unwrap().to_owned();
    let seen = app.get(&format!("/admin/orders/{order}"), &admin).await;
    assert_eq!(seen.body["status"], "FULFILLED", "{:?}", seen.body);
    assert!(
        !seen.body.to_string().contains(&plaintext),
        "admins never see keys"
    );

    // A revoked storefront token is refused on its next request.
    let mut conn = app.pool.acquire().await.unwrap();
    let victim = tokens::create_token(&mut conn, Role::Storefront, None)
        .await
        .unwrap();
    assert_eq!(app.get("/me", &victim.token).await.status.as_u16(), 200);
    let before = app.tokens.invalidations();
    app.post(
        &format!("/admin/tokens/{}/revoke", victim.id),
        &admin,
        json!({}),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.tokens.invalidations() == before {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(app.get("/me", &victim.token).await.status.as_u16(), 401);

    // A dead job is listed and revived.
    let killed = sqlx::query(
        "UPDATE apalis.jobs SET status = 'Killed', last_result = '\"gave up\"'
         WHERE job_type = 'autokey::fulfill_order' AND idempotency_key = $1",
    )
    .bind(order.to_string())
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(killed.rows_affected(), 1);
    let dead = app.get("/admin/jobs/dead", &admin).await;
    assert_eq!(dead.status.as_u16(), 200, "{:?}", dead.body);
    let listed = dead.body["items"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{:?}", dead.body);
    assert_eq!(listed[0]["payload"]["order_id"], order.to_string());
    let retried = app.post("/admin/jobs/dead/retry", &admin, json!({})).await;
    assert_eq!(retried.body["retried"], 1, "{:?}", retried.body);
    assert_eq!(
        app.get("/admin/jobs/dead", &admin).await.body["items"],
        json!([])
    );

    for path in [
        "/admin/sellers",
        "/admin/jobs/dead",
        "/admin/keys/reencrypt",
    ] {
        assert_eq!(
            app.get(path, &a.seller).await.status.as_u16(),
            403,
            "{path}"
        );
    }
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn keys_delivered_by_hand_follow_the_rotation_too() {
    let (m1, m2, fp) = (material(), material(), material());
    let v1 = vault(("k1", m1), &[], fp);
    let app = spawn_app_sealing_with(AppOptions::default(), v1).await;
    let (seller, _) = app.token(Role::Seller, None).await;
    let draft = app
        .post(
            "/offers/draft",
            &seller,
            json!({"title": "Boxed", "priceCents": 999, "currency": "EUR",
                   "deliveryType": "MANUAL", "stockCount": 3}),
        )
        .await;
    let offer = draft.body["id"].clone();
    app.post("/offers/publish", &seller, json!({"offerId": offer}))
        .await;
    let (store, _) = app.token(Role::Storefront, None).await;
    let order = order_and_pay(&app, &store, &offer, 1).await[0];
    let delivered = app
        .post(
            &format!("/seller/orders/{order}/deliver"),
            &seller,
            json!({"keys": ["BY-HAND-ROTATED-1"]}),
        )
        .await;
    assert_eq!(
        delivered.body["status"], "FULFILLED",
        "{:?}",
        delivered.body
    );
    let v2 = vault(("k2", m2), &[("k1", m1)], fp);
    let (moved, _) = rotation::reencrypt_all(&app.pool, &v2, 10, None, |_| {})
        .await
        .unwrap();
    assert_eq!(moved, 1);
    let mut conn = app.pool.acquire().await.unwrap();
    assert_eq!(
        rotation::progress(&mut conn, "k2")
            .await
            .unwrap()
            .remaining(),
        0
    );
    let only_k2 = app
        .another_api_sealing_with(vault(("k2", m2), &[], fp))
        .await;
    let read = only_k2.get(&format!("/orders/{order}"), &store).await;
    assert_eq!(
        read.body["keys"][0]["key"], "BY-HAND-ROTATED-1",
        "{:?}",
        read.body
    );
}
