//! No secret reaches the logs. The real binaries (target/debug/autokey-api serve, its token
//! commands, autokey-worker) run as child processes with every autokey crate at `trace` and
//! everything else at `debug`, their output captured, through a full flow: tokens minted and
//! revoked, keys uploaded (JSON and text), an offer published, orders placed with an
//! Idempotency-Key, paid (simulated and by signed webhook), fulfilled, their keys read, plus
//! bad, revoked and wrong-role tokens, a forged webhook and a metrics scrape. Then no token,
//! the metrics token, the webhook secret, the encryption or fingerprint key, or any license
//! key appears anywhere in what they wrote.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use autokey_tests::db;
use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use uuid::Uuid;

const RUST_LOG: &str = "debug,autokey_api=trace,autokey_worker=trace,autokey_shared=trace";

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (./scripts/test.sh does)",
        path.display()
    );
    path
}

fn hex64() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

struct Env {
    vars: Vec<(&'static str, String)>,
    logs: PathBuf,
}

impl Env {
    fn command(&self, name: &str, log: &str) -> Command {
        let mut c = Command::new(bin(name));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", RUST_LOG)
            .current_dir(&self.logs)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(self.logs.join(log)).unwrap())
            .kill_on_drop(true);
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    /// `autokey-api token ...`: its stdout; its stderr is appended to the logs.
    async fn cli(&self, args: &[&str]) -> String {
        let out = self
            .command("autokey-api", "cli-last.log")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "autokey-api {args:?}");
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join("cli.log"))
            .unwrap();
        log.write_all(&out.stderr).unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

async fn terminate(mut child: Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
}

fn read_logs(dir: &Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            all.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_flow_logs_no_secret() {
    let (db_name, _pool) = db::fresh_database().await;
    let logs = autokey_tests::tools::artifacts_dir("log-secrets");
    let (encryption_key, fingerprint_key) = (hex64(), hex64());
    let webhook_secret: Vec<u8> = hex64().into_bytes()[..32].to_vec();
    let whsec = format!("whsec_{}", STANDARD.encode(&webhook_secret));
    let metrics_token = format!("metrics-{}", Uuid::new_v4().simple());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = Env {
        vars: vec![
            ("DATABASE_URL", db::database_url(&db_name)),
            ("ENCRYPTION_KEY", encryption_key.clone()),
            ("FINGERPRINT_KEY", fingerprint_key.clone()),
            ("PAYMENT_WEBHOOK_SECRET", whsec.clone()),
            ("METRICS_TOKEN", metrics_token.clone()),
            ("SIMULATED_PAYMENTS", "true".into()),
            ("PORT", port.to_string()),
            ("BIND_ADDR", "127.0.0.1".into()),
        ],
        logs: logs.clone(),
    };
    let api = env
        .command("autokey-api", "api.log")
        .arg("serve")
        .spawn()
        .unwrap();
    let worker = env.command("autokey-worker", "worker.log").spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "the api never became ready: {}",
            read_logs(&logs)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut tokens = Vec::new();
    for role in ["seller", "storefront", "buyer", "admin", "seller"] {
        tokens.push(env.cli(&["token", "create", "--role", role]).await);
    }
    let [seller, storefront, buyer, admin, revoked] = tokens.clone().try_into().unwrap();
    let revoked_id: Value = http
        .get(format!("{base}/me"))
        .bearer_auth(&revoked)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    env.cli(&["token", "revoke", revoked_id["tokenId"].as_str().unwrap()])
        .await;

    let call = |method: reqwest::Method, path: &str, token: &str, body: Option<Value>| {
        let mut req = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req
                .json(&b)
                .header("Idempotency-Key", format!("log-test-{path}"));
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    use reqwest::Method as M;
    let license_keys: Vec<String> = (0..6)
        .map(|i| format!("LOG-KEY-{i}-{}", Uuid::new_v4()))
        .collect();
    let (_, pool) = call(
        M::POST,
        "/key-pools",
        &seller,
        Some(json!({"name": "logs"})),
    )
    .await;
    let pool_id = pool["id"].as_str().unwrap().to_owned();
    let upload = format!("/key-pools/{pool_id}/keys/upload");
    call(
        M::POST,
        &upload,
        &seller,
        Some(json!({"keys": license_keys[..3]})),
    )
    .await;
    let text = http
        .post(format!("{base}{upload}"))
        .bearer_auth(&seller)
        .header("content-type", "text/plain")
        .body(license_keys[3..].join("\n"))
        .send()
        .await
        .unwrap();
    assert!(text.status().is_success());
    let draft = json!({"title": "Logs", "priceCents": 700, "currency": "EUR", "deliveryType": "AUTO_KEY", "keyPoolId": pool_id});
    let (_, offer) = call(M::POST, "/offers/draft", &seller, Some(draft)).await;
    call(
        M::POST,
        "/offers/publish",
        &seller,
        Some(json!({"offerId": offer["id"]})),
    )
    .await;
    let order_body = json!({"offerId": offer["id"], "buyerId": Uuid::new_v4(), "quantity": 2});
    let (status, order) = call(M::POST, "/orders", &storefront, Some(order_body)).await;
    assert_eq!(status, 201, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    call(M::POST, &format!("/orders/{id}/pay"), &storefront, None).await;
    let (_, done) = call(
        M::POST,
        &format!("/orders/{id}/fulfill?wait=20"),
        &storefront,
        None,
    )
    .await;
    assert_eq!(done["keys"].as_array().map(Vec::len), Some(2), "{done}");
    call(M::GET, &format!("/orders/{id}"), &storefront, None).await;

    // A buyer's order, paid by a signed webhook, and a forged one.
    let (_, own) = call(
        M::POST,
        "/orders",
        &buyer,
        Some(json!({"offerId": offer["id"]})),
    )
    .await;
    let event =
        json!({"type": "payment.succeeded", "data": {"orderId": own["id"], "paymentId": "pay_log",
        "amountCents": own["amountCents"], "currency": "EUR"}})
        .to_string();
    let now = chrono::Utc::now().timestamp();
    for secret in [&webhook_secret[..], b"forged-secret-forged-secret-0000"] {
        let sig = autokey_shared::webhook_signature::sign(secret, "evt_log", now, event.as_bytes());
        http.post(format!("{base}/webhooks/payments"))
            .header("webhook-id", "evt_log")
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", sig)
            .header("content-type", "application/json")
            .body(event.clone())
            .send()
            .await
            .unwrap();
    }
    let (_, paid) = call(
        M::POST,
        &format!("/orders/{}/fulfill?wait=20", own["id"].as_str().unwrap()),
        &buyer,
        None,
    )
    .await;
    assert_eq!(paid["status"], "FULFILLED", "{paid}");

    // Refused: a made-up token, a revoked one, the wrong role; metrics with both tokens.
    let bad = format!("ak_{}", Uuid::new_v4().simple());
    assert_eq!(call(M::GET, "/key-pools", &bad, None).await.0, 401);
    assert_eq!(call(M::GET, "/key-pools", &revoked, None).await.0, 401);
    assert_eq!(call(M::GET, "/key-pools", &storefront, None).await.0, 403);
    for t in [&metrics_token, &admin] {
        let r = http
            .get(format!("{base}/metrics"))
            .bearer_auth(t)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    terminate(worker).await;
    terminate(api).await;
    let all = read_logs(&logs);
    assert!(
        all.contains("TRACE") || all.contains("DEBUG"),
        "the logs are not at debug level:\n{all}"
    );
    assert!(
        all.contains("request rejected"),
        "the 401s are logged (at debug)"
    );
    let mut secrets: Vec<(String, String)> = tokens
        .iter()
        .map(|t| ("a bearer token".into(), t.clone()))
        .collect();
    secrets.push(("a made-up bearer token".into(), bad));
    secrets.push(("METRICS_TOKEN".into(), metrics_token));
    secrets.push(("PAYMENT_WEBHOOK_SECRET".into(), whsec.clone()));
    secrets.push((
        "the webhook secret's base64".into(),
        whsec["whsec_".len()..].to_owned(),
    ));
    secrets.push((
        "the webhook secret's bytes".into(),
        String::from_utf8(webhook_secret).unwrap(),
    ));
    secrets.push(("ENCRYPTION_KEY".into(), encryption_key));
    secrets.push(("FINGERPRINT_KEY".into(), fingerprint_key));
    secrets.extend(
        license_keys
            .into_iter()
            .map(|k| ("a license key".into(), k)),
    );
    let leaked: Vec<&str> = secrets
        .iter()
        .filter(|(_, s)| all.contains(s.as_str()))
        .map(|(what, _)| what.as_str())
        .collect();
    assert!(
        leaked.is_empty(),
        "in the logs ({}): {leaked:?}",
        logs.display()
    );
    println!(
        "log secrets: {} lines of logs, none with any of {} secrets",
        all.lines().count(),
        secrets.len()
    );
}
