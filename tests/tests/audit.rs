//! The dependency audit (`scripts/audit.sh`) fails when it should: on an advisory that applies
//! to Cargo.lock, and when no advisory database can be found; and it passes the committed
//! policy (deny.toml, .cargo/audit.toml) with a database that has nothing against us. Each
//! run is given its own advisory database (`AUTOKEY_ADVISORY_DB`), so these tests need no
//! network and do not depend on today's advisories.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use autokey_tests::tools::workspace_root;

/// A fresh directory under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("autokey-audit-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run {
    ok: bool,
    output: String,
}

fn audit_with(database: &Path) -> Run {
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/audit.sh"))
        .env("AUTOKEY_ADVISORY_DB", database)
        .current_dir(workspace_root())
        .output()
        .expect("run scripts/audit.sh");
    Run {
        ok: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// An advisory database with no advisories at all, or one against `hex` (a dependency of
/// the core), affecting every version below 99.
fn database(with_advisory_against_hex: bool) -> TempDir {
    let dir = TempDir::new();
    let crate_dir = dir.path().join("crates/hex");
    std::fs::create_dir_all(&crate_dir).expect("crates dir");
    if with_advisory_against_hex {
        std::fs::write(
            crate_dir.join("RUSTSEC-2099-0001.md"),
            r#"```toml
[advisory]
id = "RUSTSEC-2099-0001"
package = "hex"
date = "2099-01-01"
url = "https://example.invalid/"
categories = ["memory-corruption"]

[versions]
patched = [">= 99.0.0"]
```

# A made-up vulnerability

Written by autokey's audit test.
"#,
        )
        .expect("advisory");
    }
    dir
}

#[test]
fn the_committed_policy_passes_with_nothing_advised_against_us() {
    let db = database(false);
    let run = audit_with(db.path());
    assert!(run.ok, "audit.sh failed:\n{}", run.output);
    assert!(
        run.output.contains("licences, bans and sources"),
        "cargo deny did not run:\n{}",
        run.output
    );
}

#[test]
fn a_vulnerable_crate_in_the_lock_file_fails_the_audit() {
    let db = database(true);
    let run = audit_with(db.path());
    assert!(
        !run.ok,
        "audit.sh passed a vulnerable crate:\n{}",
        run.output
    );
    assert!(
        run.output.contains("RUSTSEC-2099-0001"),
        "the advisory is not named:\n{}",
        run.output
    );
}

#[test]
fn no_advisory_database_fails_the_audit_instead_of_skipping_it() {
    let missing = TempDir::new();
    let run = audit_with(&missing.path().join("nothing-here"));
    assert!(
        !run.ok,
        "audit.sh passed without a database:\n{}",
        run.output
    );
    assert!(run.output.contains("AUDIT FAILED"), "{}", run.output);
}
