//! Writing uploaded keys into a pool, a batch per transaction, with the upload report.
//!
//! Deduplication is the database's: the UNIQUE fingerprint decides which of two
//! concurrent uploads of a key stores it, and a lost line is `already_exists` unless the
//! winning row carries this upload's `upload_batch_id` (then `duplicate_in_upload`). So
//! no set of everything seen is kept in memory, however long the upload.
//!
//! The request parses, validates and seals (on the blocking pool) while a writer task
//! stores earlier batches, [`IN_FLIGHT`] at a time, so the CPU and several database
//! backends work side by side. A batch starts only once the one [`IN_FLIGHT`] before it
//! has committed, and it is deduplicated in memory against the ones sent since: batches
//! in flight never share a key, so they never wait on each other's rows, and the first
//! occurrence of a repeated key is always the one stored. Memory stays bounded by a few
//! batches.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use autokey_shared::{
    jobs::{ReplenishPool, queue},
    store::{
        audit::{self, Actor},
        keys::{self, NewKey},
    },
    vault::Vault,
};
use futures::{StreamExt, stream};
use serde::Serialize;
use sqlx::PgPool;
use tokio::{sync::mpsc, task::JoinHandle};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{error::ApiError, key_input};

/// Keys written per transaction: large enough to amortize a round trip and a commit,
/// small enough to keep memory and lock time low.
pub const BATCH_SIZE: usize = 4000;

/// How many entries of each problem list a report carries; the counts are complete.
pub const REPORT_LIMIT: usize = 1000;

const DUPLICATE_IN_UPLOAD: &str = "duplicate_in_upload";
const ALREADY_EXISTS: &str = "already_exists";

/// A rejected line of an upload.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct LineIssue {
    /// 1-based position in the upload (JSON element i is line i+1; in text, the physical
    /// line, blank lines included).
    pub line: u64,
    /// For `duplicates`: `duplicate_in_upload` (an earlier line of this upload has the
    /// same key and was stored) or `already_exists` (stored before, or by a concurrent
    /// upload, in any pool of any seller; a repeat within a few thousand lines of such a
    /// line may be reported as `duplicate_in_upload` instead). For `invalid`: `empty`,
    /// `too_short` (< 5 characters), `too_long` (> 255 characters), `control_character`,
    /// `format_character` (an invisible character such as U+200B or U+202E)
    /// or `invalid_utf8`.
    pub reason: &'static str,
}

/// The first [`REPORT_LIMIT`] issues of one kind, in line order, and how many in all.
#[derive(Debug, Default)]
pub struct Issues {
    pub listed: Vec<LineIssue>,
    pub count: u64,
}

impl Issues {
    fn push(&mut self, line: u64, reason: &'static str) {
        self.count += 1;
        if self.listed.len() < REPORT_LIMIT {
            self.listed.push(LineIssue { line, reason });
        }
    }

    pub fn truncated(&self) -> bool {
        self.count > self.listed.len() as u64
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub added: u64,
    pub duplicates: Issues,
    pub invalid: Issues,
}

/// Valid keys of an upload with their line numbers, in line order.
type Batch = Vec<(u64, String)>;

/// Batches being stored at once. Measured (1M keys, 2 cores): 2 -> 75-90k keys/s,
/// 3 -> ~100k keys/s, the database's backends then keep both cores busy.
const IN_FLIGHT: usize = 3;

type Fingerprints = HashSet<[u8; 32]>;

/// The fingerprints of the last `IN_FLIGHT - 1` batches sent, oldest first.
type Recent = VecDeque<Fingerprints>;

/// A batch ready to be stored (keys in fingerprint order, with their lines), and the
/// lines it dropped as repeats of earlier ones.
struct Prepared {
    keys: Vec<NewKey>,
    lines: Vec<u64>,
    repeated: Lost,
}

/// One upload into one pool: takes lines, hands sealed batches to the writer, builds
/// the report.
pub struct Ingest {
    vault: Arc<Vault>,
    pool_id: Uuid,
    pending: Batch,
    /// The fingerprints of the batches that may still be being stored.
    recent: Recent,
    invalid: Issues,
    batches: mpsc::Sender<Prepared>,
    writer: JoinHandle<Result<Written, ApiError>>,
}

impl Ingest {
    pub fn start(db: PgPool, vault: Arc<Vault>, pool_id: Uuid, actor: Actor) -> Self {
        let (batches, rx) = mpsc::channel(1);
        let target = Target {
            db,
            pool_id,
            upload_id: Uuid::now_v7(),
            actor,
        };
        Self {
            vault,
            pool_id,
            pending: Vec::with_capacity(BATCH_SIZE),
            recent: Recent::with_capacity(IN_FLIGHT),
            invalid: Issues::default(),
            batches,
            writer: tokio::spawn(target.run(rx)),
        }
    }

    /// Takes line `line` of the upload (untrimmed), valid or not.
    pub fn offer(&mut self, line: u64, raw: &str) {
        match key_input::validate(raw) {
            Ok(key) => self.pending.push((line, key.to_owned())),
            Err(reason) => self.reject(line, reason),
        }
    }

    pub fn reject(&mut self, line: u64, reason: key_input::Invalid) {
        self.invalid.push(line, reason.as_str());
    }

    /// Whether enough keys are waiting for a batch.
    pub fn batch_full(&self) -> bool {
        self.pending.len() >= BATCH_SIZE
    }

    /// Seals the waiting keys and hands them to the writer; waits while it is busy
    /// (backpressure). Fails with the writer's error once the writer stopped on one.
    pub async fn flush(&mut self) -> Result<(), ApiError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH_SIZE));
        let (vault, pool_id) = (self.vault.clone(), self.pool_id);
        let recent = std::mem::take(&mut self.recent);
        let (prepared, recent) = tokio::task::spawn_blocking(move || {
            let (prepared, fingerprints) = prepare(&vault, pool_id, &recent, batch);
            let mut recent = recent;
            if recent.len() + 1 >= IN_FLIGHT {
                recent.pop_front();
            }
            recent.push_back(fingerprints);
            (prepared, recent)
        })
        .await
        .map_err(ApiError::internal)?;
        self.recent = recent;
        if self.batches.send(prepared).await.is_err() {
            return Err(self.writer_error().await);
        }
        Ok(())
    }

    /// Writes what is left, waits for the writer and returns the report.
    pub async fn finish(mut self) -> Result<Report, ApiError> {
        self.flush().await?;
        drop(self.batches);
        let written = self.writer.await.map_err(ApiError::internal)??;
        Ok(Report {
            added: written.added,
            duplicates: written.duplicates,
            invalid: self.invalid,
        })
    }

    async fn writer_error(&mut self) -> ApiError {
        match (&mut self.writer).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => ApiError::Internal("the key writer stopped early".into()),
            Err(e) => ApiError::internal(e),
        }
    }
}

/// What the writer did.
#[derive(Default)]
struct Written {
    added: u64,
    duplicates: Issues,
}

/// Where an upload's batches go.
struct Target {
    db: PgPool,
    pool_id: Uuid,
    upload_id: Uuid,
    /// Who uploads: each stored batch is audit-logged in its own transaction.
    actor: Actor,
}

/// What became of a batch's lines that were not stored, in line order.
type Lost = Vec<(u64, &'static str)>;

impl Target {
    /// Stores batches as they come, one transaction each, [`IN_FLIGHT`] at once, and
    /// collects their outcomes in batch order (so the report stays in line order).
    async fn run(self, batches: mpsc::Receiver<Prepared>) -> Result<Written, ApiError> {
        let this = &self;
        let outcomes = stream::unfold(batches, |mut rx| async {
            rx.recv().await.map(|batch| (batch, rx))
        })
        .map(|batch| this.store_batch(batch))
        .buffered(IN_FLIGHT);
        let mut outcomes = std::pin::pin!(outcomes);
        let mut written = Written::default();
        while let Some(outcome) = outcomes.next().await {
            let (added, lost) = outcome?;
            written.added += added;
            for (line, reason) in lost {
                written.duplicates.push(line, reason);
            }
        }
        Ok(written)
    }

    /// Stores one batch (retried if its transaction loses a race); returns how many keys
    /// were stored and why the other lines were not, in line order.
    async fn store_batch(&self, batch: Prepared) -> Result<(u64, Lost), ApiError> {
        let Prepared {
            keys,
            lines,
            mut repeated,
        } = batch;
        let mut attempt = 0;
        let (added, lost) = loop {
            attempt += 1;
            match self.store(&keys, &lines).await {
                Err(e) if attempt < 3 && autokey_shared::error::is_transient(&e) => continue,
                other => break other?,
            }
        };
        repeated.extend(lost);
        repeated.sort_unstable();
        Ok((added, repeated))
    }

    /// Inserts the rows in one transaction, together with the replenishment job when
    /// any was stored; returns how many were stored and why the others were not.
    async fn store(&self, new: &[NewKey], lines: &[u64]) -> Result<(u64, Lost), sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let stored = keys::insert(&mut tx, self.pool_id, Some(self.upload_id), new).await?;
        let lost: Vec<(&NewKey, u64)> = new
            .iter()
            .zip(lines.iter().copied())
            .filter(|(k, _)| !stored.contains(&k.fingerprint))
            .collect();
        let lost_fingerprints: Vec<&[u8]> = lost.iter().map(|(k, _)| &k.fingerprint[..]).collect();
        let ours = keys::stored_by_upload(&mut tx, self.upload_id, &lost_fingerprints).await?;
        if !stored.is_empty() {
            // Paid orders waiting for keys of this pool get served once these commit.
            let job = ReplenishPool {
                pool_id: self.pool_id,
            };
            queue::enqueue(&mut tx, &job).await?;
            audit::append(
                &mut tx,
                &self.actor,
                "keys.uploaded",
                None,
                serde_json::json!({"poolId": self.pool_id, "uploadId": self.upload_id,
                                   "added": stored.len()}),
            )
            .await?;
        }
        tx.commit().await?;
        autokey_shared::metrics::keys_uploaded(stored.len() as u64);
        let lost = lost
            .iter()
            .map(|(k, line)| {
                let reason = if ours.contains(&k.fingerprint) {
                    DUPLICATE_IN_UPLOAD
                } else {
                    ALREADY_EXISTS
                };
                (*line, reason)
            })
            .collect();
        Ok((stored.len() as u64, lost))
    }
}

/// Dedupes a batch (within itself and against the `recent` batches' fingerprints),
/// seals each key for a fresh row id, and orders the rows by fingerprint: concurrent
/// uploads then take their row locks in the same order and cannot deadlock on one
/// another. Also returns the lines repeating an earlier one, and the batch's
/// fingerprints.
fn prepare(
    vault: &Vault,
    pool_id: Uuid,
    recent: &Recent,
    batch: Batch,
) -> (Prepared, Fingerprints) {
    let mut seen = Fingerprints::with_capacity(batch.len());
    let mut rows = Vec::with_capacity(batch.len());
    let mut repeated = Vec::new();
    for (line, key) in batch {
        let fingerprint = vault.fingerprint(&key);
        if recent.iter().any(|r| r.contains(&fingerprint)) || !seen.insert(fingerprint) {
            repeated.push((line, DUPLICATE_IN_UPLOAD));
            continue;
        }
        let id = Uuid::now_v7();
        let sealed = vault.seal(id, pool_id, &key);
        rows.push((
            line,
            NewKey {
                id,
                fingerprint,
                sealed,
            },
        ));
    }
    rows.sort_unstable_by_key(|(_, k)| k.fingerprint);
    let (lines, keys) = rows.into_iter().unzip();
    (
        Prepared {
            keys,
            lines,
            repeated,
        },
        seen,
    )
}
