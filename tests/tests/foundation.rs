//! Foundation: health, readiness, authentication, error format, API docs.

use autokey_shared::{model::Role, store::tokens};
use autokey_tests::spawn_app;
use reqwest::{Method, StatusCode};

#[tokio::test]
async fn healthz_and_readyz_answer_200() {
    let app = spawn_app().await;
    let r = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn readyz_is_503_when_migrations_are_missing() {
    let app = spawn_app().await;
    sqlx::query("DELETE FROM autokey_schema_migrations")
        .execute(&app.pool)
        .await
        .unwrap();
    let r = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.code(), "unavailable");
}

#[tokio::test]
async fn seller_token_reaches_an_authenticated_route_and_bad_tokens_get_401_json() {
    let app = spawn_app().await;
    let (token, _) = app.seller().await;
    let ok = app.get("/me", &token).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);

    let missing = app.call(Method::GET, "/me", None, None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.code(), "unauthorized");
    assert!(missing.body["error"]["message"].is_string());

    for bad in [
        "",
        "ak_",
        "garbage",
        "ak_doesnotexistdoesnotexistdoesnotexist00000",
    ] {
        let r = app.get("/me", bad).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "token {bad:?}");
        assert_eq!(r.code(), "unauthorized");
    }
    let basic = app
        .client
        .get(format!("{}/me", app.base))
        .header("authorization", format!("Basic {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);

    let mut conn = app.pool.acquire().await.unwrap();
    let revoked = tokens::create_token(&mut conn, Role::Seller, None)
        .await
        .unwrap();
    assert_eq!(app.get("/me", &revoked.token).await.status, StatusCode::OK);
    app.revoke(revoked.id).await;
    let r = app.get("/me", &revoked.token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "unauthorized");
}

#[tokio::test]
async fn tokens_are_stored_only_as_hashes() {
    let app = spawn_app().await;
    let (token, _) = app.seller().await;
    let hits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_tokens WHERE encode(token_hash, 'escape') LIKE '%' || $1 || '%'",
    )
    .bind(&token[3..20])
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(hits, 0);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM api_tokens WHERE token_hash = $1")
        .bind(&tokens::hash_token(&token)[..])
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    let r = app.call(Method::GET, "/no/such/route", None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "not_found");
    let r = app.call(Method::DELETE, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.code(), "method_not_allowed");
}

#[tokio::test]
async fn docs_are_served_and_the_spec_is_openapi_3() {
    let app = spawn_app().await;
    let spec = app.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(spec.status, StatusCode::OK);
    assert!(spec.body["openapi"].as_str().unwrap().starts_with("3."));
    let docs = app
        .client
        .get(format!("{}/docs/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    let html = docs.text().await.unwrap();
    assert!(html.to_lowercase().contains("swagger"), "{html}");
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_key_order_and_job_gauges() {
    let app = spawn_app().await;
    let shop = autokey_tests::fixtures::shop(&app, 3).await;
    // Only the admin role or the metrics token may scrape.
    let url = format!("{}/metrics", app.base);
    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (seller, _) = app.seller().await;
    let r = app
        .client
        .get(&url)
        .bearer_auth(&seller)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app
        .client
        .get(&url)
        .bearer_auth("not-the-metrics-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (admin, _) = app.token(Role::Admin, None).await;
    let r = app
        .client
        .get(&url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let resp = app
        .client
        .get(&url)
        .bearer_auth(autokey_tests::METRICS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("autokey_keys{status=\"AVAILABLE\"} 3"),
        "{text}"
    );
    assert!(text.contains("autokey_orders_paid_waiting 0"), "{text}");
    assert!(
        text.contains("autokey_jobs{queue=\"autokey::replenish_pool\",status=\"Pending\"} 1"),
        "{text}"
    );
    assert!(text.contains("autokey_jobs_dead 0"), "{text}");
    assert!(
        text.contains("autokey_http_responses_total{class=\"2xx\"}"),
        "{text}"
    );
    let _ = shop;
}
