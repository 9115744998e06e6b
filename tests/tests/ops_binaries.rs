//! The real binaries as an operator and a seller run them: `autokey-api serve` and
//! `autokey-worker` with LOG_FORMAT=json and the worker's METRICS_PORT; a request's
//! `x-request-id` comes back in its response and is on the worker's log line for the job
//! the request enqueued; the worker serves its own metrics; the seller CLI uploads a
//! 100,000-line file over HTTP and lists the pools, and fails clearly on a bad token,
//! an unreachable api or a missing file.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use autokey_tests::db;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use uuid::Uuid;

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn hex64() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

struct Env {
    vars: Vec<(&'static str, String)>,
    dir: PathBuf,
}

impl Env {
    fn command(&self, name: &str) -> Command {
        let mut c = Command::new(bin(name));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    fn spawn(&self, name: &str, args: &[&str], log: &str) -> Child {
        self.command(name)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(log)).unwrap())
            .spawn()
            .unwrap()
    }

    async fn run(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut c = self.command("autokey-api");
        for (k, v) in extra {
            c.env(k, v);
        }
        c.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .unwrap()
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_reach_the_worker_the_worker_serves_metrics_and_the_seller_cli_uploads() {
    let (db_name, _pool) = db::fresh_database().await;
    let dir = autokey_tests::tools::artifacts_dir("ops-binaries");
    let (port, metrics_port) = (free_port(), free_port());
    let metrics_token = format!("metrics-{}", Uuid::new_v4().simple());
    let env = Env {
        vars: vec![
            ("DATABASE_URL", db::database_url(&db_name)),
            ("ENCRYPTION_KEY", hex64()),
            ("FINGERPRINT_KEY", hex64()),
            ("METRICS_TOKEN", metrics_token.clone()),
            ("SIMULATED_PAYMENTS", "true".into()),
            ("PORT", port.to_string()),
            ("BIND_ADDR", "127.0.0.1".into()),
            ("METRICS_PORT", metrics_port.to_string()),
            ("LOG_FORMAT", "json".into()),
            ("RUST_LOG", "info".into()),
        ],
        dir: dir.clone(),
    };
    let api = env.spawn("autokey-api", &["serve"], "api.log");
    let worker = env.spawn("autokey-worker", &[], "worker.log");
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
            "api never ready: {}",
            read(&dir.join("api.log"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = |role: &'static str| {
        let env = &env;
        async move {
            let out = env.run(&["token", "create", "--role", role], &[]).await;
            assert!(out.status.success(), "{}", text(&out.stderr));
            text(&out.stdout).trim().to_owned()
        }
    };
    let (seller, storefront) = (token("seller").await, token("storefront").await);

    // The seller CLI: a pool, 100,000 lines (one a duplicate), uploaded and listed.
    let pool: Value = http
        .post(format!("{base}/key-pools"))
        .bearer_auth(&seller)
        .json(&json!({"name": "CLI pool"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pool_id = pool["id"].as_str().unwrap().to_owned();
    let file = dir.join("keys.csv");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let run = Uuid::new_v4().simple().to_string();
        for i in 0..99_999 {
            writeln!(w, "CLI-{run}-{i:06}").unwrap();
        }
        writeln!(w, "CLI-{run}-000007").unwrap();
    }
    let cli_env = [
        ("AUTOKEY_URL", base.as_str()),
        ("AUTOKEY_TOKEN", seller.as_str()),
    ];
    let file_arg = file.to_str().unwrap();
    let started = Instant::now();
    let out = env
        .run(&["keys", "upload", "--pool", &pool_id, file_arg], &cli_env)
        .await;
    let took = started.elapsed();
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}{}", text(&out.stderr));
    assert!(report.contains("100000 lines"), "{report}");
    assert!(report.contains("added: 99999"), "{report}");
    assert!(report.contains("duplicates: 1"), "{report}");
    assert!(report.contains("line 100000: duplicate"), "{report}");
    assert!(report.contains("invalid: 0"), "{report}");
    assert!(report.contains("99999 available"), "{report}");
    // Not a terminal: no progress bar drawn.
    assert!(
        !text(&out.stderr).contains("lines"),
        "{}",
        text(&out.stderr)
    );
    eprintln!("100,000 lines uploaded by the CLI in {took:?}");
    let counts: Value = http
        .get(format!("{base}/key-pools/{pool_id}"))
        .bearer_auth(&seller)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counts["availableKeys"], 99_999, "{counts}");

    let out = env.run(&["pools"], &cli_env).await;
    let table = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("AVAILABLE"),
        "{table}"
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with(&pool_id) && row.contains("CLI pool"),
        "{table}"
    );
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert!(cells.contains(&"99999"), "{table}");
    assert_eq!(lines.next(), None, "{table}");

    // Clear errors, non-zero exits.
    let out = env
        .run(
            &["pools"],
            &[("AUTOKEY_URL", &base), ("AUTOKEY_TOKEN", "ak_not-a-token")],
        )
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("refused the token"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stderr).contains("ak_not-a-token"));
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let out = env
        .run(
            &["keys", "upload", "--pool", &pool_id, file_arg],
            &[("AUTOKEY_URL", &nowhere), ("AUTOKEY_TOKEN", &seller)],
        )
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot reach the api"),
        "{}",
        text(&out.stderr)
    );
    let out = env
        .run(
            &["keys", "upload", "--pool", &pool_id, "no-such-file.txt"],
            &cli_env,
        )
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot read no-such-file.txt"),
        "{}",
        text(&out.stderr)
    );
    let out = env.run(&["pools"], &[("AUTOKEY_URL", base.as_str())]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("AUTOKEY_TOKEN"),
        "{}",
        text(&out.stderr)
    );

    // An order paid by a request with an id: the id comes back and is on the worker's
    // line for the order's job.
    let draft: Value = http
        .post(format!("{base}/offers/draft"))
        .bearer_auth(&seller)
        .json(&json!({"title": "Ops", "priceCents": 500, "currency": "EUR", "deliveryType": "AUTO_KEY", "keyPoolId": pool_id}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let published = http
        .post(format!("{base}/offers/publish"))
        .bearer_auth(&seller)
        .json(&json!({"offerId": draft["id"]}))
        .send()
        .await
        .unwrap();
    assert!(published.status().is_success());
    let order: Value = http
        .post(format!("{base}/orders"))
        .bearer_auth(&storefront)
        .json(&json!({"offerId": draft["id"], "buyerId": Uuid::new_v4()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let order_id = order["id"].as_str().unwrap().to_owned();
    let request_id = format!("ops-test-{}", Uuid::new_v4().simple());
    let paid = http
        .post(format!("{base}/orders/{order_id}/pay"))
        .bearer_auth(&storefront)
        .header("x-request-id", &request_id)
        .send()
        .await
        .unwrap();
    assert!(paid.status().is_success());
    assert_eq!(paid.headers()["x-request-id"], request_id.as_str());
    // Without one, or with one too long to take, a fresh id is made.
    for given in [None, Some("x".repeat(200))] {
        let mut req = http.get(format!("{base}/healthz"));
        if let Some(g) = &given {
            req = req.header("x-request-id", g);
        }
        let resp = req.send().await.unwrap();
        let made = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(!made.is_empty() && made.len() <= 64 && Some(&made) != given.as_ref());
    }

    let worker_log = dir.join("worker.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        let log = read(&worker_log);
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("order fulfilled") && l.contains(&order_id))
        {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no line for the order's job:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let parsed: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(parsed["fields"]["message"], "order fulfilled", "{line}");
    assert_eq!(parsed["span"]["request_id"], request_id.as_str(), "{line}");
    // The api's own line for the payment carries it too, and every line is JSON.
    let api_log = read(&dir.join("api.log"));
    assert!(
        api_log
            .lines()
            .any(|l| l.contains("order paid") && l.contains(&request_id) && l.contains(&order_id)),
        "{api_log}"
    );
    for l in api_log.lines().chain(read(&worker_log).lines()) {
        serde_json::from_str::<Value>(l).unwrap_or_else(|_| panic!("not JSON: {l}"));
    }

    // The worker's own metrics, behind the metrics token.
    let worker_metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    assert_eq!(
        http.get(&worker_metrics).send().await.unwrap().status(),
        401
    );
    let scraped = http
        .get(&worker_metrics)
        .bearer_auth(&metrics_token)
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    let body = scraped.text().await.unwrap();
    assert!(body.contains("autokey_orders_fulfilled_total 1"), "{body}");
    assert!(
        body.contains("autokey_queue_depth{queue=\"autokey::fulfill_order\"}"),
        "{body}"
    );
    assert!(
        body.contains("autokey_job_attempts_total{queue=\"autokey::fulfill_order\"}"),
        "{body}"
    );

    terminate(worker).await;
    terminate(api).await;
}
