//! Schemathesis (the venv's, tests/python-requirements.txt) against a live api and worker,
//! reading the spec the api serves: every check (`--checks all`), every phase (examples,
//! coverage, fuzzing, and the stateful phase that follows the spec's links from create to
//! get/pay/cancel/fulfill), once with each role's token. The bar is 0 failures and 0 errors.
//!
//! What a schema cannot say is supplied the way a real client would (see
//! tests/schemathesis/hooks.py): positive cases order the run's in-stock offer and name the
//! buyer as the token requires, drafts name the seller's own pool, and positive payment
//! webhooks are signed by the official `standardwebhooks` library. `cursor` (and the
//! events' `after`) is an opaque token the api issues: the run uses one it issued (any other string is rightly a 400,
//! which no schema can tell from a valid one).
//!
//! `AUTOKEY_SCHEMATHESIS_SEED` (default a fixed seed, so that a run can be reproduced; give
//! `random` for a new one) and `AUTOKEY_SCHEMATHESIS_EXAMPLES` (default 30) tune the run.

use std::{process::Stdio, time::Duration};

use autokey_shared::model::Role;
use autokey_tests::{WEBHOOK_SECRET, fixtures, spawn_app, tools};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::json;

const DEFAULT_SEED: &str = "20261126";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_with_any_role() {
    let cli = tools::venv_bin("schemathesis");
    let app = spawn_app().await;
    let worker = app.start_worker();
    let dir = tools::artifacts_dir("schemathesis");

    // The run's seller: its pools take the run's drafts; two, so that a cursor exists.
    let (seller, _) = app.seller().await;
    let pool = app
        .post("/key-pools", &seller, json!({"name": "schemathesis"}))
        .await;
    let pool_id = pool.body["id"].as_str().expect("pool").to_owned();
    app.post("/key-pools", &seller, json!({"name": "second"}))
        .await;
    // A few keys for invalidateKey to find (the pools the run creates stay empty).
    let keys: Vec<String> = (0..5)
        .map(|i| format!("ST-SEED-KEY-{i}-{}", uuid::Uuid::new_v4()))
        .collect();
    let upload = format!("/key-pools/{pool_id}/keys/upload");
    app.post(&upload, &seller, json!({"keys": keys})).await;
    let listed = app
        .get(&format!("/key-pools/{pool_id}/keys"), &seller)
        .await;
    let key_ids: Vec<String> = listed.body["items"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| format!("\"{}\"", k["id"].as_str().unwrap()))
        .collect();
    let cursor = app.get("/key-pools?limit=1", &seller).await.body["nextCursor"]
        .as_str()
        .expect("a cursor")
        .to_owned();
    // Another seller's offer with plenty of keys, for the orders of buyers and storefronts
    // (the seller run may deactivate any offer of its own seller).
    let shop = fixtures::shop(&app, 20_000).await;
    let (buyer, buyer_id) = app.buyer().await;
    let roles = [
        ("storefront", app.storefront().await),
        ("buyer", buyer),
        ("seller", seller.clone()),
        ("admin", app.token(Role::Admin, None).await.0),
    ];
    // An events cursor (`after`) the api issued, as for `cursor`.
    let mut after = None;
    for _ in 0..100 {
        after = app.get("/events?limit=1", &seller).await.body["nextCursor"]
            .as_str()
            .map(str::to_owned);
        if after.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = after.expect("an events cursor");
    let config = dir.join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[dictionaries.cursors]\nvalues = [\"{cursor}\"]\n\
             [dictionaries.afters]\nvalues = [\"{after}\"]\n\
             [dictionaries.pools]\nvalues = [\"{pool_id}\"]\n\
             [dictionaries.keys]\nvalues = [{}]\n\n\
             [parameters]\n\"query.cursor\" = {{ dictionary = \"cursors\" }}\n\
             \"query.after\" = {{ dictionary = \"afters\" }}\n\n\
             [[operations]]\ninclude-operation-id = \"invalidateKey\"\n\
             parameters = {{ \"path.poolId\" = {{ dictionary = \"pools\", probability = 0.7 }}, \
             \"path.keyId\" = {{ dictionary = \"keys\", probability = 0.7 }} }}\n",
            key_ids.join(", ")
        ),
    )
    .unwrap();
    let seed = std::env::var("AUTOKEY_SCHEMATHESIS_SEED").unwrap_or(DEFAULT_SEED.into());
    let examples = std::env::var("AUTOKEY_SCHEMATHESIS_EXAMPLES").unwrap_or("30".into());
    let secret = format!("whsec_{}", STANDARD.encode(WEBHOOK_SECRET));

    let mut failed = Vec::new();
    for (role, token) in &roles {
        let started = std::time::Instant::now();
        let report = dir.join(format!("{role}.txt"));
        let mut command = tokio::process::Command::new(&cli);
        command
            .arg("--config-file")
            .arg(&config)
            .arg("run")
            .arg(format!("{}/api/openapi.json", app.base))
            .args(["--checks", "all", "--max-examples", &examples])
            .args([
                "--workers",
                "1",
                "--generation-database",
                "none",
                "--no-color",
            ])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .current_dir(&dir) // it keeps a cache in .schemathesis/ there
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .env(
                "PYTHONPATH",
                tools::workspace_root().join("tests/schemathesis"),
            )
            .env("AUTOKEY_ROLE", role)
            .env("AUTOKEY_BUYER_ID", buyer_id.to_string())
            .env("AUTOKEY_OFFER_ID", shop.offer_id.to_string())
            .env("AUTOKEY_POOL_ID", &pool_id)
            .env("AUTOKEY_WEBHOOK_SECRET", &secret)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if seed != "random" {
            command.args(["--seed", &seed]);
        }
        let output = tokio::time::timeout(Duration::from_secs(600), command.output())
            .await
            .unwrap_or_else(|_| panic!("schemathesis ({role}) ran for more than 10 minutes"))
            .expect("schemathesis runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::write(&report, &text).unwrap();
        let summary = text
            .lines()
            .last()
            .unwrap_or("")
            .trim_matches(['=', ' '])
            .to_owned();
        println!(
            "schemathesis as {role}: {summary} ({:.0?})",
            started.elapsed()
        );
        if !output.status.success() {
            failed.push(format!("--- {role} ({})\n{text}", report.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "schemathesis failed:\n{}",
        failed.join("\n")
    );

    // The signed positive webhooks got through the signature check (a wrong signature would
    // have been a 401, which the checks accept): the hooks really sign.
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(recorded > 0, "no signed webhook was accepted");
    println!("schemathesis: {recorded} signed payment webhooks accepted");
    worker.stop().await.expect("worker stops");
}
