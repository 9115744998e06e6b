//! Sign-in with the marketplace's identity provider (API.md), against a real OpenID
//! provider: `oidc-provider` on a local port with its own keys (tests/src/oidc.rs). Tokens
//! come from the provider itself (client credentials for storefronts, the authorization
//! code flow through its login form for sellers); the ones it will not mint (expired, for
//! another audience, unsigned, ...) are signed here with its own keys.

use std::time::Duration;

use autokey_tests::{
    AppOptions, TestApp,
    fixtures::{self},
    oidc::{Provider, raw_jwt, sign_with},
    spawn_app_with,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

async fn app_for(
    provider: &Provider,
    tune: impl FnOnce(&mut autokey_api::auth::oidc::settings::OidcConfig),
) -> TestApp {
    let mut config = provider.config();
    tune(&mut config);
    spawn_app_with(AppOptions {
        oidc: Some(config),
        ..AppOptions::default()
    })
    .await
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

fn challenge(reply: &autokey_tests::Reply) -> String {
    reply
        .headers
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn provider_tokens_act_as_stable_tenants_beside_autokey_tokens() {
    let provider = Provider::start().await;
    let app = app_for(&provider, |_| {}).await;
    let shop = fixtures::shop(&app, 5).await;

    // Storefronts: client credentials, one client per signing algorithm.
    let mut ids = Vec::new();
    for (client, secret) in [
        ("storefront-rs256", "secret-rs256"),
        ("storefront-es256", "secret-es256"),
        ("storefront-eddsa", "secret-eddsa"),
    ] {
        let token = provider.client_credentials(client, secret).await;
        let me = app.get("/me", &token).await;
        assert_eq!(me.status, StatusCode::OK, "{client}: {:?}", me.body);
        assert_eq!(me.body["role"], "storefront");
        // The same account is the same autokey id on every token.
        let again = provider.client_credentials(client, secret).await;
        assert_ne!(again, token);
        assert_eq!(
            app.get("/me", &again).await.body["subject"],
            me.body["subject"]
        );
        ids.push(me.body["subject"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "three accounts, three storefront ids");
    assert_eq!(count(&app, "SELECT count(*) FROM oidc_identities").await, 3);

    // A storefront's order is its own: another storefront (JWT or autokey token) sees none.
    let rs = provider
        .client_credentials("storefront-rs256", "secret-rs256")
        .await;
    let es = provider
        .client_credentials("storefront-es256", "secret-es256")
        .await;
    let order = app
        .post(
            "/orders",
            &rs,
            json!({"offerId": shop.offer_id, "quantity": 1, "buyerId": uuid::Uuid::new_v4()}),
        )
        .await;
    assert_eq!(order.status, StatusCode::CREATED, "{:?}", order.body);
    assert_eq!(order.body["storefrontId"].as_str(), Some(ids[0].as_str()));
    let path = format!("/orders/{}", order.body["id"].as_str().unwrap());
    assert_eq!(app.get(&path, &rs).await.status, StatusCode::OK);
    assert_eq!(app.get(&path, &es).await.status, StatusCode::NOT_FOUND);
    let autokey_storefront = app.storefront().await;
    assert_eq!(
        app.get(&path, &autokey_storefront).await.status,
        StatusCode::NOT_FOUND
    );

    // A seller: the authorization code flow through the provider's own login form.
    let seller = provider.authorization_code("seller-alice").await;
    let pool = app
        .post("/key-pools", &seller, json!({"name": "from the provider"}))
        .await;
    assert_eq!(pool.status, StatusCode::CREATED, "{:?}", pool.body);
    let again = provider.authorization_code("seller-alice").await;
    let pools = app.get("/key-pools", &again).await;
    assert_eq!(
        pools.body["items"].as_array().unwrap().len(),
        1,
        "the same seller"
    );
    let bob = provider.authorization_code("seller-bob").await;
    assert_eq!(app.get("/key-pools", &bob).await.body["items"], json!([]));
    // A seller JWT may not act as a storefront, nor see the fixture seller's pool.
    let as_buyer = app
        .post(
            "/orders",
            &seller,
            json!({"offerId": shop.offer_id, "quantity": 1}),
        )
        .await;
    assert_eq!(as_buyer.status, StatusCode::FORBIDDEN);
    let other_pool = format!("/key-pools/{}", shop.pool_id);
    assert_eq!(
        app.get(&other_pool, &seller).await.status,
        StatusCode::NOT_FOUND
    );

    // autokey's own tokens keep working beside JWTs.
    let (own_seller, own_id) = app.seller().await;
    let me = app.get("/me", &own_seller).await;
    assert_eq!(
        me.body["subject"].as_str(),
        Some(own_id.to_string().as_str())
    );
}

/// Each refusal of API.md, built exactly, answered 401 with its reason before any route
/// runs (a POST /key-pools with each of them creates no pool).
#[tokio::test]
async fn every_refused_token_is_a_401_with_its_reason_and_reaches_no_route() {
    let provider = Provider::start().await;
    let app = app_for(&provider, |c| {
        c.admins.insert((c.issuers[0].clone(), "admin-root".into()));
    })
    .await;
    let now = chrono::Utc::now().timestamp();
    let seller = |edit: &dyn Fn(&mut Value)| {
        let mut claims = provider.claims("seller-carol", Some("seller"));
        edit(&mut claims);
        claims
    };
    let rs = provider.key("RS256");
    let published_key = rs.public_jwk.to_string();
    let hmac_with_public_key = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(rs.kid.clone());
        jsonwebtoken::encode(
            &header,
            &seller(&|_| {}),
            &jsonwebtoken::EncodingKey::from_secret(published_key.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let tampered = {
        let valid = provider.sign("ES256", &seller(&|_| {}));
        let (header, rest) = valid.split_once('.').unwrap();
        let signature = rest.rsplit_once('.').unwrap().1;
        let mallory = seller(&|c| c["sub"] = "mallory".into());
        format!(
            "{header}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(mallory.to_string())
        )
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            provider.sign(
                "ES256",
                &seller(&|c| {
                    c["exp"] = (now - 120).into();
                    c["iat"] = (now - 720).into();
                }),
            ),
            "expired",
        ),
        (
            "not yet valid",
            provider.sign("RS256", &seller(&|c| c["nbf"] = (now + 600).into())),
            "not valid yet",
        ),
        (
            "issuer not configured",
            provider.sign(
                "RS256",
                &seller(&|c| c["iss"] = "https://other.example".into()),
            ),
            "is not accepted here",
        ),
        (
            "wrong audience",
            provider.sign(
                "EdDSA",
                &seller(&|c| c["aud"] = "https://elsewhere.example".into()),
            ),
            "not for audience",
        ),
        (
            "unknown key",
            sign_with(&rs, "made-up-kid", &seller(&|_| {})),
            "unknown signing key",
        ),
        (
            "alg none",
            raw_jwt(
                &json!({"alg": "none", "kid": rs.kid}),
                &seller(&|_| {}),
                b"",
            ),
            "alg none",
        ),
        (
            "HMAC with the provider's public key",
            hmac_with_public_key,
            "HMAC",
        ),
        (
            "missing role",
            provider.sign("RS256", &provider.claims("seller-carol", None)),
            "no role claim",
        ),
        (
            "unknown role",
            provider.sign("RS256", &provider.claims("seller-carol", Some("owner"))),
            "owner",
        ),
        (
            "admin not listed",
            provider.sign("RS256", &provider.claims("seller-carol", Some("admin"))),
            "OIDC_ADMIN_SUBJECTS",
        ),
        (
            "claims changed after signing",
            tampered,
            "signature does not verify",
        ),
    ];
    for (what, token, reason) in &cases {
        for (method, path) in [(Method::GET, "/me"), (Method::POST, "/key-pools")] {
            let body = (method == Method::POST).then(|| json!({"name": what}));
            let r = app.call(method.clone(), path, Some(token), body).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{what} {path}: {:?}",
                r.body
            );
            assert_eq!(r.code(), "unauthorized", "{what}");
            let challenge = challenge(&r);
            assert!(
                challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
                "{what}: {challenge}"
            );
            assert!(
                challenge.contains(reason)
                    && r.body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains(reason),
                "{what}: {challenge} / {:?}",
                r.body
            );
        }
    }
    assert_eq!(
        count(&app, "SELECT count(*) FROM key_pools").await,
        0,
        "no route ran"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM oidc_identities").await, 0);
    // A route that takes no token ignores a refused one.
    assert_eq!(
        app.get("/healthz", &cases[0].1).await.status,
        StatusCode::OK
    );

    // The same builders with nothing wrong are accepted (the refusals are the changes).
    for alg in ["RS256", "ES256", "EdDSA"] {
        let ok = provider.sign(alg, &seller(&|_| {}));
        assert_eq!(app.get("/me", &ok).await.status, StatusCode::OK, "{alg}");
    }
    let leeway = provider.sign("ES256", &seller(&|c| c["exp"] = (now - 30).into()));
    assert_eq!(
        app.get("/me", &leeway).await.status,
        StatusCode::OK,
        "60 s of leeway"
    );
    let admin = provider.sign("RS256", &provider.claims("admin-root", Some("admin")));
    let me = app.get("/me", &admin).await;
    assert_eq!(
        (me.status, me.body["role"].as_str()),
        (StatusCode::OK, Some("admin"))
    );

    // Without any token: 401 with a Bearer challenge too; an unknown autokey token says so.
    let none = app.call(Method::GET, "/me", None, None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(
        challenge(&none).starts_with("Bearer realm="),
        "{}",
        challenge(&none)
    );
    let unknown = app.get("/me", "ak_unknown").await;
    assert!(
        challenge(&unknown).contains("invalid_token"),
        "{}",
        challenge(&unknown)
    );
}

#[tokio::test]
async fn a_key_rotation_is_picked_up_without_a_restart() {
    let provider = Provider::start().await;
    let app = app_for(&provider, |c| {
        c.min_refresh_interval = Duration::from_millis(500)
    })
    .await;
    let before = provider
        .client_credentials("storefront-es256", "secret-es256")
        .await;
    assert_eq!(app.get("/me", &before).await.status, StatusCode::OK);
    let old_kid = provider.key("ES256").kid;
    let new_kids = provider.rotate().await;
    assert!(!new_kids.contains(&old_kid));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = provider
        .client_credentials("storefront-es256", "secret-es256")
        .await;
    let kid = jsonwebtoken::decode_header(&after).unwrap().kid.unwrap();
    assert!(
        new_kids.contains(&kid),
        "the provider signs with its new key"
    );
    let me = app.get("/me", &after).await;
    assert_eq!(me.status, StatusCode::OK, "{:?}", me.headers);
    // Tokens of the old key, still published, keep working.
    assert_eq!(app.get("/me", &before).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_flood_of_made_up_kids_costs_the_provider_one_fetch_a_minute() {
    let provider = Provider::start().await;
    let app = app_for(&provider, |_| {}).await;
    let good = provider
        .client_credentials("storefront-rs256", "secret-rs256")
        .await;
    assert_eq!(app.get("/me", &good).await.status, StatusCode::OK);
    let before = provider.jwks_hits().await;
    let key = provider.key("RS256");
    let claims = provider.claims("storefront-flood", Some("storefront"));
    for i in 0..40 {
        let token = sign_with(&key, &format!("made-up-{i}"), &claims);
        let r = app.get("/me", &token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(
            challenge(&r).contains("unknown signing key"),
            "{}",
            challenge(&r)
        );
    }
    let fetched = provider.jwks_hits().await - before;
    assert!(fetched <= 1, "{fetched} key fetches for 40 unknown kids");
    assert_eq!(app.get("/me", &good).await.status, StatusCode::OK);
}

/// The console's sign-in without a browser (the browser test signs in through the
/// provider's page in Chromium): cookie attributes, CSRF rules, logout.
#[tokio::test]
async fn the_console_session_cookie_is_strict_and_ends_at_logout() {
    let provider = Provider::start().await;
    let app = app_for(&provider, |_| {}).await;
    provider
        .set_console_redirect_uris(&[format!("{}/seller/callback", app.base)])
        .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let login = http
        .get(format!("{}/seller/login", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::FOUND);
    let to_provider = login.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let pending_cookie = login.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        pending_cookie.contains("HttpOnly") && pending_cookie.contains("Path=/seller/callback")
    );
    let authorize = url::Url::parse(&to_provider).unwrap();
    let q: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], "autokey-console");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q.contains_key("state") && q.contains_key("nonce"));

    // At the provider: its login form.
    let mut jar = autokey_tests::oidc::Jar::default();
    let interaction = jar.follow(&http, http.get(&to_provider)).await;
    let back = jar
        .follow(
            &http,
            http.post(&interaction).form(&[
                ("prompt", "login"),
                ("login", "seller-dora"),
                ("password", "x"),
            ]),
        )
        .await;
    let callback = jar.follow(&http, http.get(&back)).await;
    assert!(
        callback.starts_with(&format!("{}/seller/callback?", app.base)),
        "{callback}"
    );

    // Another state than this browser's: refused.
    let pending = pending_cookie.split(';').next().unwrap().to_owned();
    let forged = callback.replace(&format!("state={}", q["state"]), "state=forged");
    let r = http
        .get(&forged)
        .header(header::COOKIE, &pending)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // No sign-in started in this browser: refused.
    let r = http.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let done = http
        .get(&callback)
        .header(header::COOKIE, &pending)
        .send()
        .await
        .unwrap();
    assert_eq!(
        done.status(),
        StatusCode::SEE_OTHER,
        "{:?}",
        done.text().await
    );
    assert_eq!(done.headers()[header::LOCATION], "/seller");
    let set: Vec<String> = done
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session = set
        .iter()
        .find(|c| c.starts_with("autokey_session="))
        .unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(session.contains(attribute), "{session}");
    }
    assert!(
        !session.contains("Secure"),
        "not Secure on http://127.0.0.1: {session}"
    );
    let max_age: i64 = session
        .split("Max-Age=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (3000..=3600).contains(&max_age),
        "expires with the provider's token: {max_age}"
    );
    let cookie = session.split(';').next().unwrap().to_owned();
    let expires: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT expires_at FROM api_tokens WHERE role = 'seller' AND expires_at IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(expires.is_some());

    let with_cookie = |method: Method, path: &str| {
        http.request(method, format!("{}{path}", app.base))
            .header(header::COOKIE, &cookie)
    };
    // With the header: the seller. Without it, or from another origin: nobody.
    let me = with_cookie(Method::GET, "/me")
        .header("x-autokey-csrf", "1")
        .send()
        .await
        .unwrap();
    let me = TestApp::reply(me).await;
    assert_eq!(
        (me.status, me.body["role"].as_str()),
        (StatusCode::OK, Some("seller"))
    );
    let bare = TestApp::reply(
        with_cookie(Method::POST, "/key-pools")
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(bare.status, StatusCode::UNAUTHORIZED);
    let cross = with_cookie(Method::POST, "/key-pools")
        .header("x-autokey-csrf", "1")
        .header(header::ORIGIN, "https://evil.example")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::UNAUTHORIZED);
    let cross_site = with_cookie(Method::POST, "/key-pools")
        .header("x-autokey-csrf", "1")
        .header("sec-fetch-site", "cross-site")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(count(&app, "SELECT count(*) FROM key_pools").await, 0);
    let made = with_cookie(Method::POST, "/key-pools")
        .header("x-autokey-csrf", "1")
        .header(header::ORIGIN, app.base.as_str())
        .json(&json!({"name": "console"}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), StatusCode::CREATED);
    // The console's seller is the provider account's one autokey id (as a bearer JWT).
    let jwt = provider.sign("RS256", &provider.claims("seller-dora", Some("seller")));
    assert_eq!(
        app.get("/me", &jwt).await.body["subject"],
        me.body["subject"]
    );

    // Logout ends the session: the token is revoked and the cookie removed.
    let out = with_cookie(Method::POST, "/seller/logout")
        .header("x-autokey-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let removal = out.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(
        removal.starts_with("autokey_session=;") && removal.contains("Max-Age=0"),
        "{removal}"
    );
    app.until_token_cache_is_live().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = with_cookie(Method::GET, "/me")
        .header("x-autokey-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    // A bearer token is never revoked by /seller/logout.
    let pasted = app
        .call(Method::POST, "/seller/logout", Some(&jwt), None)
        .await;
    assert_eq!(pasted.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/me", &jwt).await.status, StatusCode::OK);
}

#[tokio::test]
async fn console_sign_in_is_404_when_not_set_up() {
    let app = spawn_app_with(AppOptions::default()).await;
    let r = app.call(Method::GET, "/seller/login", None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// A seller signs in to the console through the provider's own login page, in Debian's
/// Chromium driven by Playwright (tests/browser/oidc_login.py).
#[tokio::test]
async fn the_console_signs_in_through_the_providers_login_page_in_chromium() {
    let python = autokey_tests::tools::venv_bin("python");
    let chromium = std::env::var_os("AUTOKEY_CHROMIUM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(
        chromium.exists(),
        "Chromium is missing ({}): run ./scripts/test-deps.sh",
        chromium.display()
    );
    let provider = Provider::start().await;
    let app = app_for(&provider, |_| {}).await;
    provider
        .set_console_redirect_uris(&[format!("{}/seller/callback", app.base)])
        .await;
    let artifacts = autokey_tests::tools::artifacts_dir("oidc-browser");
    let out = autokey_tests::tools::run(
        "the console's sign-in in Chromium",
        tokio::process::Command::new(python)
            .arg(autokey_tests::tools::workspace_root().join("tests/browser/oidc_login.py"))
            .args(["--base", &app.base, "--login", "seller-erin", "--chromium"])
            .arg(&chromium)
            .arg("--artifacts")
            .arg(&artifacts)
            .env("PYTHONUNBUFFERED", "1"),
        Duration::from_secs(180),
    )
    .await;
    println!("{out}");
    assert!(artifacts.join("oidc-console-1280.png").exists());
    // The pool the browser made belongs to the provider account's autokey seller.
    let jwt = provider.sign("RS256", &provider.claims("seller-erin", Some("seller")));
    let pools = app.get("/key-pools", &jwt).await;
    assert_eq!(pools.body["items"][0]["name"], "Signed-in pool");
    // The session was revoked at sign-out.
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_tokens WHERE expires_at IS NOT NULL AND revoked_at IS NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(live, 0);
}
