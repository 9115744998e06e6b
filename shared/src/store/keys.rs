//! Keys: stored sealed (see [`crate::vault`]), deduplicated globally by fingerprint, shown
//! only as metadata. Status changes are [`crate::transitions`]'.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};
use utoipa::ToSchema;
use uuid::Uuid;

use super::After;
use crate::{model::KeyStatus, vault::Sealed};

/// What may be shown of a key: never the key, its ciphertext or its fingerprint.
#[derive(Debug, Clone, Serialize, ToSchema, FromRow)]
#[serde(rename_all = "camelCase")]
pub struct KeyMeta {
    pub id: Uuid,
    pub status: KeyStatus,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalidated_at: Option<DateTime<Utc>>,
    /// Why an INVALID key is: `refunded` when a refund took it back after its buyer had
    /// seen it (a never-revealed one went back to AVAILABLE instead); absent when its
    /// seller withdrew it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// The order the key is reserved for or was delivered to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<Uuid>,
}

#[macro_export]
#[doc(hidden)]
macro_rules! key_meta_columns {
    () => {
        "id, status, created_at, reserved_at, delivered_at, invalidated_at, invalid_reason, order_id"
    };
}

/// A key ready to be stored: sealed for its row id, known only by its fingerprint.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: Uuid,
    pub fingerprint: [u8; 32],
    pub sealed: Sealed,
}

pub const INSERT: &str =
    "INSERT INTO keys (id, pool_id, ciphertext, nonce, enc_key_id, fingerprint, upload_batch_id)
         SELECT r.id, $6, r.ciphertext, r.nonce, r.enc_key_id, r.fingerprint, $7
         FROM UNNEST($1::uuid[], $2::bytea[], $3::bytea[], $4::text[], $5::bytea[])
              AS r (id, ciphertext, nonce, enc_key_id, fingerprint)
         ORDER BY r.fingerprint
         ON CONFLICT (fingerprint) DO NOTHING
         RETURNING fingerprint";

/// Inserts `rows` into pool `pool_id` (AVAILABLE), skipping fingerprints that exist, and
/// returns the fingerprints it stored. Rows should come sorted by fingerprint: concurrent
/// uploads then take their unique-index locks in the same order and cannot deadlock.
pub async fn insert(
    conn: &mut PgConnection,
    pool_id: Uuid,
    upload_id: Option<Uuid>,
    rows: &[NewKey],
) -> Result<HashSet<[u8; 32]>, sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let ciphertexts: Vec<&[u8]> = rows.iter().map(|r| &r.sealed.ciphertext[..]).collect();
    let nonces: Vec<&[u8]> = rows.iter().map(|r| &r.sealed.nonce[..]).collect();
    let enc_key_ids: Vec<&str> = rows.iter().map(|r| r.sealed.enc_key_id.as_str()).collect();
    let fingerprints: Vec<&[u8]> = rows.iter().map(|r| &r.fingerprint[..]).collect();
    let stored: Vec<Vec<u8>> = sqlx::query_scalar(INSERT)
        .bind(ids)
        .bind(ciphertexts)
        .bind(nonces)
        .bind(enc_key_ids)
        .bind(fingerprints)
        .bind(pool_id)
        .bind(upload_id)
        .fetch_all(conn)
        .await?;
    Ok(to_fingerprints(stored))
}

pub const STORED_BY_UPLOAD: &str = "SELECT k.fingerprint FROM unnest($1::bytea[]) AS t(fingerprint)
     JOIN keys k ON k.fingerprint = t.fingerprint WHERE k.upload_batch_id = $2";

/// Which of `fingerprints` were stored by upload `upload_id`.
pub async fn stored_by_upload(
    conn: &mut PgConnection,
    upload_id: Uuid,
    fingerprints: &[&[u8]],
) -> Result<HashSet<[u8; 32]>, sqlx::Error> {
    if fingerprints.is_empty() {
        return Ok(HashSet::new());
    }
    let ours: Vec<Vec<u8>> = sqlx::query_scalar(STORED_BY_UPLOAD)
        .bind(fingerprints)
        .bind(upload_id)
        .fetch_all(conn)
        .await?;
    Ok(to_fingerprints(ours))
}

fn to_fingerprints(rows: Vec<Vec<u8>>) -> HashSet<[u8; 32]> {
    rows.into_iter()
        .filter_map(|f| <[u8; 32]>::try_from(f).ok())
        .collect()
}

/// Every status's own range of keys_pool_status_idx, merged: a pool's keys in (created_at,
/// id) order without an index of their own (one index fewer for every delivery, upload and
/// re-encryption to maintain). Each branch is bounded by the page size.
macro_rules! page_in {
    ($status:literal) => {
        concat!(
            "(SELECT ",
            key_meta_columns!(),
            " FROM keys WHERE pool_id = $1 AND status = '",
            $status,
            "' AND (created_at, id) > ($2, $3) ORDER BY created_at, id LIMIT $4)"
        )
    };
}

pub const PAGE: &str = concat!(
    "SELECT * FROM (",
    page_in!("AVAILABLE"),
    " UNION ALL ",
    page_in!("RESERVED"),
    " UNION ALL ",
    page_in!("DELIVERED"),
    " UNION ALL ",
    page_in!("INVALID"),
    ") k ORDER BY created_at, id LIMIT $4"
);

pub const PAGE_IN_STATUS: &str = concat!(
    "SELECT ",
    key_meta_columns!(),
    " FROM keys WHERE pool_id = $1 AND status = $2 AND (created_at, id) > ($3, $4)
      ORDER BY created_at, id LIMIT $5"
);

/// Up to `fetch` keys of the pool after `after` (from the start when None), in
/// (created_at, id) order, optionally in one status. Each form is made of plain ranges of
/// keys_pool_status_idx (one per status without a status); the first page starts at the
/// smallest position rather than being an OR the planner cannot use.
pub async fn page(
    conn: &mut PgConnection,
    pool_id: Uuid,
    status: Option<KeyStatus>,
    after: Option<After>,
    fetch: i64,
) -> Result<Vec<KeyMeta>, sqlx::Error> {
    let after = after.unwrap_or(After::START);
    match status {
        None => {
            sqlx::query_as(PAGE)
                .bind(pool_id)
                .bind(after.created_at)
                .bind(after.id)
                .bind(fetch)
                .fetch_all(conn)
                .await
        }
        Some(status) => {
            sqlx::query_as(PAGE_IN_STATUS)
                .bind(pool_id)
                .bind(status)
                .bind(after.created_at)
                .bind(after.id)
                .bind(fetch)
                .fetch_all(conn)
                .await
        }
    }
}

pub const LOCK_IN_SELLERS_POOL: &str =
    "SELECT k.id, k.status, k.created_at, k.reserved_at, k.delivered_at, k.invalidated_at,
            k.invalid_reason, k.order_id
     FROM keys k
     WHERE k.id = $1 AND k.pool_id = $2
       AND EXISTS (SELECT 1 FROM key_pools p WHERE p.id = $2 AND p.seller_id = $3)
     FOR UPDATE OF k";

/// Key `key_id`, row-locked, if it is in pool `pool_id` of `seller_id`; nothing is locked
/// otherwise (a caller never holds a row it may not see).
pub async fn lock_in_sellers_pool(
    conn: &mut PgConnection,
    seller_id: Uuid,
    pool_id: Uuid,
    key_id: Uuid,
) -> Result<Option<KeyMeta>, sqlx::Error> {
    sqlx::query_as(LOCK_IN_SELLERS_POOL)
        .bind(key_id)
        .bind(pool_id)
        .bind(seller_id)
        .fetch_optional(conn)
        .await
}

/// The encryption key ids stored keys are sealed with (a loose scan of
/// keys_enc_key_id_idx: one index probe per distinct id, whatever the number of keys),
/// MANUAL orders' keys included.
pub async fn encryption_key_ids(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH RECURSIVE ids AS (
             (SELECT enc_key_id FROM keys ORDER BY enc_key_id LIMIT 1)
             UNION ALL
             SELECT (SELECT k.enc_key_id FROM keys k WHERE k.enc_key_id > ids.enc_key_id
                     ORDER BY k.enc_key_id LIMIT 1)
             FROM ids WHERE ids.enc_key_id IS NOT NULL)
         SELECT enc_key_id FROM ids WHERE enc_key_id IS NOT NULL
         UNION
         -- MANUAL orders' keys, sealed the same way (few: one scan at start-up).
         SELECT DISTINCT enc_key_id FROM manual_keys",
    )
    .fetch_all(conn)
    .await
}

/// A sealed key with the ids its ciphertext is bound to.
#[derive(Debug, Clone)]
pub struct SealedKey {
    pub id: Uuid,
    /// The pool the ciphertext is bound to; for a MANUAL order's key, its order.
    pub pool_id: Uuid,
    pub sealed: Sealed,
}

impl SealedKey {
    /// From the parallel arrays a query aggregated; a malformed nonce is an invariant breach.
    pub fn from_parts(
        id: Uuid,
        pool_id: Uuid,
        ciphertext: Vec<u8>,
        nonce: Vec<u8>,
        enc_key_id: String,
    ) -> Result<Self, crate::error::CoreError> {
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| {
            crate::error::CoreError::invariant(format!("key {id} has a malformed nonce"))
        })?;
        Ok(SealedKey {
            id,
            pool_id,
            sealed: Sealed {
                ciphertext,
                nonce,
                enc_key_id,
            },
        })
    }
}

/// A stored key as a backup reads it (sealed; the caller opens it).
#[derive(Debug, Clone, FromRow)]
pub struct ExportRow {
    pub id: Uuid,
    pub pool_id: Uuid,
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub enc_key_id: String,
    pub status: KeyStatus,
    pub created_at: DateTime<Utc>,
}

/// Up to `limit` keys after key `after` (by id, time-ordered UUIDv7), of one pool or of
/// every pool: a backup walks the table in bounded pages.
pub async fn export_page(
    conn: &mut PgConnection,
    pool_id: Option<Uuid>,
    after: Uuid,
    limit: i64,
) -> Result<Vec<ExportRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, pool_id, ciphertext, nonce, enc_key_id, status, created_at FROM keys
         WHERE ($1::uuid IS NULL OR pool_id = $1) AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(pool_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

#[cfg(test)]
mod tests {
    use crate::model::KeyStatus;

    #[test]
    fn the_unfiltered_page_has_a_branch_for_every_status() {
        for status in KeyStatus::ALL {
            let branch = format!("status = '{}'", status.as_str());
            assert_eq!(super::PAGE.matches(&branch).count(), 1, "{branch}");
        }
        assert_eq!(
            super::PAGE.matches("UNION ALL").count(),
            KeyStatus::ALL.len() - 1
        );
    }
}
