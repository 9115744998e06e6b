//! The seller console (`GET /seller`) in a real browser: Debian's Chromium, driven by
//! Playwright from `tests/browser/console_flow.py`, against an API and a worker spawned here.
//! `./scripts/test.sh` installs both (`scripts/browser-deps.sh`); without them this test fails
//! and says so, it never passes silently.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use autokey_tests::spawn_app;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `target/test-artifacts` (git-ignored), found from this test binary's own path
/// (`target/debug/deps/…`), so a custom target directory works too.
fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("test-artifacts")
}

fn from_env_or(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

#[tokio::test]
async fn the_seller_console_works_in_a_real_browser() {
    let root = workspace_root();
    let python = from_env_or("AUTOKEY_BROWSER_PYTHON", root.join(".venv/bin/python"));
    let chromium = from_env_or("AUTOKEY_CHROMIUM", PathBuf::from("/usr/bin/chromium"));
    for (what, path) in [
        ("the Python venv with Playwright", &python),
        ("Chromium", &chromium),
    ] {
        assert!(
            path.exists(),
            "{what} is missing ({}): run ./scripts/test.sh, or ./scripts/browser-deps.sh \
             before cargo test",
            path.display()
        );
    }

    let app = spawn_app().await;
    let worker = app.start_worker();
    let (seller, _) = app.seller().await;
    let storefront = app.storefront().await;
    let artifacts = artifacts_dir();

    let started = Instant::now();
    let child = tokio::process::Command::new(&python)
        .arg(root.join("tests/browser/console_flow.py"))
        .arg("--base")
        .arg(&app.base)
        .arg("--seller-token")
        .arg(&seller)
        .arg("--storefront-token")
        .arg(&storefront)
        .arg("--chromium")
        .arg(&chromium)
        .arg("--artifacts")
        .arg(&artifacts)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let output = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("the browser test took more than 180 s")
        .expect("the browser test's output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed ({}) after {:.1?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n\
         (screenshots, if any, in {})",
        output.status,
        started.elapsed(),
        artifacts.display()
    );
    println!("{stdout}browser test: {:.1?}", started.elapsed());
    for name in ["console", "console-out-of-stock"] {
        for width in [1280, 390] {
            let shot = artifacts.join(format!("{name}-{width}.png"));
            assert!(shot.exists(), "missing screenshot {}", shot.display());
        }
    }
    worker.stop().await.expect("worker stops cleanly");
}
