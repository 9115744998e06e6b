//! Serving backorders when keys arrive: a pool's waiting (PAID) orders are fulfilled
//! oldest paid first, one transaction each, until the pool runs dry again.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::fulfillment::{self, FulfillError, Outcome, fulfill_in};

/// How many orders one run serves before handing over to a fresh job (keeps runs short).
const MAX_ORDERS_PER_RUN: usize = 500;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replenished {
    pub fulfilled: usize,
    pub more_waiting: bool,
}

pub async fn replenish_pool(
    pool: &PgPool,
    pool_id: Uuid,
    lock_timeout: Duration,
) -> Result<Replenished, FulfillError> {
    let mut done = Replenished::default();
    while done.fulfilled < MAX_ORDERS_PER_RUN {
        let mut tx = fulfillment::begin(pool, lock_timeout).await?;
        // One replenisher per pool at a time, so backorders are served strictly in order.
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('autokey:replenish:' || $1::text, 0))",
        )
        .bind(pool_id)
        .execute(&mut *tx)
        .await?;
        let next: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM orders WHERE pool_id = $1 AND status = 'PAID' ORDER BY paid_at, id LIMIT 1",
        )
        .bind(pool_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(order_id) = next else {
            tx.commit().await?;
            return Ok(done);
        };
        let outcome = fulfill_in(&mut tx, order_id).await?;
        tx.commit().await?;
        match outcome {
            Outcome::Fulfilled { .. } => done.fulfilled += 1,
            // The oldest waiting order cannot be completed: the pool is dry again.
            Outcome::Backordered { .. } => return Ok(done),
            // Changed state between the two reads (canceled or fulfilled): look again.
            Outcome::NothingToDo => {}
        }
    }
    done.more_waiting = true;
    Ok(done)
}
