//! Announcing new fast-lane jobs *after* their commit, many per NOTIFY.
//!
//! Why not a NOTIFY in the paying transaction: PostgreSQL serializes the commits of
//! notifying transactions (each holds a database-wide lock through its WAL flush), so
//! every pay waited for every other pay's flush (pgbench here: one insert 4-11k tps,
//! the same insert with a NOTIFY 0.6-1.8k tps). The announcement is only a hint: the job
//! is already Pending in the queue, and one that is never announced (process killed
//! between commit and NOTIFY, backlog full) is run by the queue's workers after
//! [`super::LANE_GRACE`]. So it may as well be sent outside the transaction, by one task
//! per process that puts every id that arrived meanwhile into one NOTIFY.
//!
//! Payload: job ids separated by [`SEPARATOR`] (a ULID never contains one).

use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{FulfillOrder, LANE_CHANNEL};

pub const SEPARATOR: char = ',';

/// Ids per NOTIFY: 26-character ULIDs and separators stay well under PostgreSQL's
/// 8000-byte payload limit.
const IDS_PER_NOTIFY: usize = 256;

/// Ids waiting for the announcing task; beyond this they are dropped (the queue's
/// workers run those jobs after the grace).
const BACKLOG: usize = 8192;

/// A handle on the process's announcing task (cheap to clone).
#[derive(Clone)]
pub struct LaneAnnouncer {
    ids: mpsc::Sender<String>,
}

impl LaneAnnouncer {
    /// Starts the announcing task on `pool` (it takes one connection per NOTIFY).
    pub fn start(pool: PgPool) -> Self {
        let (ids, rx) = mpsc::channel(BACKLOG);
        tokio::spawn(announce_loop(pool, rx));
        Self { ids }
    }

    /// Announces the fulfillment jobs of `order_ids`, whose pay has committed. Never
    /// waits; an id that does not fit is left to the queue's workers.
    pub fn fulfillments(&self, order_ids: impl IntoIterator<Item = Uuid>) {
        for order_id in order_ids {
            if self
                .ids
                .try_send(FulfillOrder::job_id_of(order_id))
                .is_err()
            {
                crate::metrics::lane_announcement_dropped();
            }
        }
    }
}

async fn announce_loop(pool: PgPool, mut rx: mpsc::Receiver<String>) {
    let mut batch = Vec::with_capacity(IDS_PER_NOTIFY);
    // Whatever arrived while the previous NOTIFY was on its way goes into the next one.
    while rx.recv_many(&mut batch, IDS_PER_NOTIFY).await > 0 {
        let payload = batch.join(&SEPARATOR.to_string());
        batch.clear();
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(LANE_CHANNEL)
            .bind(&payload)
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "could not announce fast-lane jobs; the queue's workers run them after the grace");
        }
    }
}

/// The job ids of one announcement.
pub fn job_ids(payload: &str) -> impl Iterator<Item = &str> {
    payload.split(SEPARATOR).filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_of_the_largest_batch_fits_in_a_notify() {
        let ids: Vec<String> = (0..IDS_PER_NOTIFY)
            .map(|_| FulfillOrder::job_id_of(Uuid::now_v7()))
            .collect();
        let payload = ids.join(&SEPARATOR.to_string());
        assert!(payload.len() < 8000, "{} bytes", payload.len());
        assert_eq!(job_ids(&payload).collect::<Vec<_>>(), ids);
        assert!(ids.iter().all(|id| !id.contains(SEPARATOR)));
    }

    #[test]
    fn a_single_id_is_its_own_payload() {
        assert_eq!(job_ids("01ABC").collect::<Vec<_>>(), vec!["01ABC"]);
        assert_eq!(job_ids("").count(), 0);
    }
}
