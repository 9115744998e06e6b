//! `autokey-api keys export|import`: encrypted key backups kept apart from the database.
//!
//! An export is an age file (https://age-encryption.org) encrypted to the operator's
//! recipient, holding JSON lines: a header, then one line per key with its pool, status,
//! ids and plaintext. Keys are opened and encrypted in memory page by page, so memory
//! stays bounded and no plaintext ever reaches a disk. An import decrypts such a file with
//! the matching identity and uploads the AVAILABLE keys into a pool exactly as an upload
//! does (validated, deduplicated against every stored key, audit-logged); keys that were
//! sold, reserved or invalid are counted and skipped, so a restore never sells a key twice.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, Write},
    path::PathBuf,
    sync::Arc,
};

use autokey_shared::{
    config,
    model::{KeyStatus, Role},
    store::{
        audit::{self, Actor},
        keys::{self, SealedKey},
        pools,
    },
};
use clap::Args;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ingest::Ingest;

/// Keys read, opened and written per page.
const PAGE: i64 = 1000;
const FORMAT: &str = "autokey-keys/1";

/// The operator at the command line, for the audit trail.
const OPERATOR: Actor = Actor {
    role: Role::Admin,
    subject: None,
    token_id: None,
};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).multiple(false)))]
pub struct ExportArgs {
    /// Export the keys of this pool.
    #[arg(long, group = "scope")]
    pool: Option<Uuid>,
    /// Export the keys of every pool.
    #[arg(long, group = "scope")]
    all: bool,
    /// The age public key (age1...) the backup is encrypted to.
    #[arg(long)]
    recipient: String,
    /// Where to write the encrypted backup (default: standard output).
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(Args)]
pub struct ImportArgs {
    /// An age file written by `keys export`.
    file: PathBuf,
    /// The age identity file (AGE-SECRET-KEY-1...) that decrypts it.
    #[arg(long)]
    identity: PathBuf,
    /// The pool the AVAILABLE keys are uploaded into.
    #[arg(long)]
    pool: Uuid,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    format: String,
    exported_at: chrono::DateTime<chrono::Utc>,
    pool_id: Option<Uuid>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Line {
    id: Uuid,
    pool_id: Uuid,
    status: KeyStatus,
    created_at: chrono::DateTime<chrono::Utc>,
    key: String,
}

pub async fn export(args: ExportArgs) -> Result<(), String> {
    let recipient: age::x25519::Recipient = args
        .recipient
        .trim()
        .parse()
        .map_err(|e| format!("--recipient is not an age public key (age1...): {e}"))?;
    let vault = config::vault_from_env().map_err(|e| e.to_string())?;
    let pool = super::connect(2).await?;
    let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
    let scope = if args.all { None } else { args.pool };
    if let Some(id) = scope
        && pools::find(&mut conn, id)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
    {
        return Err(format!("no pool with id {id}"));
    }
    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        ),
        None => Box::new(io::stdout().lock()),
    };
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            .map_err(|e| e.to_string())?;
    let mut writer = BufWriter::new(encryptor.wrap_output(out).map_err(|e| e.to_string())?);
    let write = |w: &mut dyn Write, value: &dyn erased::Json| -> Result<(), String> {
        w.write_all(value.json().as_bytes())
            .and_then(|()| w.write_all(b"\n"))
            .map_err(|e| format!("cannot write the backup: {e}"))
    };
    let header = Header {
        format: FORMAT.into(),
        exported_at: chrono::Utc::now(),
        pool_id: scope,
    };
    write(&mut writer, &header)?;
    let (mut after, mut count) = (Uuid::nil(), 0u64);
    loop {
        let rows = keys::export_page(&mut conn, scope, after, PAGE)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        for row in rows {
            let sealed = SealedKey::from_parts(
                row.id,
                row.pool_id,
                row.ciphertext,
                row.nonce,
                row.enc_key_id,
            )
            .map_err(|e| e.to_string())?;
            let key = vault
                .open(row.id, row.pool_id, &sealed.sealed)
                .map_err(|e| format!("key {} cannot be opened: {e}", row.id))?;
            let line = Line {
                id: row.id,
                pool_id: row.pool_id,
                status: row.status,
                created_at: row.created_at,
                key,
            };
            write(&mut writer, &line)?;
            count += 1;
        }
    }
    let inner = writer
        .into_inner()
        .map_err(|e| format!("cannot write the backup: {e}"))?;
    inner
        .finish()
        .and_then(|mut w| w.flush())
        .map_err(|e| format!("cannot finish the backup: {e}"))?;
    let detail = serde_json::json!({"via": "cli", "poolId": scope, "exported": count});
    audit::append(&mut conn, &OPERATOR, "keys.exported", None, detail)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "exported {count} keys (encrypted to {})",
        args.recipient.trim()
    );
    Ok(())
}

pub async fn import(args: ImportArgs) -> Result<(), String> {
    let identities = age::IdentityFile::from_file(args.identity.display().to_string())
        .map_err(|e| format!("cannot read --identity {}: {e}", args.identity.display()))?
        .into_identities()
        .map_err(|e| format!("--identity holds no usable age identity: {e}"))?;
    let file =
        File::open(&args.file).map_err(|e| format!("cannot open {}: {e}", args.file.display()))?;
    let decryptor = age::Decryptor::new_buffered(BufReader::new(file))
        .map_err(|e| format!("{} is not an age file: {e}", args.file.display()))?;
    let reader = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| format!("cannot decrypt {}: {e}", args.file.display()))?;
    let vault = Arc::new(config::vault_from_env().map_err(|e| e.to_string())?);
    let db = super::connect(6).await?;
    let mut conn = db.acquire().await.map_err(|e| e.to_string())?;
    if pools::find(&mut conn, args.pool)
        .await
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Err(format!("no pool with id {}", args.pool));
    }
    let mut lines = BufReader::new(reader).lines();
    let bad = |n: u64, why: String| format!("line {n} of the backup: {why}");
    let header: Header = match lines.next() {
        Some(Ok(text)) => serde_json::from_str(&text).map_err(|e| bad(1, e.to_string()))?,
        Some(Err(e)) => return Err(bad(1, e.to_string())),
        None => return Err("the backup is empty".into()),
    };
    if header.format != FORMAT {
        return Err(format!(
            "unknown backup format {:?} (expected {FORMAT})",
            header.format
        ));
    }
    let mut ingest = Ingest::start(db.clone(), vault, args.pool, OPERATOR);
    let (mut n, mut skipped) = (1u64, 0u64);
    for text in lines {
        n += 1;
        let text = text.map_err(|e| bad(n, e.to_string()))?;
        let line: Line = serde_json::from_str(&text).map_err(|e| bad(n, e.to_string()))?;
        if line.status != KeyStatus::Available {
            skipped += 1;
            continue;
        }
        ingest.offer(n, &line.key);
        if ingest.batch_full() {
            ingest.flush().await.map_err(|e| e.to_string())?;
        }
    }
    let report = ingest.finish().await.map_err(|e| e.to_string())?;
    eprintln!(
        "imported {} keys into pool {}; {} already stored, {} invalid, {} skipped (sold, reserved or invalid when exported)",
        report.added, args.pool, report.duplicates.count, report.invalid.count, skipped
    );
    Ok(())
}

/// Serializes any line of the backup (a header or a key) to one JSON text.
mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).expect("backup lines serialize")
        }
    }
}
