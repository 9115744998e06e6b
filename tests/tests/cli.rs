//! The operator's view (OPERATIONS.md): the two binaries, their commands and start-up checks.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use autokey_tests::db;

fn bin(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (./scripts/test.sh does)",
        path.display()
    );
    path
}

/// A command run in an empty directory (no .env) with a clean environment.
fn cmd(name: &str, envs: &[(&str, &str)]) -> Command {
    let dir = std::env::temp_dir().join(format!("autokey-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = Command::new(bin(name));
    c.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}

fn secrets() -> Vec<(String, String)> {
    let out = cmd("autokey-api", &[]).arg("keygen").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn keygen_prints_fresh_secrets_in_env_format() {
    let a = secrets();
    let b = secrets();
    let names: Vec<&str> = a.iter().map(|(k, _)| k.as_str()).collect();
    for n in [
        "ENCRYPTION_KEY",
        "ENCRYPTION_KEY_ID",
        "FINGERPRINT_KEY",
        "PAYMENT_WEBHOOK_SECRET",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
    let enc = |s: &[(String, String)]| {
        s.iter()
            .find(|(k, _)| k == "ENCRYPTION_KEY")
            .unwrap()
            .1
            .clone()
    };
    assert_eq!(enc(&a).len(), 64);
    assert_ne!(enc(&a), enc(&b));
}

#[test]
fn missing_or_malformed_settings_stop_start_up_with_one_line_naming_them() {
    let out = cmd("autokey-api", &[]).arg("serve").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("DATABASE_URL"), "{err}");

    let secret_value = "abcdef-not-hex-secret";
    let out = cmd(
        "autokey-api",
        &[
            ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
            ("ENCRYPTION_KEY", secret_value),
            ("FINGERPRINT_KEY", &"0".repeat(64)),
        ],
    )
    .arg("serve")
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("ENCRYPTION_KEY"), "{err}");
    assert!(!err.contains(secret_value), "a secret leaked: {err}");

    let out = cmd("autokey-worker", &[]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("DATABASE_URL")
    );
}

#[test]
fn help_describes_the_commands() {
    let out = cmd("autokey-api", &[]).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for word in [
        "serve",
        "migrate",
        "token",
        "keygen",
        "DATABASE_URL",
        "ENCRYPTION_KEY",
        "SIMULATED_PAYMENTS",
    ] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
    let out = cmd("autokey-worker", &[]).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for word in ["--concurrency", "SIGTERM", "retry-dead"] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
}

#[tokio::test]
async fn migrate_twice_then_tokens_then_a_worker_that_stops_on_sigterm() {
    let url = db::empty_database().await;
    let env = [("DATABASE_URL", url.as_str())];
    for _ in 0..2 {
        let out = cmd("autokey-api", &env).arg("migrate").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let out = cmd("autokey-api", &env)
        .args(["token", "create", "--role", "seller"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.lines().count(), 1);
    assert!(token.starts_with("ak_"));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("seller id:"), "{err}");
    let token_id = err
        .lines()
        .find_map(|l| l.strip_prefix("token id: "))
        .unwrap()
        .trim()
        .to_owned();
    let out = cmd("autokey-api", &env)
        .args(["token", "revoke", &token_id])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = cmd("autokey-api", &env)
        .args(["token", "revoke", &token_id])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a revoked token cannot be revoked again"
    );
    let out = cmd("autokey-api", &env)
        .args(["token", "create", "--role", "wizard"])
        .output()
        .unwrap();
    assert!(!out.status.success());

    let mut worker = cmd("autokey-worker", &env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.workers")
            .fetch_one(&pool)
            .await
            .unwrap();
        if n >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "worker never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM apalis.workers")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        ids.iter()
            .all(|id| id.len() > "autokey-worker-fulfill-".len() + 20),
        "unique names: {ids:?}"
    );
    Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = worker.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "worker ignored SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_by_the_cli_is_refused_on_the_next_request_by_every_api_process() {
    use autokey_shared::{model::Role, store::tokens};
    use reqwest::{Method, StatusCode};
    let app = autokey_tests::spawn_app().await;
    let other = app.another_api().await;
    app.until_token_cache_is_live().await;
    other.until_token_cache_is_live().await;
    let mut conn = app.pool.acquire().await.unwrap();
    let revoked = tokens::create_token(&mut conn, Role::Seller, None)
        .await
        .unwrap();
    let stale = tokens::create_token(&mut conn, Role::Seller, None)
        .await
        .unwrap();
    for api in [&app, &other] {
        for t in [&revoked.token, &stale.token] {
            let r = api.call(Method::GET, "/me", Some(t), None).await;
            assert_eq!(r.status, StatusCode::OK);
        }
    }
    // Authentications are served from memory: a row changed behind the api's back (no
    // announcement) is not seen...
    sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE id = $1")
        .bind(stale.id)
        .execute(&app.pool)
        .await
        .unwrap();
    for api in [&app, &other] {
        let r = api.call(Method::GET, "/me", Some(&stale.token), None).await;
        assert_eq!(r.status, StatusCode::OK, "the cache was not used");
    }
    // ...while the operator's revocation reaches every process before its next request.
    // The api processes run while the command does (as separate processes would). The
    // announcement reaches them asynchronously (within milliseconds; longer on a loaded CI
    // box), so wait until each has heard it before its next request.
    let heard = [app.tokens.invalidations(), other.tokens.invalidations()];
    let url = db::database_url(&app.db_name);
    let out = tokio::process::Command::from(cmd("autokey-api", &[("DATABASE_URL", url.as_str())]))
        .args(["token", "revoke", &revoked.id.to_string()])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (api, before) in [&app, &other].into_iter().zip(heard) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while api.tokens.invalidations() == before {
            assert!(
                Instant::now() < deadline,
                "an api process never heard the revocation"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let r = api
            .call(Method::GET, "/me", Some(&revoked.token), None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.code(), "unauthorized");
    }
}

/// Runs `autokey-api serve` with `envs` and returns its stderr (it must fail at start).
fn serve_fails(envs: &[(&str, &str)]) -> String {
    let out = cmd("autokey-api", envs).arg("serve").output().unwrap();
    assert!(!out.status.success(), "serve started with {envs:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    // sqlx warns of any statement over a second; on a loaded machine the start-up checks
    // can be one. Such a warning is not the refusal, which must be one line.
    let refusal: Vec<&str> = err
        .trim()
        .lines()
        .filter(|line| !line.contains("slow statement"))
        .collect();
    assert_eq!(refusal.len(), 1, "{err}");
    err
}

#[test]
fn malformed_settings_of_serve_name_their_variable_in_one_line() {
    let secrets = secrets();
    let get = |k: &str| secrets.iter().find(|(n, _)| n == k).unwrap().1.clone();
    let (enc, fp) = (get("ENCRYPTION_KEY"), get("FINGERPRINT_KEY"));
    let base = [
        ("DATABASE_URL", "postgres://x@127.0.0.1:1/x"),
        ("ENCRYPTION_KEY", enc.as_str()),
        ("FINGERPRINT_KEY", fp.as_str()),
    ];
    for (name, value) in [
        ("PORT", "eighty"),
        ("RATE_LIMIT_PER_SECOND", "-3"),
        ("SIMULATED_PAYMENTS", "perhaps"),
        ("REQUEST_TIMEOUT_SECS", "soon"),
    ] {
        let mut envs = base.to_vec();
        envs.push((name, value));
        let err = serve_fails(&envs);
        assert!(err.contains(name) && err.contains("malformed"), "{err}");
    }
    // A retired key under the current key's id would shadow one of the two.
    let retired = format!("k1:{fp}");
    let mut envs = base.to_vec();
    envs.push(("ENCRYPTION_KEYS_RETIRED", retired.as_str()));
    let err = serve_fails(&envs);
    assert!(err.contains("ENCRYPTION_KEYS_RETIRED"), "{err}");
    assert!(!err.contains(&fp), "a secret leaked: {err}");
}

#[tokio::test]
async fn serve_refuses_a_configuration_that_cannot_decrypt_every_stored_key() {
    use autokey_shared::{
        store::{self, keys::NewKey},
        vault::{KeyMaterial, Vault},
    };
    let app = autokey_tests::spawn_app().await;
    let shop = autokey_tests::fixtures::shop(&app, 1).await;
    // One key sealed under a key id the configuration below does not have.
    let old = Vault::new(
        "old".into(),
        KeyMaterial::new([3; 32]),
        Default::default(),
        KeyMaterial::new([4; 32]),
    );
    let id = uuid::Uuid::now_v7();
    let key = NewKey {
        id,
        fingerprint: old.fingerprint("OLD-KEY-1"),
        sealed: old.seal(id, shop.pool_id, "OLD-KEY-1"),
    };
    let mut conn = app.pool.acquire().await.unwrap();
    store::keys::insert(&mut conn, shop.pool_id, None, &[key])
        .await
        .unwrap();
    let url = db::database_url(&app.db_name);
    let hex = "ab".repeat(32);
    let err = serve_fails(&[
        ("DATABASE_URL", url.as_str()),
        ("ENCRYPTION_KEY", hex.as_str()),
        ("ENCRYPTION_KEY_ID", "k2"),
        ("FINGERPRINT_KEY", hex.as_str()),
        ("PORT", "0"),
    ]);
    assert!(
        err.contains("ENCRYPTION_KEYS_RETIRED") && err.contains("old"),
        "{err}"
    );
}

#[tokio::test]
async fn keys_reencrypt_moves_every_key_to_the_current_encryption_key() {
    use autokey_shared::{
        rotation,
        store::{self, keys::NewKey},
        vault::{KeyMaterial, Vault},
    };
    let app = autokey_tests::spawn_app().await;
    let shop = autokey_tests::fixtures::shop(&app, 0).await;
    let (old_hex, new_hex, fp_hex) = ("0a".repeat(32), "0b".repeat(32), "0c".repeat(32));
    let old = Vault::new(
        "old".into(),
        KeyMaterial::new([0x0a; 32]),
        Default::default(),
        KeyMaterial::new([0x0c; 32]),
    );
    let keys: Vec<NewKey> = (0..2500)
        .map(|i| {
            let id = uuid::Uuid::now_v7();
            let plain = format!("CLI-ROTATE-{i}");
            NewKey {
                id,
                fingerprint: old.fingerprint(&plain),
                sealed: old.seal(id, shop.pool_id, &plain),
            }
        })
        .collect();
    let mut conn = app.pool.acquire().await.unwrap();
    store::keys::insert(&mut conn, shop.pool_id, None, &keys)
        .await
        .unwrap();
    let url = db::database_url(&app.db_name);
    let retired = format!("old:{old_hex}");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("ENCRYPTION_KEY", new_hex.as_str()),
        ("ENCRYPTION_KEY_ID", "new"),
        ("ENCRYPTION_KEYS_RETIRED", retired.as_str()),
        ("FINGERPRINT_KEY", fp_hex.as_str()),
    ];
    // Without the retired key the command refuses at once, naming what is missing.
    let refused = cmd("autokey-api", &[env[0], env[1], env[2], env[4]])
        .args(["keys", "reencrypt"])
        .output()
        .unwrap();
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        why.contains("\"old\"") && why.contains("ENCRYPTION_KEYS_RETIRED"),
        "{why}"
    );
    let out = cmd("autokey-api", &env)
        .args(["keys", "reencrypt", "--batch", "700"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("re-encrypted 2500 keys"), "{err}");
    assert!(err.contains("may leave ENCRYPTION_KEYS_RETIRED"), "{err}");
    for secret in [&old_hex, &new_hex, &fp_hex] {
        assert!(!err.contains(secret.as_str()), "a secret leaked: {err}");
    }
    assert_eq!(
        rotation::progress(&mut conn, "new")
            .await
            .unwrap()
            .remaining(),
        0
    );
    let new = Vault::new(
        "new".into(),
        KeyMaterial::new([0x0b; 32]),
        Default::default(),
        KeyMaterial::new([0x0c; 32]),
    );
    let rows: Vec<(uuid::Uuid, uuid::Uuid, Vec<u8>, Vec<u8>, String)> =
        sqlx::query_as("SELECT id, pool_id, ciphertext, nonce, enc_key_id FROM keys")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let mut opened: Vec<String> = rows
        .into_iter()
        .map(|(id, pool, c, n, enc)| {
            let key = store::keys::SealedKey::from_parts(id, pool, c, n, enc).unwrap();
            new.open(id, pool, &key.sealed).unwrap()
        })
        .collect();
    opened.sort();
    let mut want: Vec<String> = (0..2500).map(|i| format!("CLI-ROTATE-{i}")).collect();
    want.sort();
    assert_eq!(opened, want);
    let trail: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'keys.reencrypted'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(trail, 1);
}

#[tokio::test]
async fn keys_export_and_import_round_trip_100k_keys_through_an_age_file() {
    use age::secrecy::ExposeSecret;
    use autokey_shared::{
        store::{self, keys::NewKey},
        vault::{KeyMaterial, Vault},
    };
    let (enc_hex, fp_hex) = ("1a".repeat(32), "1b".repeat(32));
    let vault = Vault::new(
        "k1".into(),
        KeyMaterial::new([0x1a; 32]),
        Default::default(),
        KeyMaterial::new([0x1b; 32]),
    );
    let app = autokey_tests::spawn_app().await;
    let shop = autokey_tests::fixtures::shop(&app, 0).await;
    let plain = |i: usize| format!("BACKUP-{i:06}-ZQX");
    let mut conn = app.pool.acquire().await.unwrap();
    for chunk in (0..100_000).collect::<Vec<_>>().chunks(5000) {
        let rows: Vec<NewKey> = chunk
            .iter()
            .map(|&i| {
                let id = uuid::Uuid::now_v7();
                NewKey {
                    id,
                    fingerprint: vault.fingerprint(&plain(i)),
                    sealed: vault.seal(id, shop.pool_id, &plain(i)),
                }
            })
            .collect();
        store::keys::insert(&mut conn, shop.pool_id, None, &rows)
            .await
            .unwrap();
    }
    // One sold key: exported with its status, never restored as sellable.
    sqlx::query(
        "UPDATE keys SET status = 'INVALID', invalidated_at = now() WHERE fingerprint = $1",
    )
    .bind(&vault.fingerprint(&plain(0))[..])
    .execute(&app.pool)
    .await
    .unwrap();

    let identity = age::x25519::Identity::generate();
    let dir =
        std::env::temp_dir().join(format!("autokey-backup-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (backup, id_file) = (dir.join("keys.age"), dir.join("identity.txt"));
    std::fs::write(&id_file, identity.to_string().expose_secret()).unwrap();
    let url = db::database_url(&app.db_name);
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("ENCRYPTION_KEY", enc_hex.as_str()),
        ("FINGERPRINT_KEY", fp_hex.as_str()),
    ];
    let started = Instant::now();
    let out = cmd("autokey-api", &env)
        .args([
            "keys",
            "export",
            "--pool",
            &shop.pool_id.to_string(),
            "--recipient",
        ])
        .arg(identity.to_public().to_string())
        .arg("--output")
        .arg(&backup)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("exported 100000 keys"), "{err}");
    println!("exported 100k keys in {:.1?}", started.elapsed());
    let bytes = std::fs::read(&backup).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1"));
    let needle = b"BACKUP-";
    assert!(
        !bytes.windows(needle.len()).any(|w| w == needle),
        "the backup holds plaintext"
    );
    // Neither scope nor both scopes: a usage error.
    let usage = cmd("autokey-api", &env)
        .args(["keys", "export", "--recipient"])
        .arg(identity.to_public().to_string())
        .output()
        .unwrap();
    assert!(!usage.status.success());

    // Restore into a fresh database: every AVAILABLE key comes back, sealed, sellable.
    let (other_db, other_pool) = db::fresh_database().await;
    let seller: uuid::Uuid =
        sqlx::query_scalar("INSERT INTO sellers (id) VALUES ($1) RETURNING id")
            .bind(uuid::Uuid::now_v7())
            .fetch_one(&other_pool)
            .await
            .unwrap();
    let mut other_conn = other_pool.acquire().await.unwrap();
    let target = store::pools::create(&mut other_conn, seller, "restored", 0)
        .await
        .unwrap();
    let other_url = db::database_url(&other_db);
    let import = |url: &str| {
        cmd(
            "autokey-api",
            &[
                ("DATABASE_URL", url),
                ("ENCRYPTION_KEY", enc_hex.as_str()),
                ("FINGERPRINT_KEY", fp_hex.as_str()),
            ],
        )
        .args(["keys", "import"])
        .arg(&backup)
        .arg("--identity")
        .arg(&id_file)
        .args(["--pool", &target.id.to_string()])
        .output()
        .unwrap()
    };
    let out = import(&other_url);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("imported 99999 keys"), "{err}");
    assert!(err.contains("1 skipped"), "{err}");
    let rows: Vec<(uuid::Uuid, uuid::Uuid, Vec<u8>, Vec<u8>, String, String)> =
        sqlx::query_as("SELECT id, pool_id, ciphertext, nonce, enc_key_id, status FROM keys")
            .fetch_all(&other_pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 99_999);
    let mut restored: Vec<String> = rows
        .into_iter()
        .map(|(id, pool, c, n, enc, status)| {
            assert_eq!(status, "AVAILABLE");
            let key = store::keys::SealedKey::from_parts(id, pool, c, n, enc).unwrap();
            vault.open(id, pool, &key.sealed).unwrap()
        })
        .collect();
    restored.sort();
    let want: Vec<String> = (1..100_000).map(plain).collect();
    assert_eq!(restored, want);
    // Importing again adds nothing (deduplicated like an upload).
    let again = import(&other_url);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(
        err.contains("imported 0 keys") && err.contains("99999 already stored"),
        "{err}"
    );
    // A wrong identity cannot read it.
    let stranger = dir.join("stranger.txt");
    std::fs::write(
        &stranger,
        age::x25519::Identity::generate()
            .to_string()
            .expose_secret(),
    )
    .unwrap();
    let denied = cmd("autokey-api", &env)
        .args(["keys", "import"])
        .arg(&backup)
        .arg("--identity")
        .arg(&stranger)
        .args(["--pool", &shop.pool_id.to_string()])
        .output()
        .unwrap();
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("cannot decrypt"));
    std::fs::remove_dir_all(&dir).unwrap();
}
