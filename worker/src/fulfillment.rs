//! Fulfillment of one paid order in its own transaction: a batch of one. The rules are
//! the core's ([`autokey_shared::transitions::delivery`]); this is the job's side: its
//! transaction, and what a missing order means for the job.

use std::time::Duration;

use autokey_shared::{
    db,
    jobs::JobError,
    transitions::delivery::{self, Take},
};
use sqlx::PgPool;
use uuid::Uuid;

pub use autokey_shared::transitions::delivery::Outcome;

/// Runs the fulfillment of `order_id` in its own transaction.
pub async fn fulfill_order(
    pool: &PgPool,
    order_id: Uuid,
    lock_timeout: Duration,
) -> Result<Outcome, JobError> {
    let mut tx = db::begin_with_lock_timeout(pool, lock_timeout).await?;
    let order = delivery::lock(&mut tx, Take::One(order_id)).await?;
    if order.is_empty() {
        return Err(JobError::fatal(format!("order {order_id} does not exist")));
    }
    let outcome = delivery::deliver(&mut tx, &order).await?;
    tx.commit().await?;
    Ok(outcome.first().map_or(Outcome::NothingToDo, |(_, o)| *o))
}
