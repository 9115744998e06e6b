//! Serving backorders when keys arrive: a pool's waiting (backordered) orders are
//! fulfilled oldest paid first, a batch per transaction, until the pool runs dry again.

use std::time::Duration;

use autokey_shared::{
    announce::{Announce, Announcer},
    db,
    jobs::JobError,
    transitions::{
        delivery::{self, Outcome, Take},
        replacement,
    },
};
use sqlx::PgPool;
use uuid::Uuid;

/// How many orders one run serves before handing over to a fresh job (keeps runs short).
const MAX_ORDERS_PER_RUN: usize = 500;

/// Orders per transaction.
const BATCH: i64 = 64;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replenished {
    pub fulfilled: usize,
    pub more_waiting: bool,
}

pub async fn replenish_pool(
    pool: &PgPool,
    pool_id: Uuid,
    lock_timeout: Duration,
    announcer: &Announcer,
) -> Result<Replenished, JobError> {
    let mut done = Replenished::default();
    // Approved key reports first: their orders were paid long ago and wait for one key.
    loop {
        let mut tx = db::begin_with_lock_timeout(pool, lock_timeout).await?;
        delivery::lock_replenishment(&mut tx, pool_id).await?;
        let (served, waiting) = replacement::serve_waiting(&mut tx, pool_id, BATCH).await?;
        tx.commit().await?;
        if served < BATCH as usize || served < waiting {
            break;
        }
    }
    while done.fulfilled < MAX_ORDERS_PER_RUN {
        let mut tx = db::begin_with_lock_timeout(pool, lock_timeout).await?;
        // One replenisher per pool at a time, so backorders are served strictly in order.
        delivery::lock_replenishment(&mut tx, pool_id).await?;
        let waiting = delivery::lock(
            &mut tx,
            Take::Waiting {
                pool_id,
                limit: BATCH,
            },
        )
        .await?;
        let outcomes = delivery::deliver_with(&mut tx, &waiting, Announce::AfterCommit).await?;
        tx.commit().await?;
        let fulfilled: Vec<Uuid> = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Fulfilled { .. }))
            .map(|(id, _)| *id)
            .collect();
        announcer.announce(fulfilled.iter().map(Uuid::to_string));
        let paid_at: Vec<_> = fulfilled
            .iter()
            .filter_map(|id| waiting.iter().find(|w| w.id == *id)?.paid_at)
            .collect();
        autokey_shared::metrics::orders_fulfilled(&paid_at);
        let served = fulfilled.len();
        done.fulfilled += served;
        // Nothing waits, or the oldest waiting order cannot be completed: the pool is dry.
        if waiting.len() < BATCH as usize || served < waiting.len() {
            return Ok(done);
        }
    }
    done.more_waiting = true;
    Ok(done)
}
