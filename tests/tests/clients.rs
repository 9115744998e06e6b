//! Clients generated from /api/openapi.json work, as a storefront developer would make them:
//! a Python client by openapi-python-client (the venv) and a TypeScript one by
//! openapi-typescript + openapi-fetch (tests/clients/node_modules, type-checked by tsc in
//! strict mode). Each runs the seed's flow (tests/clients/flow.py, flow.ts) against a live
//! api and worker. `./scripts/test.sh` installs the tools; without them these tests fail.

use std::{path::Path, time::Duration};

use autokey_tests::{
    spawn_app,
    tools::{self, run},
};
use tokio::process::Command;

const LIMIT: Duration = Duration::from_secs(180);

async fn tokens(app: &autokey_tests::TestApp) -> (String, String) {
    (app.seller().await.0, app.storefront().await)
}

fn flow_env<'a>(
    command: &'a mut Command,
    app: &autokey_tests::TestApp,
    seller: &str,
    storefront: &str,
) -> &'a mut Command {
    command
        .env("AUTOKEY_BASE", &app.base)
        .env("AUTOKEY_SELLER_TOKEN", seller)
        .env("AUTOKEY_STOREFRONT_TOKEN", storefront)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_runs_the_flow() {
    let python = tools::venv_bin("python");
    let generator = tools::venv_bin("openapi-python-client");
    let app = spawn_app().await;
    let worker = app.start_worker();
    let dir = tools::artifacts_dir("clients-python");
    let (_, spec) = tools::served_spec(&app, &dir).await;

    let out = run(
        "openapi-python-client generate",
        Command::new(generator)
            .args([
                "generate",
                "--meta",
                "none",
                "--output-path",
                "autokey_client",
                "--path",
            ])
            .arg(&spec)
            .current_dir(&dir)
            .env("PATH", tools::path_with_venv()),
        LIMIT,
    )
    .await;
    // The one thing it cannot generate is the text/plain (streamed) upload: the JSON
    // upload of the same operation is generated.
    let warnings: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("WARNING"))
        .filter(|l| !l.contains("POST /key-pools/{poolId}/keys/upload"))
        .collect();
    assert!(
        warnings.is_empty(),
        "generator warnings: {warnings:?}\n{out}"
    );
    assert!(
        dir.join("autokey_client/api/orders/create_order.py")
            .exists()
    );

    let (seller, storefront) = tokens(&app).await;
    let flow = tools::workspace_root().join("tests/clients/flow.py");
    let out = run(
        "the Python client's flow",
        flow_env(Command::new(python).arg(flow), &app, &seller, &storefront)
            .env("PYTHONPATH", &dir),
        LIMIT,
    )
    .await;
    println!("{out}");
    worker.stop().await.expect("worker stops");
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_typescript_client_runs_the_flow() {
    let node_modules = tools::node_modules();
    let bin = node_modules.join(".bin");
    let app = spawn_app().await;
    let worker = app.start_worker();
    let dir = tools::artifacts_dir("clients-typescript");
    let (_, spec) = tools::served_spec(&app, &dir).await;

    let sources = tools::workspace_root().join("tests/clients");
    for file in ["flow.ts", "tsconfig.json"] {
        copy(&sources.join(file), &dir.join(file));
    }
    std::fs::write(dir.join("package.json"), r#"{"type": "module"}"#).unwrap();
    std::os::unix::fs::symlink(&node_modules, dir.join("node_modules")).expect("link node_modules");
    run(
        "openapi-typescript",
        Command::new(bin.join("openapi-typescript"))
            .arg(&spec)
            .args(["--output", "schema.d.ts"])
            .current_dir(&dir),
        LIMIT,
    )
    .await;
    run(
        "tsc (strict type check of the flow against the generated types)",
        Command::new(bin.join("tsc"))
            .args(["-p", "tsconfig.json"])
            .current_dir(&dir),
        LIMIT,
    )
    .await;

    let (seller, storefront) = tokens(&app).await;
    let out = run(
        "the TypeScript client's flow",
        flow_env(
            Command::new("node").arg("dist/flow.js").current_dir(&dir),
            &app,
            &seller,
            &storefront,
        ),
        LIMIT,
    )
    .await;
    println!("{out}");
    worker.stop().await.expect("worker stops");
}
