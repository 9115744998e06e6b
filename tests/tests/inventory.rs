//! Seller inventory through the HTTP API: key pools, uploads (JSON and streamed text),
//! global deduplication, key metadata, invalidation, ownership, and encryption at rest.

use std::collections::HashSet;

use autokey_tests::{Reply, TestApp, fixtures, spawn_app};
use autokey_worker::fulfillment;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

async fn create_pool(app: &TestApp, token: &str, name: &str) -> Uuid {
    let r = app.post("/key-pools", token, json!({ "name": name })).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    r.body["id"].as_str().unwrap().parse().unwrap()
}

async fn upload_json(app: &TestApp, token: &str, pool: Uuid, keys: &[&str]) -> Reply {
    app.post(
        &format!("/key-pools/{pool}/keys/upload"),
        token,
        json!({ "keys": keys }),
    )
    .await
}

async fn upload_text(
    app: &TestApp,
    token: &str,
    pool: Uuid,
    body: impl Into<reqwest::Body>,
) -> Reply {
    app.post_raw(
        &format!("/key-pools/{pool}/keys/upload"),
        token,
        "text/plain; charset=utf-8",
        body,
    )
    .await
}

/// The five counts of a pool JSON, checking that they add up.
fn counts(pool: &Value) -> [i64; 5] {
    let c = [
        "totalKeys",
        "availableKeys",
        "reservedKeys",
        "deliveredKeys",
        "invalidKeys",
    ]
    .map(|f| pool[f].as_i64().unwrap_or_else(|| panic!("{f} in {pool}")));
    assert_eq!(c[0], c[1] + c[2] + c[3] + c[4], "counts add up: {pool}");
    c
}

fn issues(list: &Value) -> Vec<(u64, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["line"].as_u64().unwrap(),
                i["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn owned(v: &[(u64, &str)]) -> Vec<(u64, String)> {
    v.iter().map(|(l, r)| (*l, r.to_string())).collect()
}

#[tokio::test]
async fn pools_are_created_listed_and_read_with_counts() {
    let app = spawn_app().await;
    let (token, seller) = app.seller().await;
    let r = app
        .post(
            "/key-pools",
            &token,
            json!({ "name": "Steam keys", "lowStockThreshold": 10 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["sellerId"], json!(seller.to_string()));
    assert_eq!(r.body["name"], "Steam keys");
    assert_eq!(r.body["lowStockThreshold"], 10);
    assert_eq!(counts(&r.body), [0; 5]);
    assert!(chrono::DateTime::parse_from_rfc3339(r.body["createdAt"].as_str().unwrap()).is_ok());

    let empty = app.post("/key-pools", &token, json!({})).await;
    assert_eq!(empty.status, StatusCode::CREATED);
    assert_eq!(empty.body["name"], "");
    assert_eq!(empty.body["lowStockThreshold"], 0);

    let list = app.get("/key-pools", &token).await;
    assert_eq!(list.status, StatusCode::OK);
    let ids: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str(), empty.body["id"].as_str().unwrap()]);

    let one = app.get(&format!("/key-pools/{id}"), &token).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.body, r.body);

    let bad = app
        .post("/key-pools", &token, json!({ "lowStockThreshold": -1 }))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.code(), "validation_failed");

    let (buyer, _) = app.buyer().await;
    let r = app.get("/key-pools", &buyer).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "forbidden");
}

#[tokio::test]
async fn json_upload_reports_duplicates_and_invalid_lines_exactly() {
    let app = spawn_app().await;
    let (token, _) = app.seller().await;
    let pool = create_pool(&app, &token, "p").await;
    let long = "L".repeat(256);
    let max = "M".repeat(255);
    let keys = [
        "AAAAA-11111",     // 1 ok
        "  BBBBB-22222\t", // 2 ok (trimmed)
        "AAAAA-11111",     // 3 duplicate of 1
        "",                // 4 empty
        "   ",             // 5 empty after trim
        "abcd",            // 6 too short
        &long,             // 7 too long
        "CCC\u{7}CC-333",  // 8 control character
        "BBBBB-22222",     // 9 duplicate of 2 (after trimming)
        &max,              // 10 ok
        "ééééé",           // 11 ok: five characters, ten bytes
    ];
    let r = upload_json(&app, &token, pool, &keys).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["added"], 4);
    assert_eq!(
        issues(&r.body["duplicates"]),
        owned(&[(3, "duplicate_in_upload"), (9, "duplicate_in_upload")])
    );
    assert_eq!(
        issues(&r.body["invalid"]),
        owned(&[
            (4, "empty"),
            (5, "empty"),
            (6, "too_short"),
            (7, "too_long"),
            (8, "control_character"),
        ])
    );
    assert_eq!(r.body["duplicatesCount"], 2);
    assert_eq!(r.body["invalidCount"], 5);
    assert_eq!(r.body["truncated"], false);
    assert_eq!(counts(&r.body["pool"]), [4, 4, 0, 0, 0]);

    // Again: every valid line now exists; counts do not move.
    let again = upload_json(&app, &token, pool, &["AAAAA-11111", "NEWKEY-1", "NEWKEY-1"]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["added"], 1);
    assert_eq!(
        issues(&again.body["duplicates"]),
        owned(&[(1, "already_exists"), (3, "duplicate_in_upload")])
    );
    assert_eq!(counts(&again.body["pool"]), [5, 5, 0, 0, 0]);
    let read = app.get(&format!("/key-pools/{pool}"), &token).await;
    assert_eq!(counts(&read.body), [5, 5, 0, 0, 0]);

    let empty = upload_json(&app, &token, pool, &[]).await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.body["added"], 0);
}

#[tokio::test]
async fn text_upload_handles_bom_crlf_blanks_and_bad_utf8() {
    let app = spawn_app().await;
    let (token, _) = app.seller().await;
    let pool = create_pool(&app, &token, "p").await;
    let mut body = b"\xEF\xBB\xBFTEXT-KEY-1\r\n\r\n   \nTEXT-KEY-2\nBAD-\xFF-UTF8\n".to_vec();
    body.extend_from_slice(b"TEXT-KEY-1\r\nx\n  TEXT-KEY-3  ");
    let r = upload_text(&app, &token, pool, body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["added"], 3);
    assert_eq!(
        issues(&r.body["duplicates"]),
        owned(&[(6, "duplicate_in_upload")])
    );
    assert_eq!(
        issues(&r.body["invalid"]),
        owned(&[(5, "invalid_utf8"), (7, "too_short")])
    );
    assert_eq!(counts(&r.body["pool"]), [3, 3, 0, 0, 0]);
    // The BOM was not stored as part of the first key: it is a duplicate now.
    let again = upload_json(&app, &token, pool, &["TEXT-KEY-1"]).await;
    assert_eq!(
        issues(&again.body["duplicates"]),
        owned(&[(1, "already_exists")])
    );
}

/// Lines of a large text upload, and what the report must say about them.
struct Expected {
    body: Vec<u8>,
    added: u64,
    duplicates: Vec<u64>,
    invalid: Vec<u64>,
}

/// 100k physical lines: a BOM, LF and CRLF mixed, blank and white-space lines, keys
/// repeated from far back (earlier batches), and too-short lines.
fn big_upload(lines: u64) -> Expected {
    let mut e = Expected {
        body: b"\xEF\xBB\xBF".to_vec(),
        added: 0,
        duplicates: Vec::new(),
        invalid: Vec::new(),
    };
    let mut seen = HashSet::new();
    for n in 1..=lines {
        let text = if n % 97 == 0 {
            String::new()
        } else if n % 101 == 0 {
            " \t ".into()
        } else if n % 331 == 0 {
            e.invalid.push(n);
            "shrt".into()
        } else if n % 29 == 0 {
            // A key from ~9000 lines back, i.e. usually from an earlier batch.
            format!("BIG-KEY-{:07}", n.saturating_sub(9000).max(1))
        } else {
            format!("BIG-KEY-{n:07}")
        };
        if text.starts_with("BIG-KEY-") {
            if seen.insert(text.clone()) {
                e.added += 1;
            } else {
                e.duplicates.push(n);
            }
        }
        e.body.extend_from_slice(text.as_bytes());
        e.body
            .extend_from_slice(if n % 3 == 0 { b"\r\n" } else { b"\n" });
    }
    e
}

#[tokio::test]
async fn streamed_upload_of_100k_lines_counts_exactly() {
    let app = spawn_app().await;
    let (token, _) = app.seller().await;
    let pool = create_pool(&app, &token, "big").await;
    let e = big_upload(100_000);
    assert!(e.duplicates.len() > 1000 && e.invalid.len() > 100);
    let r = upload_text(&app, &token, pool, e.body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body["error"]);
    assert_eq!(r.body["added"].as_u64(), Some(e.added));
    assert_eq!(
        r.body["duplicatesCount"].as_u64(),
        Some(e.duplicates.len() as u64)
    );
    assert_eq!(
        r.body["invalidCount"].as_u64(),
        Some(e.invalid.len() as u64)
    );
    assert_eq!(r.body["truncated"], true);
    let dups = issues(&r.body["duplicates"]);
    assert!(
        dups.iter()
            .all(|(_, reason)| reason == "duplicate_in_upload")
    );
    let lines: Vec<u64> = dups.iter().map(|d| d.0).collect();
    assert!(
        lines == e.duplicates[..1000],
        "the first 1000 duplicate lines, in order"
    );
    let invalid: Vec<u64> = issues(&r.body["invalid"]).iter().map(|i| i.0).collect();
    assert_eq!(invalid, e.invalid);
    let total = e.added as i64;
    assert_eq!(counts(&r.body["pool"]), [total, total, 0, 0, 0]);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM keys WHERE pool_id = $1")
        .bind(pool)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, total);
}

#[tokio::test]
async fn json_upload_of_more_than_1000_keys_is_413() {
    let app = spawn_app().await;
    let (token, _) = app.seller().await;
    let pool = create_pool(&app, &token, "p").await;
    let keys: Vec<String> = (0..1001).map(|i| format!("MANY-KEY-{i:05}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let r = upload_json(&app, &token, pool, &refs).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.code(), "payload_too_large");
    let ok = upload_json(&app, &token, pool, &refs[..1000]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body["added"], 1000);

    let r = app
        .post_raw(
            &format!("/key-pools/{pool}/keys/upload"),
            &token,
            "text/csv",
            "A,B",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.code(), "unsupported_media_type");
}

#[tokio::test]
async fn bad_bodies_paths_and_queries_are_400() {
    let app = spawn_app().await;
    let (token, _) = app.seller().await;
    let pool = create_pool(&app, &token, "p").await;
    for (path, body) in [
        (
            "/key-pools".to_string(),
            json!({ "name": "x", "sellerId": Uuid::now_v7() }),
        ),
        (
            format!("/key-pools/{pool}/keys/upload"),
            json!({ "keys": ["VALID-KEY-1"], "status": "DELIVERED" }),
        ),
        (
            format!("/key-pools/{pool}/keys/upload"),
            json!({ "keys": [1, 2] }),
        ),
        (
            format!("/key-pools/{pool}/keys/upload"),
            json!(["VALID-KEY-1"]),
        ),
    ] {
        let r = app.post(&path, &token, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path} {body}");
        assert_eq!(r.code(), "validation_failed");
    }
    for path in [
        "/key-pools/not-a-uuid".to_string(),
        "/key-pools/123/keys".to_string(),
        format!("/key-pools/{pool}/keys?status=SOLD"),
        format!("/key-pools/{pool}/keys?limit=0"),
        format!("/key-pools/{pool}/keys?limit=501"),
        format!("/key-pools/{pool}/keys?limit=ten"),
        format!("/key-pools/{pool}/keys?cursor=%25%25garbage"),
        format!("/key-pools/{pool}/keys?cursor=bm90LWEtY3Vyc29y"),
    ] {
        let r = app.get(&path, &token).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(r.code(), "validation_failed", "{path}");
    }
    let r = upload_json(&app, &token, pool, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app
        .post("/key-pools/zzz/keys/upload", &token, json!({ "keys": [] }))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = app
        .call(
            Method::DELETE,
            &format!("/key-pools/{pool}/keys/nope"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_same_key_uploaded_by_two_sellers_is_stored_once() {
    let app = spawn_app().await;
    let (a, _) = app.seller().await;
    let (b, _) = app.seller().await;
    let pa = create_pool(&app, &a, "a").await;
    let pb = create_pool(&app, &b, "b").await;
    let first = upload_json(&app, &a, pa, &["SHARED-KEY-1", "ONLY-A-001"]).await;
    assert_eq!(first.body["added"], 2);
    let second = upload_text(&app, &b, pb, "ONLY-B-001\nSHARED-KEY-1\n").await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body["added"], 1);
    assert_eq!(
        issues(&second.body["duplicates"]),
        owned(&[(2, "already_exists")])
    );
    assert_eq!(counts(&second.body["pool"]), [1, 1, 0, 0, 0]);
    let a_pool = app.get(&format!("/key-pools/{pa}"), &a).await;
    assert_eq!(counts(&a_pool.body), [2, 2, 0, 0, 0]);
}

#[tokio::test]
async fn concurrent_uploads_sharing_half_their_keys_store_each_key_once() {
    let app = spawn_app().await;
    let (a, _) = app.seller().await;
    let (b, _) = app.seller().await;
    let pa = create_pool(&app, &a, "a").await;
    let pb = create_pool(&app, &b, "b").await;
    let pa2 = create_pool(&app, &a, "a2").await;
    // A: 0..10000, B: 5000..15000, C (same seller as A, other pool): 2500..7500.
    let text =
        |r: std::ops::Range<u32>| -> String { r.map(|i| format!("RACE-KEY-{i:06}\n")).collect() };
    let (ra, rb, rc) = tokio::join!(
        upload_text(&app, &a, pa, text(0..10_000)),
        upload_text(&app, &b, pb, text(5_000..15_000)),
        upload_text(&app, &a, pa2, text(2_500..7_500)),
    );
    let mut added = 0;
    for (r, lines) in [(&ra, 10_000), (&rb, 10_000), (&rc, 5_000)] {
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let n = r.body["added"].as_u64().unwrap();
        assert_eq!(n + r.body["duplicatesCount"].as_u64().unwrap(), lines);
        assert_eq!(r.body["invalidCount"], 0);
        assert!(
            issues(&r.body["duplicates"])
                .iter()
                .all(|(_, reason)| reason == "already_exists")
        );
        added += n;
    }
    assert_eq!(added, 15_000);
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT fingerprint) FROM keys")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (15_000, 15_000));
    let mut total = 0;
    for (token, pool) in [(&a, pa), (&b, pb), (&a, pa2)] {
        let p = app.get(&format!("/key-pools/{pool}"), token).await;
        total += counts(&p.body)[0];
    }
    assert_eq!(total, 15_000);
}

/// An active AUTO_KEY offer on the pool, through the API.
async fn offer_on(app: &TestApp, token: &str, pool: Uuid) -> Uuid {
    let r = app
        .post(
            "/offers/draft",
            token,
            json!({"title": "T", "priceCents": 100, "currency": "EUR",
                   "deliveryType": "AUTO_KEY", "keyPoolId": pool}),
        )
        .await;
    let offer: Uuid = r.body["id"].as_str().unwrap().parse().unwrap();
    let r = app
        .post("/offers/publish", token, json!({ "offerId": offer }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    offer
}

/// A PENDING order of `quantity` units of the offer, placed by a new buyer.
async fn place(app: &TestApp, offer: Uuid, quantity: i32) -> (String, Uuid) {
    let (buyer, _) = app.buyer().await;
    let r = app
        .post(
            "/orders",
            &buyer,
            json!({ "offerId": offer, "quantity": quantity }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    (buyer, r.body["id"].as_str().unwrap().parse().unwrap())
}

/// Pays the order and runs its fulfillment (the worker's own routine) once.
async fn pay_and_serve(app: &TestApp, (buyer, order): (String, Uuid)) -> fulfillment::Outcome {
    let r = app
        .post(&format!("/orders/{order}/pay"), &buyer, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    fulfillment::fulfill_order(&app.pool, order, std::time::Duration::from_secs(5))
        .await
        .unwrap()
}

fn key_ids(page: &Reply) -> Vec<Uuid> {
    page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn invalidate_available_key_but_not_delivered_or_reserved_ones() {
    let app = spawn_app().await;
    let (token, _) = app.seller().await;
    let pool = create_pool(&app, &token, "p").await;
    let offer = offer_on(&app, &token, pool).await;
    upload_json(&app, &token, pool, &["INV-KEY-02", "INV-KEY-03"]).await;
    // One key sold to an order of one; the other reserved for an order of two that waits.
    let one = place(&app, offer, 1).await;
    let two = place(&app, offer, 2).await;
    assert_eq!(
        pay_and_serve(&app, one).await,
        fulfillment::Outcome::Fulfilled { keys: 1 }
    );
    assert_eq!(
        pay_and_serve(&app, two).await,
        fulfillment::Outcome::Backordered {
            reserved: 1,
            quantity: 2
        }
    );
    upload_json(&app, &token, pool, &["INV-KEY-01"]).await;
    let page = app.get(&format!("/key-pools/{pool}/keys"), &token).await;
    let [sold, held, avail] = key_ids(&page)[..] else {
        panic!("{:?}", page.body)
    };
    let counts_now = app.get(&format!("/key-pools/{pool}"), &token).await;
    assert_eq!(counts(&counts_now.body), [3, 1, 1, 1, 0]);

    let delete = |key: Uuid| {
        let path = format!("/key-pools/{pool}/keys/{key}");
        let token = token.clone();
        let app = &app;
        async move { app.call(Method::DELETE, &path, Some(&token), None).await }
    };
    let r = delete(avail).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["id"], json!(avail.to_string()));
    assert_eq!(r.body["status"], "INVALID");
    assert!(r.body.get("orderId").is_none());
    // Already invalid: unchanged.
    let again = delete(avail).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, r.body);

    for key in [sold, held] {
        let r = delete(key).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
        assert_eq!(r.code(), "conflict");
    }
    let r = delete(Uuid::now_v7()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let p = app.get(&format!("/key-pools/{pool}"), &token).await;
    assert_eq!(counts(&p.body), [3, 0, 1, 1, 1]);
    let delivered = app
        .get(&format!("/key-pools/{pool}/keys?status=DELIVERED"), &token)
        .await;
    let items = delivered.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], json!(sold.to_string()));
    assert!(items[0]["orderId"].is_string());
    assert!(items[0]["deliveredAt"].is_string());
}

#[tokio::test]
async fn keys_list_pages_with_a_cursor_and_filters_by_status() {
    let app = spawn_app().await;
    let (token, _) = app.seller().await;
    let pool = create_pool(&app, &token, "p").await;
    // Two uploads: keys of one batch share created_at, so the id breaks ties.
    let first: Vec<String> = (0..70).map(|i| format!("PAGE-KEY-{i:03}")).collect();
    let second: Vec<String> = (70..120).map(|i| format!("PAGE-KEY-{i:03}")).collect();
    for keys in [&first, &second] {
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        upload_json(&app, &token, pool, &refs).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/key-pools/{pool}/keys?limit=25&cursor={c}"),
            None => format!("/key-pools/{pool}/keys?limit=25"),
        };
        let page = app.get(&path, &token).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        pages += 1;
        for item in page.body["items"].as_array().unwrap() {
            let keys: Vec<&str> = item
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, ["createdAt", "id", "status"], "metadata only");
        }
        seen.extend(key_ids(&page));
        match page.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    assert_eq!(seen.len(), 120);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 120);
    let all = app
        .get(&format!("/key-pools/{pool}/keys?limit=500"), &token)
        .await;
    assert_eq!(key_ids(&all), seen, "pages follow the one-page order");
    assert!(all.body["nextCursor"].is_null());
    let default = app.get(&format!("/key-pools/{pool}/keys"), &token).await;
    assert_eq!(key_ids(&default).len(), 50);

    let target = seen[3];
    app.call(
        Method::DELETE,
        &format!("/key-pools/{pool}/keys/{target}"),
        Some(&token),
        None,
    )
    .await;
    let invalid = app
        .get(&format!("/key-pools/{pool}/keys?status=INVALID"), &token)
        .await;
    assert_eq!(key_ids(&invalid), [target]);
    assert!(invalid.body["items"][0]["invalidatedAt"].is_string());
    let available = app
        .get(
            &format!("/key-pools/{pool}/keys?status=AVAILABLE&limit=500"),
            &token,
        )
        .await;
    assert_eq!(key_ids(&available).len(), 119);
}

#[tokio::test]
async fn another_sellers_pools_and_keys_answer_404_everywhere() {
    let app = spawn_app().await;
    let (owner, _) = app.seller().await;
    let (other, _) = app.seller().await;
    let pool = create_pool(&app, &owner, "mine").await;
    upload_json(&app, &owner, pool, &["OWNED-KEY-1"]).await;
    let page = app.get(&format!("/key-pools/{pool}/keys"), &owner).await;
    let key = key_ids(&page)[0];

    let checks = [
        app.get(&format!("/key-pools/{pool}"), &other).await,
        app.get(&format!("/key-pools/{pool}/keys"), &other).await,
        upload_json(&app, &other, pool, &["INTRUDER-1"]).await,
        upload_text(&app, &other, pool, "INTRUDER-2\n").await,
        app.call(
            Method::DELETE,
            &format!("/key-pools/{pool}/keys/{key}"),
            Some(&other),
            None,
        )
        .await,
    ];
    for r in &checks {
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
        assert_eq!(r.code(), "not_found");
    }
    // Exactly like a pool that does not exist.
    let missing = app
        .get(&format!("/key-pools/{}", Uuid::now_v7()), &other)
        .await;
    assert_eq!(missing.body, checks[0].body);
    let list = app.get("/key-pools", &other).await;
    assert_eq!(list.body["items"], json!([]));

    let p = app.get(&format!("/key-pools/{pool}"), &owner).await;
    assert_eq!(counts(&p.body), [1, 1, 0, 0, 0]);
    let intruded: i64 = sqlx::query_scalar("SELECT count(*) FROM keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(intruded, 1);
}

#[tokio::test]
async fn the_database_holds_no_plaintext_key_after_an_upload() {
    let app = spawn_app().await;
    let (token, _) = app.seller().await;
    let pool = create_pool(&app, &token, "secret").await;
    let keys = ["PLAINTEXT-CANARY-0001", "PLAINTEXT-CANARY-0002"];
    let r = upload_json(&app, &token, pool, &keys).await;
    assert_eq!(r.body["added"], 2);
    let r2 = upload_text(&app, &token, pool, "PLAINTEXT-CANARY-0003\r\n").await;
    assert_eq!(r2.body["added"], 1);
    let listing = app.get(&format!("/key-pools/{pool}/keys"), &token).await;
    let dupe = upload_json(&app, &token, pool, &keys).await;

    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
         WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(tables.iter().any(|(_, t)| t == "keys"));
    for key in keys.iter().chain(["PLAINTEXT-CANARY-0003"].iter()) {
        for reply in [&r, &r2, &listing, &dupe] {
            assert!(!reply.body.to_string().contains(key));
        }
        let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
        for (schema, table) in &tables {
            // The row's text form shows text as is and bytea as hex.
            let hits: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM \"{schema}\".\"{table}\" t
                 WHERE t::text LIKE '%' || $1 || '%' OR t::text LIKE '%' || $2 || '%'"
            )))
            .bind(key)
            .bind(&hex)
            .fetch_one(&app.pool)
            .await
            .unwrap();
            assert_eq!(hits, 0, "{key} found in {schema}.{table}");
        }
        let in_bytes: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM keys WHERE position(convert_to($1, 'UTF8') in ciphertext) > 0
                OR position(convert_to($1, 'UTF8') in fingerprint) > 0",
        )
        .bind(key)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(in_bytes, 0);
    }
    // The keys are there, sealed: the vault opens them.
    type SealedRow = (Uuid, Uuid, Vec<u8>, Vec<u8>, String);
    let rows: Vec<SealedRow> =
        sqlx::query_as("SELECT id, pool_id, ciphertext, nonce, enc_key_id FROM keys ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let opened: HashSet<String> = rows
        .into_iter()
        .map(|(id, pool, ciphertext, nonce, enc_key_id)| {
            let sealed = autokey_shared::vault::Sealed {
                ciphertext,
                nonce: nonce.try_into().unwrap(),
                enc_key_id,
            };
            app.vault.open(id, pool, &sealed).unwrap()
        })
        .collect();
    assert_eq!(
        opened,
        HashSet::from(
            [
                "PLAINTEXT-CANARY-0001",
                "PLAINTEXT-CANARY-0002",
                "PLAINTEXT-CANARY-0003"
            ]
            .map(String::from)
        )
    );
}

#[tokio::test]
async fn uploads_that_add_keys_enqueue_one_replenishment_per_batch() {
    let app = spawn_app().await;
    let (token, _) = app.seller().await;
    let pool = create_pool(&app, &token, "p").await;
    let jobs = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'autokey::replenish_pool'
               AND convert_from(job, 'UTF8')::jsonb ->> 'pool_id' = $1",
        )
        .bind(pool.to_string())
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    upload_json(&app, &token, pool, &["JOB-KEY-001"]).await;
    assert_eq!(jobs().await, 1);
    upload_json(&app, &token, pool, &["JOB-KEY-001", "bad"]).await;
    assert_eq!(jobs().await, 1, "nothing added, nothing to serve");
    let text: String = (0..5000).map(|i| format!("JOB-BATCH-{i:05}\n")).collect();
    let r = upload_text(&app, &token, pool, text).await;
    assert_eq!(r.body["added"], 5000);
    assert_eq!(jobs().await, 3, "two batches added keys");
}

#[tokio::test]
async fn a_key_must_name_an_existing_pool_and_stays_in_it() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 2).await;
    let insert = |pool_id: Uuid, fingerprint: u8| {
        sqlx::query(
            "INSERT INTO keys (id, pool_id, ciphertext, nonce, enc_key_id, fingerprint)
             VALUES ($1, $2, '\\x00', '\\x000000000000000000000000', 'k1', $3)",
        )
        .bind(Uuid::now_v7())
        .bind(pool_id)
        .bind(vec![fingerprint; 32])
    };
    let err = insert(Uuid::now_v7(), 1)
        .execute(&app.pool)
        .await
        .unwrap_err();
    let db = err.as_database_error().expect("a database error");
    assert_eq!(db.code().as_deref(), Some("23503"));
    assert_eq!(db.constraint(), Some("keys_pool_id_fkey"));
    // Nothing was kept, and the real pool's counters did not move.
    let strays: i64 = sqlx::query_scalar("SELECT count(*) FROM keys WHERE pool_id <> $1")
        .bind(shop.pool_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(strays, 0);
    insert(shop.pool_id, 2).execute(&app.pool).await.unwrap();
    assert_eq!(fixtures::pool_counts(&app, shop.pool_id).await, (3, 0, 0));

    let other = fixtures::shop(&app, 0).await;
    let moved = sqlx::query("UPDATE keys SET pool_id = $1 WHERE pool_id = $2")
        .bind(other.pool_id)
        .bind(shop.pool_id)
        .execute(&app.pool)
        .await
        .unwrap_err();
    assert_eq!(
        moved.as_database_error().unwrap().code().as_deref(),
        Some("23503")
    );
    let deleted = sqlx::query("DELETE FROM key_pools WHERE id = $1")
        .bind(other.pool_id)
        .execute(&app.pool)
        .await;
    assert!(deleted.is_err(), "pools are never deleted");
}

#[tokio::test]
async fn pools_and_offers_are_listed_a_page_at_a_time() {
    let app = spawn_app().await;
    let (token, _) = app.seller().await;
    let mut pools = Vec::new();
    for i in 0..3 {
        let pool = create_pool(&app, &token, &format!("p{i}")).await;
        pools.push(pool.to_string());
        let r = app
            .post(
                "/offers/draft",
                &token,
                json!({"title": format!("o{i}"), "priceCents": 1, "currency": "EUR",
                       "deliveryType": "AUTO_KEY", "keyPoolId": pool}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    for path in ["/key-pools", "/seller/offers"] {
        let first = app.get(&format!("{path}?limit=2"), &token).await;
        assert_eq!(first.body["items"].as_array().unwrap().len(), 2, "{path}");
        let cursor = first.body["nextCursor"].as_str().unwrap().to_owned();
        let second = app
            .get(&format!("{path}?limit=2&cursor={cursor}"), &token)
            .await;
        assert_eq!(second.body["items"].as_array().unwrap().len(), 1, "{path}");
        assert!(second.body["nextCursor"].is_null());
        let all = app.get(path, &token).await;
        assert_eq!(all.body["items"].as_array().unwrap().len(), 3);
        let r = app.get(&format!("{path}?limit=501"), &token).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
    let listed: Vec<String> = app.get("/key-pools", &token).await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, pools);
}

/// Units owed to paid orders (`pool_owed`) change only when an order's status does: an
/// order row can only be inserted PENDING, whoever inserts it.
#[tokio::test]
async fn an_order_row_can_only_be_inserted_pending() {
    let app = spawn_app().await;
    let shop = fixtures::shop(&app, 2).await;
    let insert = |status: &'static str| {
        sqlx::query(
            "INSERT INTO orders (id, buyer_id, offer_id, pool_id, quantity, amount_cents,
                                 currency, status, paid_at)
             VALUES ($1, $2, $3, $4, 1, 999, 'EUR', $5,
                     CASE WHEN $5 = 'PENDING' THEN NULL ELSE now() END)",
        )
        .bind(Uuid::now_v7())
        .bind(Uuid::now_v7())
        .bind(shop.offer_id)
        .bind(shop.pool_id)
        .bind(status)
    };
    let err = insert("PAID").execute(&app.pool).await.unwrap_err();
    let db = err.as_database_error().expect("a database error");
    assert_eq!(db.code().as_deref(), Some("23514"));
    assert_eq!(db.constraint(), Some("orders_inserted_pending"));
    let owed: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(units), 0)::bigint FROM pool_owed WHERE pool_id = $1",
    )
    .bind(shop.pool_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(owed, 0);
    insert("PENDING").execute(&app.pool).await.unwrap();
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE pool_id = $1")
        .bind(shop.pool_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(orders, 1, "the PAID insert left nothing behind");
}
