//! An order with its keys, as its buyer or storefront reads it: the read, each key's first
//! reveal and the read's audit row, in one statement (one round trip); an order without
//! keys yet is one plain lookup.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::{
    audit::Actor,
    keys::SealedKey,
    orders::{OrderRow, Viewer},
};
use crate::{error::CoreError, model::OrderStatus};

/// A delivered key as its order shows it.
#[derive(Debug, Clone)]
pub struct ShownKey {
    pub sealed: SealedKey,
    /// Its first reveal (this read's time when this read is the first).
    pub revealed_at: DateTime<Utc>,
    /// The key of the same order it replaced.
    pub replaces: Option<Uuid>,
    /// The key that replaced it (it is INVALID now).
    pub replaced_by: Option<Uuid>,
}

/// A delivery still standing is tested with `returned_at IS NOT DISTINCT FROM
/// NULL::timestamptz` (the same as `IS NULL`, which the parser would make of an untyped
/// NULL) so that the planner cannot prove the partial `order_deliveries_key_unique`'s
/// predicate from it: an order's deliveries are found by its primary key range only. With
/// `IS NULL` and young statistics the planner ANDed that range with all of the partial
/// index (every live delivery) on each read; `tests/tests/plans.rs` refuses such a plan.
pub const READ: &str = concat!(
        "WITH o AS (SELECT ",
        crate::order_columns!(),
        " FROM orders WHERE id = $1 AND ",
    crate::visible_to_viewer!(),
    "),
         k AS (SELECT k.id, k.pool_id, k.ciphertext, k.nonce, k.enc_key_id, k.created_at,
                      coalesce(d.revealed_at, now()) AS revealed_at, d.replaces,
                      (SELECT r.key_id FROM order_deliveries r
                       WHERE r.order_id = d.order_id AND r.replaces = d.key_id
                         AND r.returned_at IS NOT DISTINCT FROM NULL::timestamptz LIMIT 1) AS replaced_by
               FROM order_deliveries d JOIN keys k ON k.id = d.key_id
               WHERE d.order_id = $1 AND d.returned_at IS NOT DISTINCT FROM NULL::timestamptz
                 AND EXISTS (SELECT 1 FROM o WHERE o.status = 'FULFILLED')
               UNION ALL
               SELECT m.id, m.order_id, m.ciphertext, m.nonce, m.enc_key_id, m.created_at,
                      coalesce(m.revealed_at, now()), m.replaces,
                      (SELECT x.id FROM manual_keys x WHERE x.replaces = m.id)
               FROM manual_keys m
               WHERE m.order_id = $1 AND EXISTS (SELECT 1 FROM o WHERE o.status = 'FULFILLED')),
         rd AS (UPDATE order_deliveries d SET revealed_at = now()
                WHERE d.order_id = $1 AND d.returned_at IS NOT DISTINCT FROM NULL::timestamptz AND d.revealed_at IS NULL
                  AND EXISTS (SELECT 1 FROM o WHERE o.status = 'FULFILLED')
                RETURNING 1),
         rm AS (UPDATE manual_keys m SET revealed_at = now()
                WHERE m.order_id = $1 AND m.revealed_at IS NULL
                  AND EXISTS (SELECT 1 FROM o WHERE o.status = 'FULFILLED')
                RETURNING 1),
         a AS (INSERT INTO audit_log (actor_role, actor_subject, actor_token_id, action, order_id, details)
               SELECT $4, $5, $6, 'order.keys_read', $1,
                      jsonb_build_object('route', $7::text,
                                         'keyIds', (SELECT jsonb_agg(id ORDER BY created_at, id) FROM k),
                                         'firstReveals', (SELECT count(*) FROM rd) + (SELECT count(*) FROM rm))
               WHERE EXISTS (SELECT 1 FROM k)
               RETURNING 1)
         SELECT o.*,
                (SELECT array_agg(id ORDER BY created_at, id) FROM k) AS key_ids,
                (SELECT array_agg(pool_id ORDER BY created_at, id) FROM k) AS key_pools,
                (SELECT array_agg(ciphertext ORDER BY created_at, id) FROM k) AS ciphertexts,
                (SELECT array_agg(nonce ORDER BY created_at, id) FROM k) AS nonces,
                (SELECT array_agg(enc_key_id ORDER BY created_at, id) FROM k) AS enc_key_ids,
                (SELECT array_agg(revealed_at ORDER BY created_at, id) FROM k) AS revealed,
                (SELECT array_agg(replaces ORDER BY created_at, id) FROM k) AS replaces,
                (SELECT array_agg(replaced_by ORDER BY created_at, id) FROM k) AS replaced_by
         FROM o"
    );

/// An order as `viewer` reads it: with its delivered keys (sealed) when FULFILLED, and
/// then an `order.keys_read` audit row written by the same statement, so the read and
/// its record commit together or not at all. One round trip. The same statement records
/// each key's first reveal (`revealed_at`, on its delivery): a refund later treats a
/// revealed key as used. Each key comes with its first reveal's time. Keys a refund took
/// back are not shown.
pub async fn read(
    conn: &mut PgConnection,
    id: Uuid,
    viewer: Viewer,
    actor: &Actor,
    route: &str,
) -> Result<Option<(OrderRow, Vec<ShownKey>)>, CoreError> {
    // An order not yet FULFILLED (what a buyer polling for its keys reads, again and
    // again) is one plain lookup: the statement below costs PostgreSQL ~0.2 ms of CPU to
    // start even when it has no keys to show (measured, `autokey-bench http`).
    match super::orders::find_visible(&mut *conn, id, viewer).await? {
        None => Ok(None),
        Some(order) if order.status != OrderStatus::Fulfilled => Ok(Some((order, Vec::new()))),
        Some(_) => read_fulfilled(conn, id, viewer, actor, route).await,
    }
}

/// [`read`] of an order found FULFILLED: its keys, their first reveals and the read's
/// audit row, in one statement. None when `viewer` may not see it.
pub async fn read_fulfilled(
    conn: &mut PgConnection,
    id: Uuid,
    viewer: Viewer,
    actor: &Actor,
    route: &str,
) -> Result<Option<(OrderRow, Vec<ShownKey>)>, CoreError> {
    #[derive(FromRow)]
    struct Row {
        #[sqlx(flatten)]
        order: OrderRow,
        key_ids: Option<Vec<Uuid>>,
        key_pools: Option<Vec<Uuid>>,
        ciphertexts: Option<Vec<Vec<u8>>>,
        nonces: Option<Vec<Vec<u8>>>,
        enc_key_ids: Option<Vec<String>>,
        revealed: Option<Vec<DateTime<Utc>>>,
        replaces: Option<Vec<Option<Uuid>>>,
        replaced_by: Option<Vec<Option<Uuid>>>,
    }
    let row: Option<Row> = sqlx::query_as(READ)
        .bind(id)
        .bind(viewer.buyer())
        .bind(viewer.storefront())
        .bind(actor.role)
        .bind(actor.subject)
        .bind(actor.token_id)
        .bind(route)
        .fetch_optional(conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let ids = row.key_ids.unwrap_or_default();
    let pools = row.key_pools.unwrap_or_default();
    let cts = row.ciphertexts.unwrap_or_default();
    let nonces = row.nonces.unwrap_or_default();
    let enc = row.enc_key_ids.unwrap_or_default();
    let revealed = row.revealed.unwrap_or_default();
    let replaces = row.replaces.unwrap_or_default();
    let replaced_by = row.replaced_by.unwrap_or_default();
    let keys = ids
        .into_iter()
        .zip(pools)
        .zip(cts)
        .zip(nonces)
        .zip(enc)
        .zip(revealed)
        .zip(replaces.into_iter().zip(replaced_by))
        .map(
            |(
                (((((id, pool_id), ct), nonce), enc_key_id), revealed_at),
                (replaces, replaced_by),
            )| {
                SealedKey::from_parts(id, pool_id, ct, nonce, enc_key_id).map(|sealed| ShownKey {
                    sealed,
                    revealed_at,
                    replaces,
                    replaced_by,
                })
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((row.order, keys)))
}
