//! A MANUAL order delivered by its seller: the keys the seller typed, sealed, stored for
//! the order, and the order PAID -> FULFILLED, in one statement. The offer's
//! `stock_count` drops by the units delivered (they leave the seller's stock as they leave
//! the open orders, so the offer's sellable count is unchanged by a delivery).

use sqlx::PgConnection;

use crate::{
    error::CoreError,
    model::ORDER_FULFILLED_CHANNEL,
    store::{key_reports::KeyReport, keys::NewKey, orders::OrderRow},
};

pub const DELIVER_MANUAL: &str = concat!(
    "WITH m AS (INSERT INTO manual_keys (id, order_id, ciphertext, nonce, enc_key_id, fingerprint)
         SELECT r.id, $6, r.ciphertext, r.nonce, r.enc_key_id, r.fingerprint
         FROM unnest($1::uuid[], $2::bytea[], $3::bytea[], $4::text[], $5::bytea[])
              AS r (id, ciphertext, nonce, enc_key_id, fingerprint)
         ORDER BY r.fingerprint
         RETURNING 1),
     f AS (UPDATE orders o SET status = 'FULFILLED', fulfilled_at = now()
           WHERE o.id = $6 AND o.status = 'PAID' AND o.pool_id IS NULL
           RETURNING o.*, order_json(o) AS data),
     s AS (UPDATE offers SET stock_count = greatest(0, stock_count - $7)
           WHERE id = (SELECT offer_id FROM f) AND stock_count IS NOT NULL RETURNING 1),
     e AS (",
    crate::order_events!("order.fulfilled", "f"),
    ")
     SELECT ",
    crate::order_columns!(),
    ", (SELECT count(*) FROM m) AS keys_written,
        (SELECT count(*) FROM (SELECT pg_notify($8, id::text) FROM f) n) AS notified
     FROM f"
);

/// PAID -> FULFILLED for a MANUAL order the caller has locked and checked (PAID, no pool),
/// with `keys` (sealed for their row id and this order's id, exactly `quantity` of them).
/// A key whose fingerprint another MANUAL delivery stored violates
/// `manual_keys_fingerprint_unique` (the caller maps it). Returns the order as it now is.
pub async fn deliver(
    conn: &mut PgConnection,
    order: &OrderRow,
    keys: &[NewKey],
) -> Result<OrderRow, CoreError> {
    if keys.len() != order.quantity as usize {
        return Err(CoreError::invariant(format!(
            "order {} of quantity {} was given {} keys",
            order.id,
            order.quantity,
            keys.len()
        )));
    }
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        order: OrderRow,
        keys_written: i64,
    }
    let row: Option<Row> = sqlx::query_as(DELIVER_MANUAL)
        .bind(keys.iter().map(|k| k.id).collect::<Vec<_>>())
        .bind(
            keys.iter()
                .map(|k| &k.sealed.ciphertext[..])
                .collect::<Vec<_>>(),
        )
        .bind(keys.iter().map(|k| &k.sealed.nonce[..]).collect::<Vec<_>>())
        .bind(
            keys.iter()
                .map(|k| k.sealed.enc_key_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(keys.iter().map(|k| &k.fingerprint[..]).collect::<Vec<_>>())
        .bind(order.id)
        .bind(order.quantity)
        .bind(ORDER_FULFILLED_CHANNEL)
        .fetch_optional(conn)
        .await?;
    match row {
        Some(r) if r.keys_written == keys.len() as i64 => Ok(r.order),
        Some(r) => Err(CoreError::invariant(format!(
            "a manual delivery of {} keys to order {} wrote {}",
            keys.len(),
            order.id,
            r.keys_written
        ))),
        None => Err(CoreError::invariant(format!(
            "order {} was not a PAID MANUAL order when delivered",
            order.id
        ))),
    }
}

pub const REPLACE_MANUAL: &str = concat!(
    "WITH old AS (UPDATE manual_keys SET invalidated_at = now()
                  WHERE id = $2 AND order_id = $3 AND invalidated_at IS NULL
                  RETURNING id),
     m AS (INSERT INTO manual_keys (id, order_id, ciphertext, nonce, enc_key_id, fingerprint, replaces)
           SELECT $4, $3, $5, $6, $7, $8, old.id FROM old
           RETURNING id),
     s AS (UPDATE offers SET stock_count = greatest(0, stock_count - 1)
           WHERE id = (SELECT offer_id FROM orders WHERE id = $3) AND stock_count IS NOT NULL
             AND EXISTS (SELECT 1 FROM m)
           RETURNING 1),
     r AS (UPDATE key_reports r SET status = 'approved', decided_at = now(),
                  replacement_manual_key_id = (SELECT id FROM m)
           WHERE r.id = $1 AND r.status = 'open' AND EXISTS (SELECT 1 FROM m)
           RETURNING ",
    crate::report_columns!(),
    ")
     SELECT * FROM r"
);

/// open -> approved for a report on a MANUAL key, which the caller has locked and checked
/// (open, about a MANUAL key): the reported key is marked invalid and `key`, typed by the
/// seller, is stored sealed for the same order as its replacement, in one statement. The
/// replacement leaves the seller's stock like a delivered unit. None (nothing changed)
/// when the reported key was already replaced. A key stored before violates
/// `manual_keys_fingerprint_unique` (the caller maps it).
pub async fn replace(
    conn: &mut PgConnection,
    report: &KeyReport,
    key: &NewKey,
) -> Result<Option<KeyReport>, CoreError> {
    if report.pool_id.is_some() {
        return Err(CoreError::invariant(format!(
            "report {} is about a pool key: the worker delivers its replacement",
            report.id
        )));
    }
    Ok(sqlx::query_as(REPLACE_MANUAL)
        .bind(report.id)
        .bind(report.key_id)
        .bind(report.order_id)
        .bind(key.id)
        .bind(&key.sealed.ciphertext[..])
        .bind(&key.sealed.nonce[..])
        .bind(key.sealed.enc_key_id.as_str())
        .bind(&key.fingerprint[..])
        .fetch_optional(conn)
        .await?)
}
