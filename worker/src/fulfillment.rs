//! The fulfillment transaction: one paid order gets `quantity` distinct keys, all at once,
//! or keeps what it could reserve and waits (backorder). Safe to run any number of times
//! for the same order: it locks the order row first and acts only on a PAID order.

use std::time::Duration;

use autokey_shared::model::ORDER_FULFILLED_CHANNEL;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Keys delivered, order FULFILLED.
    Fulfilled { keys: i64 },
    /// Not enough keys: `reserved` of `quantity` are held for the order, which waits.
    Backordered { reserved: i64, quantity: i64 },
    /// Nothing to do: the order is not PAID (already fulfilled, canceled, or unpaid).
    NothingToDo,
}

#[derive(Debug, thiserror::Error)]
pub enum FulfillError {
    #[error("order {0} does not exist")]
    OrderMissing(Uuid),
    #[error("the job panicked: {0}")]
    Panicked(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl FulfillError {
    /// Worth another try later (the database or the connection had a passing problem).
    pub fn is_transient(&self) -> bool {
        match self {
            FulfillError::Database(e) => autokey_shared::db::is_transient(e),
            // Counted as a failed attempt and retried; repeated panics end in the dead state.
            FulfillError::Panicked(_) => true,
            FulfillError::OrderMissing(_) => false,
        }
    }
}

/// Runs the fulfillment of `order_id` in its own transaction.
pub async fn fulfill_order(
    pool: &PgPool,
    order_id: Uuid,
    lock_timeout: Duration,
) -> Result<Outcome, FulfillError> {
    let mut tx = begin(pool, lock_timeout).await?;
    let outcome = fulfill_in(&mut tx, order_id).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Begins a fulfillment transaction. A fulfillment that waits on a lock longer than
/// `lock_timeout` fails (transiently) instead of holding a worker slot hostage; the
/// setting travels with BEGIN, so it costs no round trip of its own.
pub async fn begin(
    pool: &PgPool,
    lock_timeout: Duration,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let millis = lock_timeout.as_millis().clamp(1, i32::MAX as u128);
    pool.begin_with(sqlx::AssertSqlSafe(format!(
        "BEGIN; SET LOCAL lock_timeout = '{millis}ms'"
    )))
    .await
}

/// The fulfillment steps on the caller's transaction.
pub async fn fulfill_in(conn: &mut PgConnection, order_id: Uuid) -> Result<Outcome, FulfillError> {
    let order: Option<(String, i32, Option<Uuid>)> =
        sqlx::query_as("SELECT status, quantity, pool_id FROM orders WHERE id = $1 FOR UPDATE")
            .bind(order_id)
            .fetch_optional(&mut *conn)
            .await?;
    let (status, quantity, pool_id) = order.ok_or(FulfillError::OrderMissing(order_id))?;
    if status != "PAID" {
        return Ok(Outcome::NothingToDo);
    }
    // MANUAL offers have no pool: their delivery is not automatic.
    let Some(pool_id) = pool_id else {
        return Ok(Outcome::NothingToDo);
    };
    let quantity = i64::from(quantity);

    let reserved: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM keys WHERE order_id = $1 AND status = 'RESERVED'")
            .bind(order_id)
            .fetch_all(&mut *conn)
            .await?;
    let need = quantity - reserved.len() as i64;
    let claimed = if need <= 0 {
        Vec::new()
    } else if older_order_waits(conn, pool_id, order_id).await? {
        // Keys that arrive go to the oldest waiting order first (the replenisher serves
        // them in order); this one queues behind.
        Vec::new()
    } else {
        claim_available(conn, pool_id, need).await?
    };

    if reserved.len() + claimed.len() < quantity as usize {
        reserve(conn, order_id, &claimed).await?;
        sqlx::query(
            "UPDATE orders SET backordered_at = coalesce(backordered_at, now()) WHERE id = $1",
        )
        .bind(order_id)
        .execute(&mut *conn)
        .await?;
        return Ok(Outcome::Backordered {
            reserved: (reserved.len() + claimed.len()) as i64,
            quantity,
        });
    }
    let mut all = reserved;
    all.extend(claimed);
    deliver(conn, order_id, &all).await?;
    Ok(Outcome::Fulfilled {
        keys: all.len() as i64,
    })
}

/// Whether an order of this pool that was paid earlier is already waiting for keys.
async fn older_order_waits(
    conn: &mut PgConnection,
    pool_id: Uuid,
    order_id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (
             SELECT 1 FROM orders o, orders me
             WHERE me.id = $2 AND o.pool_id = $1 AND o.status = 'PAID' AND o.backordered_at IS NOT NULL
               AND (o.paid_at, o.id) < (me.paid_at, me.id))",
    )
    .bind(pool_id)
    .bind(order_id)
    .fetch_one(conn)
    .await
}

/// Locks up to `n` available keys of the pool, oldest first, skipping keys another
/// transaction holds. Walks the partial index `keys_claim_idx`.
async fn claim_available(
    conn: &mut PgConnection,
    pool_id: Uuid,
    n: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM keys WHERE pool_id = $1 AND status = 'AVAILABLE'
         ORDER BY created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(pool_id)
    .bind(n)
    .fetch_all(conn)
    .await
}

async fn reserve(
    conn: &mut PgConnection,
    order_id: Uuid,
    keys: &[Uuid],
) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE keys SET status = 'RESERVED', order_id = $1, reserved_at = now()
         WHERE id = ANY($2) AND status = 'AVAILABLE'",
    )
    .bind(order_id)
    .bind(keys)
    .execute(conn)
    .await?;
    Ok(())
}

async fn deliver(
    conn: &mut PgConnection,
    order_id: Uuid,
    keys: &[Uuid],
) -> Result<(), sqlx::Error> {
    // The UNIQUE on order_deliveries.key_id refuses a second delivery of any key, even if
    // the status checks above were wrong.
    sqlx::query("INSERT INTO order_deliveries (order_id, key_id) SELECT $1, unnest($2::uuid[])")
        .bind(order_id)
        .bind(keys)
        .execute(&mut *conn)
        .await?;
    let updated = sqlx::query(
        "UPDATE keys SET status = 'DELIVERED', order_id = $1, delivered_at = now()
         WHERE id = ANY($2) AND (status = 'AVAILABLE' OR (status = 'RESERVED' AND order_id = $1))",
    )
    .bind(order_id)
    .bind(keys)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() != keys.len() as u64 {
        // Cannot happen while rows are locked as above; refuse rather than half-deliver.
        return Err(sqlx::Error::Protocol(format!(
            "expected to deliver {} keys, updated {}",
            keys.len(),
            updated.rows_affected()
        )));
    }
    sqlx::query("UPDATE orders SET status = 'FULFILLED', fulfilled_at = now() WHERE id = $1 AND status = 'PAID'")
        .bind(order_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(ORDER_FULFILLED_CHANNEL)
        .bind(order_id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}
