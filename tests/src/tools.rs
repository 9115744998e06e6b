//! The outside tools some tests drive (installed by `./scripts/test.sh`, or alone by
//! `./scripts/test-deps.sh`): the Python venv `.venv/` (schemathesis, openapi-spec-validator,
//! openapi-python-client, standardwebhooks, Playwright) and `tests/clients/node_modules/`
//! (openapi-typescript, openapi-fetch, typescript), with Node. A missing tool fails the test
//! with a message saying how to install it: never a silent pass.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::TestApp;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `target/test-artifacts/<name>` (git-ignored), emptied, found from this test binary's
/// own path (`target/debug/deps/…`) so that a custom target directory works too.
pub fn artifacts_dir(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace_root().join("target"));
    let dir = target.join("test-artifacts").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("artifacts directory");
    dir
}

fn must_exist(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} is missing ({}): run ./scripts/test.sh, or ./scripts/test-deps.sh before cargo test",
        path.display()
    );
    path
}

/// The venv (`AUTOKEY_VENV`, default `.venv/`).
pub fn venv() -> PathBuf {
    std::env::var_os("AUTOKEY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv"))
}

/// A program of the venv, e.g. `python`, `schemathesis`.
pub fn venv_bin(name: &str) -> PathBuf {
    must_exist(
        venv().join("bin").join(name),
        &format!("{name} (tests/python-requirements.txt)"),
    )
}

/// `tests/clients/node_modules/`, installed by `npm ci` from tests/clients/package-lock.json.
pub fn node_modules() -> PathBuf {
    must_exist(
        workspace_root().join("tests/clients/node_modules"),
        "tests/clients/node_modules (npm ci)",
    )
}

/// `PATH` with the venv's programs first (openapi-python-client runs ruff from it).
pub fn path_with_venv() -> String {
    let venv_bin = venv().join("bin");
    match std::env::var("PATH") {
        Ok(path) => format!("{}:{path}", venv_bin.display()),
        Err(_) => venv_bin.display().to_string(),
    }
}

/// Runs `command` to completion within `limit`; panics with its output when it fails.
/// Returns its stdout.
pub async fn run(what: &str, command: &mut tokio::process::Command, limit: Duration) -> String {
    let started = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after {limit:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}) after {:.1?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status,
        started.elapsed()
    );
    stdout
}

/// The document `app` serves at /api/openapi.json, also written to `dir/openapi.json`.
pub async fn served_spec(app: &TestApp, dir: &Path) -> (Value, PathBuf) {
    let r = app.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let file = dir.join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&r.body).unwrap()).expect("write spec");
    (r.body, file)
}
