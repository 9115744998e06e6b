//! A refund of a FULFILLED order: the order stays FULFILLED with `refunded_at`, and each
//! of its delivered pool keys comes back. A key whose plaintext never left autokey
//! (`revealed_at` null) returns to AVAILABLE and can be sold again; one that was revealed
//! may be in use by the refunded buyer, so it becomes INVALID with reason `refunded`
//! (and its `key.invalidated` event). The deliveries stay as the order's history, marked
//! `returned_at`, which frees the key for another delivery (`order_deliveries_key_unique`
//! holds over deliveries not returned). The order's open reports, and approved ones
//! still waiting for their replacement, become `canceled`: a refunded order gets no
//! replacement (and a waiting one stops counting in its pool's owed units). A refund of a
//! PAID order is a cancel ([`super::cancel`]).

use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    error::CoreError,
    jobs::{ReplenishPool, queue},
};

/// `IS NOT DISTINCT FROM`: see `store::order_keys::READ` (here against the partial
/// indexes of `order_deliveries` and `key_reports`, and against the DELIVERED range of
/// `keys_pool_status_idx`, which plans made on empty tables walked to find the order's keys).
pub const REFUND_FULFILLED: &str = "WITH o AS (UPDATE orders SET refunded_at = now()
           WHERE id = $1 AND status = 'FULFILLED' AND refunded_at IS NULL RETURNING id),
     d AS (UPDATE order_deliveries d SET returned_at = now()
           FROM o, keys dk
           WHERE d.order_id = o.id AND d.returned_at IS NOT DISTINCT FROM NULL::timestamptz
             AND dk.id = d.key_id AND dk.status IS NOT DISTINCT FROM 'DELIVERED'
             AND dk.order_id = o.id
           RETURNING d.key_id, d.revealed_at),
     back AS (UPDATE keys k SET status = 'AVAILABLE', order_id = NULL, delivered_at = NULL,
                     reserved_at = NULL
              FROM d WHERE k.id = d.key_id AND d.revealed_at IS NULL
                AND k.status IS NOT DISTINCT FROM 'DELIVERED'
              RETURNING k.pool_id),
     inv AS (UPDATE keys k SET status = 'INVALID', order_id = NULL, delivered_at = NULL,
                    reserved_at = NULL, invalidated_at = now(), invalid_reason = 'refunded'
             FROM d WHERE k.id = d.key_id AND d.revealed_at IS NOT NULL
               AND k.status IS NOT DISTINCT FROM 'DELIVERED'
             RETURNING k.id, k.pool_id, k.invalidated_at),
     e AS (INSERT INTO events (id, type, seller_id, pool_id, data)
           SELECT gen_random_uuid(), 'key.invalidated', p.seller_id, inv.pool_id,
                  jsonb_build_object('keyId', inv.id, 'poolId', inv.pool_id,
                                     'invalidatedAt', inv.invalidated_at, 'reason', 'refunded')
           FROM inv JOIN key_pools p ON p.id = inv.pool_id),
     rep AS (UPDATE key_reports r SET status = 'canceled', decided_at = now(),
                    note = 'the order was refunded'
             FROM o
             WHERE r.order_id = o.id
               AND (r.status IS NOT DISTINCT FROM 'open'
                    OR (r.status IS NOT DISTINCT FROM 'approved' AND r.replacement_key_id IS NULL
                        AND r.pool_id IS NOT NULL))
             RETURNING 1)
     SELECT (SELECT count(*) FROM o), (SELECT count(*) FROM d), (SELECT count(*) FROM back),
            (SELECT count(*) FROM inv), (SELECT min(pool_id::text) FROM back)::uuid,
            (SELECT count(*) FROM rep)";

/// What a refund of a FULFILLED order did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refunded {
    /// Keys back to AVAILABLE (never revealed).
    pub returned: i64,
    /// Keys INVALID, reason `refunded` (revealed).
    pub invalidated: i64,
    /// Open or waiting key reports closed (`canceled`).
    pub reports_canceled: i64,
}

/// FULFILLED -> FULFILLED with `refunded_at`, for an order the caller has locked and
/// checked (FULFILLED, not refunded yet). Keys back to AVAILABLE give their pool a
/// replenishment (they may complete waiting orders).
pub async fn refund_fulfilled(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Refunded, CoreError> {
    let (orders, deliveries, returned, invalidated, pool, reports_canceled): (
        i64,
        i64,
        i64,
        i64,
        Option<Uuid>,
        i64,
    ) = sqlx::query_as(REFUND_FULFILLED)
        .bind(order_id)
        .fetch_one(&mut *conn)
        .await?;
    if orders != 1 || deliveries != returned + invalidated {
        return Err(CoreError::invariant(format!(
            "a refund of order {order_id} touched {orders} orders, {deliveries} deliveries, \
             {returned} returned and {invalidated} invalidated keys"
        )));
    }
    if let Some(pool_id) = pool {
        queue::enqueue(conn, &ReplenishPool { pool_id }).await?;
    }
    Ok(Refunded {
        returned,
        invalidated,
        reports_canceled,
    })
}
