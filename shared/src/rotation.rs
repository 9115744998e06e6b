//! Encryption key rotation: moves every sealed key (pool keys, keys sellers delivered by
//! hand, every webhook endpoint's signing secret) from retired encryption keys to the current one.
//!
//! Work goes in small batches, each its own transaction, so a crash or a kill loses at
//! most one uncommitted batch and a rerun picks up what is left (a key moved is no longer
//! selected). A batch locks its rows and rewrites only `ciphertext`, `nonce` and
//! `enc_key_id` of rows still under the retired id: no status, order or fingerprint
//! changes, and a concurrent delivery or invalidation either commits first (the batch
//! then sees its result) or waits for the batch — no update is lost.
//!
//! A delivery that claims AVAILABLE keys skips locked rows, so while a batch holds a
//! pool's last available keys an order could be backordered; each batch therefore
//! enqueues a `ReplenishPool` job for the pools whose available keys it held, which
//! serves such an order as soon as the batch commits.

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    error::CoreError,
    jobs::{ReplenishPool, queue},
    store::{keys, webhooks::SECRET_LABEL},
    vault::{Sealed, Vault},
};

/// Keys per batch: a few milliseconds of AES-GCM and one short UPDATE.
pub const BATCH: i64 = 1000;

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
    /// Locks a batch: (id, the id the seal is bound to, ciphertext, nonce, AVAILABLE?).
    const fn lock(self) -> &'static str {
        match self {
            SealedTable::PoolKeys => {
                "SELECT id, pool_id, ciphertext, nonce, status = 'AVAILABLE'
                 FROM keys WHERE enc_key_id = $1 LIMIT $2 FOR UPDATE"
            }
            SealedTable::ManualKeys => {
                "SELECT id, order_id, ciphertext, nonce, false
                 FROM manual_keys WHERE enc_key_id = $1 LIMIT $2 FOR UPDATE"
            }
        }
    }

    /// Rewrites the locked rows still under the retired id ($5).
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

/// Re-seals up to `limit` rows of `table` sealed under `retired` with the current key, in
/// one transaction. Returns how many moved (0: nothing left under that id).
pub async fn reencrypt_batch(
    pool: &PgPool,
    vault: &Vault,
    table: SealedTable,
    retired: &str,
    limit: i64,
) -> Result<u64, CoreError> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(Uuid, Uuid, Vec<u8>, Vec<u8>, bool)> = sqlx::query_as(table.lock())
        .bind(retired)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let (mut ids, mut cts, mut nonces) = (Vec::new(), Vec::new(), Vec::new());
    let mut pools_with_available: Vec<Uuid> = Vec::new();
    for (id, bound_to, ciphertext, nonce, available) in rows {
        let key = keys::SealedKey::from_parts(id, bound_to, ciphertext, nonce, retired.into())?;
        let plaintext = vault
            .open(id, bound_to, &key.sealed)
            .map_err(|e| CoreError::invariant(format!("key {id} cannot be opened: {e}")))?;
        let resealed = vault.seal(id, bound_to, &plaintext);
        ids.push(id);
        cts.push(resealed.ciphertext);
        nonces.push(resealed.nonce.to_vec());
        if available && !pools_with_available.contains(&bound_to) {
            pools_with_available.push(bound_to);
        }
    }
    let moved = sqlx::query(table.rewrite())
        .bind(vault.current_key_id())
        .bind(&ids)
        .bind(&cts)
        .bind(&nonces)
        .bind(retired)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    for pool_id in pools_with_available {
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
            loop {
                if out_of_time() {
                    return Ok((total, false));
                }
                let moved = reencrypt_batch(pool, vault, table, retired, batch).await?;
                if moved == 0 {
                    break;
                }
                total += moved;
                on_batch(moved);
            }
        }
    }
    Ok((total, true))
}
