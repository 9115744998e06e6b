//! The authorization matrix, generated from the OpenAPI document: every operation of
//! /api/openapi.json is called by two sellers, two buyers, two storefronts, an admin, no
//! token, a malformed token and a revoked one, on objects owned by the "A" principals (seller
//! A's pool, key, draft offer; buyer A's and storefront A's fulfilled orders) and on ids that
//! exist nowhere. It checks: no, malformed or revoked token -> 401; wrong role -> 403; a
//! foreign object answers exactly like a missing one (404); lists never show another's
//! objects; plaintext keys reach only the order's buyer or storefront, and no response
//! carries a key's ciphertext, nonce or fingerprint. An operation the table below does not
//! classify fails the test, so a new route cannot skip the matrix.

use autokey_shared::model::Role;
use autokey_tests::{TestApp, spawn_app};
use base64::{Engine, engine::general_purpose};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// Who may call an operation.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Access {
    Public,
    Signed,
    Roles(&'static [Role]),
    AnyToken,
    /// The console's sign-in with an identity provider: 404 here, where it is not set up
    /// (tests/tests/oidc.rs tests it set up).
    SignInNotSetUp,
    /// Only the console's session cookie: no bearer token of any role may use it.
    SessionCookie,
}

const SELLER: &[Role] = &[Role::Seller];
const BUYER_SIDE: &[Role] = &[Role::Buyer, Role::Storefront];
const ADMIN: &[Role] = &[Role::Admin];
const SUBSCRIBERS: &[Role] = &[Role::Seller, Role::Storefront];
const EVENT_READERS: &[Role] = &[Role::Seller, Role::Storefront, Role::Admin];

fn access(operation_id: &str) -> Access {
    match operation_id {
        "healthz" | "readyz" | "getSellerConsole" => Access::Public,
        "paymentWebhook" => Access::Signed,
        "sellerLogin" | "sellerCallback" => Access::SignInNotSetUp,
        "sellerLogout" => Access::SessionCookie,
        "getMe" | "getOffer" => Access::AnyToken,
        "getMetrics" => Access::Roles(ADMIN),
        "createPool" | "listPools" | "getPool" | "uploadKeys" | "listKeys" | "invalidateKey"
        | "saveDraft" | "publishOffer" | "setOfferStatus" | "listSellerOffers"
        | "listSellerOrders" | "deliverManualOrder" | "listKeyReports" | "approveKeyReport"
        | "rejectKeyReport" | "replaceManualKey" | "updatePool" => Access::Roles(SELLER),
        "createOrder" | "listOrders" | "getOrder" | "payOrder" | "cancelOrder" | "fulfillOrder"
        | "reportKey" => Access::Roles(BUYER_SIDE),
        "createWebhookEndpoint"
        | "listWebhookEndpoints"
        | "deleteWebhookEndpoint"
        | "testWebhookEndpoint"
        | "listWebhookDeliveries" => Access::Roles(SUBSCRIBERS),
        "listEvents" => Access::Roles(EVENT_READERS),
        "listOwnAudit" => Access::Roles(SELLER),
        "listSellers" | "adminGetPool" | "adminListKeys" | "adminInvalidateKey"
        | "adminGetOrder" | "revokeToken" | "listDeadJobs" | "retryDeadJobs"
        | "startReencryption" | "getReencryption" | "listAudit" => Access::Roles(ADMIN),
        other => panic!("{other}: classify this operation's access in authz_matrix.rs"),
    }
}

struct Who {
    name: &'static str,
    token: Option<String>,
    role: Option<Role>,
    subject: Option<Uuid>,
}

/// Seller A's objects and the A orders.
struct World {
    buyer_a: Uuid,
    pool: Uuid,
    key: Uuid,
    draft: Uuid,
    offer: Uuid,
    buyer_order: Uuid,
    storefront_order: Uuid,
    /// Seller A's webhook endpoint.
    endpoint: Uuid,
    plaintexts: Vec<String>,
    secrets: Vec<String>,
}

async fn principals(app: &TestApp) -> Vec<Who> {
    let mut out = Vec::new();
    for (name, role) in [
        ("seller A", Role::Seller),
        ("seller B", Role::Seller),
        ("buyer A", Role::Buyer),
        ("buyer B", Role::Buyer),
        ("storefront A", Role::Storefront),
        ("storefront B", Role::Storefront),
        ("admin", Role::Admin),
    ] {
        let (token, subject) = app.token(role, None).await;
        out.push(Who {
            name,
            token: Some(token),
            role: Some(role),
            subject,
        });
    }
    let mut conn = app.pool.acquire().await.unwrap();
    let revoked = autokey_shared::store::tokens::create_token(&mut conn, Role::Seller, None)
        .await
        .unwrap();
    app.revoke(revoked.id).await;
    let nobody = |name, token: Option<&str>| Who {
        name,
        token: token.map(str::to_owned),
        role: None,
        subject: None,
    };
    out.push(nobody("no token", None));
    out.push(nobody("malformed token", Some("ak_not-a-token!")));
    out.push(nobody("revoked token", Some(&revoked.token)));
    out
}

fn find<'a>(who: &'a [Who], name: &str) -> &'a Who {
    who.iter().find(|w| w.name == name).unwrap()
}

async fn build_world(app: &TestApp, who: &[Who]) -> World {
    let seller = find(who, "seller A").token.clone().unwrap();
    let pool = app
        .post("/key-pools", &seller, json!({"name": "matrix"}))
        .await
        .body["id"]
        .clone();
    let pool_id: Uuid = serde_json::from_value(pool.clone()).unwrap();
    let plaintexts: Vec<String> = (0..8)
        .map(|_| format!("MATRIX-{}", Uuid::new_v4()))
        .collect();
    let up = app
        .post(
            &format!("/key-pools/{pool_id}/keys/upload"),
            &seller,
            json!({"keys": plaintexts}),
        )
        .await;
    assert_eq!(up.body["added"], 8, "{:?}", up.body);
    let draft = |title: &str| json!({"title": title, "priceCents": 500, "currency": "EUR", "deliveryType": "AUTO_KEY", "keyPoolId": pool});
    let offer = app.post("/offers/draft", &seller, draft("live")).await.body["id"].clone();
    app.post("/offers/publish", &seller, json!({"offerId": offer}))
        .await;
    let draft_id = app
        .post("/offers/draft", &seller, draft("draft"))
        .await
        .body["id"]
        .clone();
    let created = app
        .post(
            "/webhook-endpoints",
            &seller,
            json!({"url": "http://127.0.0.1:9/matrix", "eventTypes": ["pool.low_stock"]}),
        )
        .await;
    assert_eq!(created.status.as_u16(), 201, "{:?}", created.body);
    let endpoint = serde_json::from_value(created.body["id"].clone()).unwrap();
    let endpoint_secret = created.body["secret"].as_str().unwrap().to_owned();
    let buyer_a = find(who, "buyer A");
    let store_a = find(who, "storefront A");
    let mut orders = Vec::new();
    for (w, body) in [
        (buyer_a, json!({"offerId": offer})),
        (
            store_a,
            json!({"offerId": offer, "buyerId": buyer_a.subject}),
        ),
    ] {
        let token = w.token.as_deref().unwrap();
        let id = app.post("/orders", token, body).await.body["id"]
            .as_str()
            .unwrap()
            .to_owned();
        app.post(&format!("/orders/{id}/pay"), token, json!({}))
            .await;
        let done = app
            .post(&format!("/orders/{id}/fulfill?wait=20"), token, json!({}))
            .await;
        assert_eq!(done.body["status"], "FULFILLED", "{:?}", done.body);
        orders.push(id.parse().unwrap());
    }
    let keys = app
        .get(
            &format!("/key-pools/{pool_id}/keys?status=AVAILABLE"),
            &seller,
        )
        .await;
    let rows: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT ciphertext, nonce, fingerprint FROM keys WHERE pool_id = $1")
            .bind(pool_id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let secrets = rows
        .into_iter()
        .flat_map(|(c, n, f)| [c, n, f])
        .flat_map(|bytes| {
            [
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                general_purpose::STANDARD.encode(&bytes),
                general_purpose::URL_SAFE_NO_PAD.encode(&bytes),
            ]
        })
        .chain([endpoint_secret])
        .collect();
    World {
        buyer_a: buyer_a.subject.unwrap(),
        pool: pool_id,
        key: keys.body["items"][0]["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
        draft: serde_json::from_value(draft_id).unwrap(),
        offer: serde_json::from_value(offer).unwrap(),
        buyer_order: orders[0],
        storefront_order: orders[1],
        endpoint,
        plaintexts,
        secrets,
    }
}

/// What one call of an operation targets.
#[derive(Clone, Copy)]
enum Target {
    /// A's objects (for order operations: this order).
    Owned(Option<Uuid>),
    /// Ids that exist nowhere.
    Missing,
}

struct Op {
    id: String,
    method: Method,
    path: String,
    access: Access,
}

fn ops(spec: &Value) -> Vec<Op> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap().to_owned();
            out.push(Op {
                access: access(&id),
                method: method.to_uppercase().parse().unwrap(),
                path: path.clone(),
                id,
            });
        }
    }
    out
}

fn is_order_op(op: &Op) -> bool {
    matches!(
        op.id.as_str(),
        "getOrder" | "payOrder" | "cancelOrder" | "fulfillOrder"
    )
}

/// Whether the operation names one of A's objects (in its path or body).
fn names_an_object(op: &Op) -> bool {
    op.path.contains('{') || matches!(op.id.as_str(), "saveDraft" | "publishOffer")
}

/// The owner of what `op` targets (an admin route's objects are the admin's to see).
fn owner(op: &Op, target: Target, world: &World) -> &'static str {
    if op.access == Access::Roles(ADMIN) {
        return "admin";
    }
    match target {
        Target::Owned(Some(order)) if order == world.buyer_order => "buyer A",
        Target::Owned(Some(_)) => "storefront A",
        _ if is_order_op(op) => "nobody",
        _ => "seller A",
    }
}

fn request(op: &Op, who: &Who, target: Target, world: &World) -> (String, Option<Value>) {
    let pick = |real: Uuid| match target {
        Target::Owned(_) => real,
        Target::Missing => Uuid::new_v4(),
    };
    let id = match target {
        Target::Owned(Some(order)) => order,
        _ if is_order_op(op) => Uuid::new_v4(),
        _ if op.path.starts_with("/webhook-endpoints/") => pick(world.endpoint),
        _ if op.id == "adminGetOrder" => pick(world.buyer_order),
        _ => pick(world.draft),
    };
    let mut path = op
        .path
        .replace("{poolId}", &pick(world.pool).to_string())
        .replace("{keyId}", &pick(world.key).to_string())
        .replace("{id}", &id.to_string());
    match (op.id.as_str(), who.role) {
        ("listOrders", Some(Role::Storefront)) => path += &format!("?buyerId={}", world.buyer_a),
        ("fulfillOrder", _) => path += "?wait=0",
        _ => {}
    }
    let draft = json!({"id": pick(world.draft), "title": "t", "priceCents": 1, "currency": "EUR",
        "deliveryType": "AUTO_KEY"});
    let body = match op.id.as_str() {
        "createPool" => json!({"name": "m"}),
        "uploadKeys" => json!({"keys": [format!("MATRIX-NEW-{}", Uuid::new_v4())]}),
        "saveDraft" => draft,
        "publishOffer" => json!({"offerId": pick(world.draft)}),
        "setOfferStatus" => json!({"status": "inactive"}),
        "createOrder" if who.role == Some(Role::Storefront) => {
            json!({"offerId": world.offer, "buyerId": Uuid::new_v4()})
        }
        "createOrder" => json!({"offerId": world.offer}),
        "createWebhookEndpoint" => {
            json!({"url": "http://127.0.0.1:9/other", "eventTypes": ["order.fulfilled"]})
        }
        "deliverManualOrder" => json!({"keys": [format!("MATRIX-MANUAL-{}", Uuid::new_v4())]}),
        "reportKey" => json!({"reason": "does not work"}),
        "rejectKeyReport" => json!({}),
        "replaceManualKey" => json!({"key": format!("MATRIX-HAND-{}", Uuid::new_v4())}),
        "updatePool" => json!({"lowStockThreshold": 0}),
        "paymentWebhook" => {
            json!({"type": "payment.succeeded", "data": {"orderId": world.buyer_order,
            "paymentId": "p", "amountCents": 500, "currency": "EUR"}})
        }
        _ => return (path, None),
    };
    (path, Some(body))
}

async fn send(app: &TestApp, op: &Op, who: &Who, path: &str, body: Option<Value>) -> (u16, String) {
    let mut req = app
        .client
        .request(op.method.clone(), format!("{}{path}", app.base));
    if let Some(t) = &who.token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_for_every_principal() {
    let app = spawn_app().await;
    let worker = app.start_worker();
    let who = principals(&app).await;
    let world = build_world(&app, &who).await;
    let spec = app
        .call(Method::GET, "/api/openapi.json", None, None)
        .await
        .body;
    // Each object's id, and who alone may see it (a seller sees which order its keys went
    // to, in the keys' metadata).
    let private_ids = [
        (world.pool, &["seller A"][..]),
        (world.key, &["seller A"]),
        (world.draft, &["seller A"]),
        (world.endpoint, &["seller A"]),
        (world.buyer_order, &["buyer A", "seller A"]),
        (world.storefront_order, &["storefront A", "seller A"]),
    ]
    .map(|(id, owners)| (id.to_string(), owners));
    let started = std::time::Instant::now();
    let (mut calls, mut problems, mut keys_shown) = (0, Vec::new(), 0);
    for op in ops(&spec) {
        let targets: Vec<Target> = if is_order_op(&op) {
            vec![
                Target::Owned(Some(world.buyer_order)),
                Target::Owned(Some(world.storefront_order)),
            ]
        } else {
            vec![Target::Owned(None)]
        };
        for target in targets {
            for w in &who {
                let is_owner = owner(&op, target, &world) == w.name;
                if is_owner && op.method != Method::GET {
                    continue; // the owner's own changes are other tests' business
                }
                let (path, body) = request(&op, w, target, &world);
                let (status, text) = send(&app, &op, w, &path, body).await;
                calls += 1;
                let mut fail = |why: String| {
                    problems.push(format!("{} {} as {}: {why}", op.method, path, w.name))
                };
                let authenticated = w.role.is_some();
                let expected: Option<u16> = match op.access {
                    Access::Public => (!(200..300).contains(&status)).then_some(200),
                    Access::Signed | Access::SessionCookie => Some(401),
                    Access::SignInNotSetUp => Some(404),
                    _ if !authenticated => Some(401),
                    Access::Roles(roles) if !roles.contains(&w.role.unwrap()) => Some(403),
                    _ if names_an_object(&op) && !is_owner => Some(404),
                    _ => (!(200..300).contains(&status)).then_some(200),
                };
                if let Some(expected) = expected
                    && expected != status
                {
                    fail(format!("{status}, expected {expected}: {text}"));
                }
                if names_an_object(&op) && !is_owner {
                    let (missing_path, body) = request(&op, w, Target::Missing, &world);
                    let (missing, missing_text) = send(&app, &op, w, &missing_path, body).await;
                    calls += 1;
                    if missing != status {
                        fail(format!(
                            "{status} ({text}), but {missing} for missing ids ({missing_text})"
                        ));
                    }
                }
                let reads_own_keys =
                    is_owner && matches!(op.id.as_str(), "getOrder" | "fulfillOrder");
                let shows_keys = world.plaintexts.iter().any(|k| text.contains(k.as_str()));
                if shows_keys && !reads_own_keys {
                    fail("a plaintext key".into());
                }
                keys_shown += usize::from(shows_keys);
                if world.secrets.iter().any(|s| text.contains(s.as_str())) {
                    fail("a key's ciphertext, nonce or fingerprint".into());
                }
                // An admin reads across sellers (ids and metadata, never plaintext keys).
                let foreign = private_ids.iter().find(|(id, owners)| {
                    w.role != Some(Role::Admin)
                        && !owners.contains(&w.name)
                        && text.contains(id.as_str())
                });
                if let Some((id, owners)) = foreign {
                    fail(format!("{}'s object {id}: {text}", owners[0]));
                }
            }
        }
    }
    println!(
        "authorization matrix: {calls} calls in {:.1?}",
        started.elapsed()
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(calls > 300, "only {calls} calls");
    // The positive side works: each order's owner reads its keys.
    assert_eq!(keys_shown, 2, "plaintext keys shown to their owners");
    // Three encodings of each key's ciphertext, nonce and fingerprint, and the endpoint's secret.
    assert_eq!(world.secrets.len(), 8 * 3 * 3 + 1);
    worker.stop().await.expect("worker stops");
}
