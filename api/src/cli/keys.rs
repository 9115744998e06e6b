//! `autokey-api keys upload|reencrypt|export|import`. Upload is the seller's, over HTTP
//! (cli/seller.rs). Re-encryption moves every stored key (and webhook secret) to the current
//! encryption key, in batches, with a progress bar on a terminal.

use autokey_shared::{
    config,
    model::Role,
    rotation,
    store::audit::{self, Actor},
};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Subcommand)]
pub enum KeysAction {
    /// Stream a key file (one key per line, .txt or .csv) into a pool over the HTTP API
    /// (AUTOKEY_URL, AUTOKEY_TOKEN), with a progress bar (bytes and lines; on a terminal
    /// only), and print the upload's report.
    Upload {
        /// The pool's id.
        #[arg(long)]
        pool: uuid::Uuid,
        /// The file to upload.
        file: std::path::PathBuf,
        #[command(flatten)]
        remote: super::seller::Remote,
    },
    /// Re-seal every key stored under a retired encryption key id with ENCRYPTION_KEY
    /// (resumable: run it again after a crash; safe while the service runs). When it
    /// reports 0 left under an id, that id may leave ENCRYPTION_KEYS_RETIRED.
    Reencrypt {
        /// Keys per transaction.
        #[arg(long, default_value_t = rotation::BATCH, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        batch: i64,
    },
    /// Write an encrypted backup (age, to --recipient) of one pool's keys or of all.
    Export(super::backup::ExportArgs),
    /// Restore the AVAILABLE keys of a backup into a pool (deduplicated like an upload).
    Import(super::backup::ImportArgs),
}

pub async fn run(action: KeysAction) -> Result<(), String> {
    match action {
        KeysAction::Upload { pool, file, remote } => {
            super::seller::upload(pool, file, remote).await
        }
        KeysAction::Reencrypt { batch } => reencrypt(batch).await,
        KeysAction::Export(args) => super::backup::export(args).await,
        KeysAction::Import(args) => super::backup::import(args).await,
    }
}

async fn reencrypt(batch: i64) -> Result<(), String> {
    let vault = config::vault_from_env().map_err(|e| e.to_string())?;
    let pool = super::connect(4).await?;
    let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
    let before = rotation::progress(&mut conn, vault.current_key_id())
        .await
        .map_err(|e| e.to_string())?;
    drop(conn);
    let bar = ProgressBar::new(before.remaining().max(0) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} re-encrypting [{bar:40}] {pos}/{len} keys ({per_sec}, {eta} left)",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let (moved, _) = rotation::reencrypt_all(&pool, &vault, batch, None, |n| bar.inc(n))
        .await
        .map_err(|e| format!("re-encryption stopped (run it again to resume): {e}"))?;
    bar.finish_and_clear();
    let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
    let after = rotation::progress(&mut conn, vault.current_key_id())
        .await
        .map_err(|e| e.to_string())?;
    let operator = Actor {
        role: Role::Admin,
        subject: None,
        token_id: None,
    };
    audit::append(
        &mut conn,
        &operator,
        "keys.reencrypted",
        None,
        serde_json::json!({
            "via": "cli",
            "moved": moved,
            "currentKeyId": vault.current_key_id(),
            "remainingByKeyId": after.remaining_by_key_id,
        }),
    )
    .await
    .map_err(|e| e.to_string())?;
    eprintln!(
        "re-encrypted {moved} keys and secrets in {:.1?} to key id {}",
        started.elapsed(),
        vault.current_key_id()
    );
    for (id, left) in &after.remaining_by_key_id {
        eprintln!("key id {id}: {left} left");
    }
    if after.remaining() == 0 {
        eprintln!(
            "nothing is sealed under a retired key id any more: retired ids may leave ENCRYPTION_KEYS_RETIRED"
        );
    }
    Ok(())
}
