//! Encryption key rotation: moves every sealed key (pool keys, keys sellers delivered by
//! hand, every webhook endpoint's signing secret) from retired encryption keys to the current one.
//!
//! Work goes in batches, each its own transaction, so a crash or a kill loses at most
//! one uncommitted batch and a rerun picks up what is left (a key moved is no longer
//! under the retired id). A batch is read without locks, in id order past the previous
//! batch (`keys_enc_key_id_idx` is on (enc_key_id, id): one index range, never the dead
//! entries of keys already moved), re-sealed in memory, and written by one UPDATE that
//! rewrites only `ciphertext`, `nonce` and `enc_key_id` of rows *still* under the retired
//! id. PostgreSQL applies that UPDATE to each row's newest version: a delivery or an
//! invalidation committed in between keeps its status and order (no update is lost), and
//! a row another rotation already moved is skipped. While one batch is written, the next
//! is read and re-sealed on another connection.
//!
//! A delivery that claims AVAILABLE keys skips locked rows, so while a batch's UPDATE holds
//! a pool's last available keys an order could be backordered; each batch therefore
//! enqueues a `ReplenishPool` job for the pools whose available keys it moved, which
//! serves such an order as soon as the batch commits.

use std::collections::BTreeMap;

use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    error::CoreError,
    jobs::{ReplenishPool, queue},
    store::{keys, webhooks::SECRET_LABEL},
    vault::{Sealed, Vault},
};

/// Keys per batch: a few milliseconds of AES-GCM and one UPDATE of a few tens of ms.
pub const BATCH: i64 = 2000;

/// Where a rotation stands: what is still sealed under each key id other than the
/// current one (keys and webhook secrets together). An id at 0 may leave the
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub current_key_id: String,
    pub remaining_by_key_id: BTreeMap<String, i64>,
}

impl Progress {
    pub fn remaining(&self) -> i64 {
        self.remaining_by_key_id.values().sum()
    }
}

/// Every encryption key id something stored is sealed with (pool keys, keys delivered
/// by hand, webhook secrets).
pub async fn sealing_key_ids(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    let mut ids = keys::encryption_key_ids(&mut *conn).await?;
    let secrets: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT secret_key_id FROM webhook_endpoints")
            .fetch_all(&mut *conn)
            .await?;
    for id in secrets {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids.sort();
    Ok(ids)
}

/// Counts what is left under each retired id (index-only counts per id).
pub async fn progress(conn: &mut PgConnection, current: &str) -> Result<Progress, sqlx::Error> {
    let mut remaining = BTreeMap::new();
    for id in sealing_key_ids(&mut *conn).await? {
        if id == current {
            continue;
        }
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM keys WHERE enc_key_id = $1)
                  + (SELECT count(*) FROM manual_keys WHERE enc_key_id = $1)
                  + (SELECT count(*) FROM webhook_endpoints WHERE secret_key_id = $1)",
        )
        .bind(&id)
        .fetch_one(&mut *conn)
        .await?;
        remaining.insert(id, n);
    }
    Ok(Progress {
        current_key_id: current.to_owned(),
        remaining_by_key_id: remaining,
    })
}

/// The two tables of sealed keys. Their rows differ only in what the ciphertext is bound
/// to (a pool key to its pool, a key delivered by hand to its order) and in whether a
/// delivery may be waiting for one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedTable {
    PoolKeys,
    ManualKeys,
}

impl SealedTable {
    /// Reads the next batch after id $3: (id, the id the seal is bound to, ciphertext,
    /// nonce, AVAILABLE?).
    const fn read(self) -> &'static str {
        match self {
            SealedTable::PoolKeys => {
                "SELECT id, pool_id, ciphertext, nonce, status = 'AVAILABLE'
                 FROM keys WHERE enc_key_id = $1 AND id > $3 ORDER BY enc_key_id, id LIMIT $2"
            }
            SealedTable::ManualKeys => {
                "SELECT id, order_id, ciphertext, nonce, false
                 FROM manual_keys WHERE enc_key_id = $1 AND id > $3 ORDER BY id LIMIT $2"
            }
        }
    }

    /// Rewrites the rows still under the retired id ($5).
    const fn rewrite(self) -> &'static str {
        match self {
            SealedTable::PoolKeys => {
                "UPDATE keys k SET ciphertext = u.ciphertext, nonce = u.nonce, enc_key_id = $1
                 FROM (SELECT * FROM unnest($2::uuid[], $3::bytea[], $4::bytea[])
                       AS t(id, ciphertext, nonce)) u
                 WHERE k.id = u.id AND k.enc_key_id = $5"
            }
            SealedTable::ManualKeys => {
                "UPDATE manual_keys k SET ciphertext = u.ciphertext, nonce = u.nonce,
                     enc_key_id = $1
                 FROM (SELECT * FROM unnest($2::uuid[], $3::bytea[], $4::bytea[])
                       AS t(id, ciphertext, nonce)) u
                 WHERE k.id = u.id AND k.enc_key_id = $5"
            }
        }
    }
}

/// A row as a batch reads it: (id, the id the seal is bound to, ciphertext, nonce,
/// AVAILABLE?).
type SealedRow = (Uuid, Uuid, Vec<u8>, Vec<u8>, bool);

/// A batch read and re-sealed, ready to be written.
#[derive(Debug, Default)]
pub struct Resealed {
    ids: Vec<Uuid>,
    ciphertexts: Vec<Vec<u8>>,
    nonces: Vec<Vec<u8>>,
    /// Pools whose AVAILABLE keys are in the batch (a delivery may skip them while the
    /// batch is written).
    pools_with_available: Vec<Uuid>,
}

impl Resealed {
    /// The last id of the batch (the next batch starts after it); None when empty.
    pub fn last_id(&self) -> Option<Uuid> {
        self.ids.last().copied()
    }
}

/// Reads up to `limit` rows of `table` under `retired` after `after` (in id order) and
/// re-seals them with the current key, in memory. An empty result: nothing left.
pub async fn read_batch(
    conn: &mut PgConnection,
    vault: &Vault,
    table: SealedTable,
    retired: &str,
    after: Uuid,
    limit: i64,
) -> Result<Resealed, CoreError> {
    // The read must walk `keys_enc_key_id_idx` in order and stop at the batch. Statistics
    // taken before a rotation say the retired id is everywhere, taken during it anything:
    // believing it rare, the planner would read every remaining key by bitmap and sort them
    // (measured: 98 ms a batch at 300k keys left). Bitmap scans are off for this read only.
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL enable_bitmapscan = off")
        .execute(&mut *tx)
        .await?;
    let rows: Vec<SealedRow> = sqlx::query_as(table.read())
        .bind(retired)
        .bind(limit)
        .bind(after)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut out = Resealed::default();
    for (id, bound_to, ciphertext, nonce, available) in rows {
        let key = keys::SealedKey::from_parts(id, bound_to, ciphertext, nonce, retired.into())?;
        let plaintext = vault
            .open(id, bound_to, &key.sealed)
            .map_err(|e| CoreError::invariant(format!("key {id} cannot be opened: {e}")))?;
        let resealed = vault.seal(id, bound_to, &plaintext);
        out.ids.push(id);
        out.ciphertexts.push(resealed.ciphertext);
        out.nonces.push(resealed.nonce.to_vec());
        if available && !out.pools_with_available.contains(&bound_to) {
            out.pools_with_available.push(bound_to);
        }
    }
    Ok(out)
}

/// Writes a re-sealed batch in one transaction; returns how many rows moved (rows another
/// rotation moved meanwhile are skipped).
pub async fn write_batch(
    pool: &PgPool,
    current_key_id: &str,
    table: SealedTable,
    retired: &str,
    batch: &Resealed,
) -> Result<u64, CoreError> {
    let mut tx = pool.begin().await?;
    let moved = sqlx::query(table.rewrite())
        .bind(current_key_id)
        .bind(&batch.ids)
        .bind(&batch.ciphertexts)
        .bind(&batch.nonces)
        .bind(retired)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    for &pool_id in &batch.pools_with_available {
        queue::enqueue(&mut tx, &ReplenishPool { pool_id }).await?;
    }
    tx.commit().await?;
    Ok(moved)
}

/// Re-seals every webhook endpoint secret under `retired` (few rows: one transaction).
pub async fn reencrypt_secrets(
    pool: &PgPool,
    vault: &Vault,
    retired: &str,
) -> Result<u64, CoreError> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(Uuid, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT id, secret_ciphertext, secret_nonce FROM webhook_endpoints
         WHERE secret_key_id = $1 FOR UPDATE",
    )
    .bind(retired)
    .fetch_all(&mut *tx)
    .await?;
    let mut moved = 0;
    for (id, ciphertext, nonce) in rows {
        let nonce: [u8; 12] = nonce
            .try_into()
            .map_err(|_| CoreError::invariant(format!("endpoint {id} has a malformed nonce")))?;
        let sealed = Sealed {
            ciphertext,
            nonce,
            enc_key_id: retired.to_owned(),
        };
        let secret = vault.open_secret(SECRET_LABEL, id, &sealed).map_err(|e| {
            CoreError::invariant(format!("endpoint {id}'s secret cannot be opened: {e}"))
        })?;
        let resealed = vault.seal_secret(SECRET_LABEL, id, &secret);
        moved += sqlx::query(
            "UPDATE webhook_endpoints SET secret_ciphertext = $2, secret_nonce = $3,
                 secret_key_id = $4 WHERE id = $1 AND secret_key_id = $5",
        )
        .bind(id)
        .bind(&resealed.ciphertext)
        .bind(&resealed.nonce[..])
        .bind(vault.current_key_id())
        .bind(retired)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    tx.commit().await?;
    Ok(moved)
}

/// Runs batches until nothing is left under a retired id, or until `deadline` (a worker's
/// time slice), calling `on_batch` with the number moved after each commit (a progress
/// bar). Returns how many moved and whether everything is done. Refuses to start when
/// something is sealed under an id the vault does not know (it could never finish).
pub async fn reencrypt_all(
    pool: &PgPool,
    vault: &Vault,
    batch: i64,
    deadline: Option<std::time::Instant>,
    mut on_batch: impl FnMut(u64),
) -> Result<(u64, bool), CoreError> {
    let mut conn = pool.acquire().await?;
    let ids = sealing_key_ids(&mut conn).await?;
    drop(conn);
    if let Some(unknown) = ids.iter().find(|id| !vault.knows(id)) {
        return Err(CoreError::invariant(format!(
            "stored keys are sealed with key id {unknown:?}, which is not configured \
             (add it to ENCRYPTION_KEYS_RETIRED)"
        )));
    }
    let out_of_time = || deadline.is_some_and(|d| std::time::Instant::now() >= d);
    let mut total = 0;
    for retired in ids.iter().filter(|id| *id != vault.current_key_id()) {
        let secrets = reencrypt_secrets(pool, vault, retired).await?;
        total += secrets;
        on_batch(secrets);
        for table in [SealedTable::ManualKeys, SealedTable::PoolKeys] {
            let (moved, done) = reencrypt_table(
                pool,
                vault,
                table,
                retired,
                batch,
                &out_of_time,
                &mut on_batch,
            )
            .await?;
            total += moved;
            if !done {
                return Ok((total, false));
            }
        }
    }
    Ok((total, true))
}

/// Every row of `table` under `retired`, batch after batch: the next batch is read and
/// re-sealed while the previous one is written. Returns (moved, finished).
async fn reencrypt_table(
    pool: &PgPool,
    vault: &Vault,
    table: SealedTable,
    retired: &str,
    batch: i64,
    out_of_time: &impl Fn() -> bool,
    on_batch: &mut impl FnMut(u64),
) -> Result<(u64, bool), CoreError> {
    let mut reader = pool.acquire().await?;
    let mut writing = tokio::task::JoinSet::new();
    let mut total = 0;
    let mut after = Uuid::nil();
    let finished = loop {
        if out_of_time() {
            break false;
        }
        let next = read_batch(&mut reader, vault, table, retired, after, batch).await?;
        let Some(last) = next.last_id() else {
            break true;
        };
        after = last;
        // Batches are disjoint id ranges: WRITERS of them commit side by side while the
        // next one is read and re-sealed.
        while writing.len() >= WRITERS {
            total += finish_write(&mut writing, on_batch).await?;
        }
        let (pool, current, retired) = (
            pool.clone(),
            vault.current_key_id().to_owned(),
            retired.to_owned(),
        );
        writing.spawn(async move { write_batch(&pool, &current, table, &retired, &next).await });
    };
    while !writing.is_empty() {
        total += finish_write(&mut writing, on_batch).await?;
    }
    Ok((total, finished))
}

/// Batches written at once by one rotation.
const WRITERS: usize = 2;

/// Waits for one batch's write; returns how many rows it moved.
async fn finish_write(
    writing: &mut tokio::task::JoinSet<Result<u64, CoreError>>,
    on_batch: &mut impl FnMut(u64),
) -> Result<u64, CoreError> {
    let moved = match writing.join_next().await {
        Some(Ok(written)) => written?,
        Some(Err(e)) => return Err(CoreError::invariant(format!("a batch write failed: {e}"))),
        None => 0,
    };
    on_batch(moved);
    Ok(moved)
}
