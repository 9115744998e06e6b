//! Announcing new fast-lane jobs *after* their commit, many per NOTIFY
//! ([`crate::announce`] says why). The announcement is only a hint: the job is already
//! Pending in the queue, and one that is never announced (process killed between commit
//! and NOTIFY, backlog full) is run by the queue's workers after [`super::LANE_GRACE`].
//!
//! Payload: job ids separated by [`crate::announce::SEPARATOR`] (a ULID never contains one).

use sqlx::PgPool;
use uuid::Uuid;

use super::{FulfillOrder, LANE_CHANNEL};
use crate::announce::Announcer;

/// A handle on the process's announcing task for the fast lane (cheap to clone).
#[derive(Clone)]
pub struct LaneAnnouncer(Announcer);

impl LaneAnnouncer {
    /// Starts the announcing task on `pool` (it takes one connection per NOTIFY).
    pub fn start(pool: PgPool) -> Self {
        Self(Announcer::start(
            pool,
            LANE_CHANNEL,
            crate::metrics::lane_announcement_dropped,
        ))
    }

    /// Announces the fulfillment jobs of `order_ids`, whose pay has committed. Never
    /// waits; an id that does not fit is left to the queue's workers.
    pub fn fulfillments(&self, order_ids: impl IntoIterator<Item = Uuid>) {
        self.0
            .announce(order_ids.into_iter().map(FulfillOrder::job_id_of));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_never_contain_the_separator() {
        let ids: Vec<String> = (0..1000)
            .map(|_| FulfillOrder::job_id_of(Uuid::now_v7()))
            .collect();
        assert!(
            ids.iter()
                .all(|id| !id.contains(crate::announce::SEPARATOR))
        );
        let payload = ids.join(",");
        assert_eq!(crate::announce::ids(&payload).collect::<Vec<_>>(), ids);
    }
}
