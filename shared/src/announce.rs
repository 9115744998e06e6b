//! Announcing committed changes *after* their commit, many per NOTIFY.
//!
//! Why not a NOTIFY in the transaction that makes the change: PostgreSQL serializes the
//! commits of notifying transactions (each holds a database-wide lock, "object 0 of class
//! 1262", through its WAL flush), so every such commit waits for every other one's flush.
//! Measured: pgbench of one insert 4-11k tps, the same insert with a NOTIFY 0.6-1.8k tps;
//! and with the worker's deliveries notifying in their transactions, `log_lock_waits`
//! showed ~15 commits a second waiting 5 ms or more on that lock at 200 orders/s.
//!
//! An announcement here is only ever a hint that something already committed: whoever
//! listens must still read the database, and must not depend on hearing every one (a
//! process killed between its commit and the NOTIFY never sends it). So one task per
//! process and channel sends them, putting every id that arrived meanwhile into one NOTIFY.
//!
//! Payload: ids separated by [`SEPARATOR`] (neither a UUID nor a ULID contains one).

use sqlx::PgPool;
use tokio::sync::mpsc;

pub const SEPARATOR: char = ',';

/// Ids per NOTIFY: 36-character UUIDs and separators stay well under PostgreSQL's
/// 8000-byte payload limit.
const IDS_PER_NOTIFY: usize = 200;

/// Ids waiting for the announcing task; beyond this they are dropped (announcements are
/// hints: listeners have a fallback).
const BACKLOG: usize = 8192;

/// Who announces a change: the transaction itself, or its caller after the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// A NOTIFY in the transaction. Simple, but PostgreSQL serializes the commits of
    /// notifying transactions: for rare changes and tools.
    InTransaction,
    /// The caller announces after its commit, through an [`Announcer`], many per NOTIFY:
    /// the api's pays, the worker's deliveries.
    AfterCommit,
}

/// A handle on one channel's announcing task (cheap to clone).
#[derive(Clone)]
pub struct Announcer {
    ids: mpsc::Sender<String>,
    /// Counts an id dropped because the backlog was full (a metric).
    on_dropped: fn(),
}

impl Announcer {
    /// Starts the announcing task for `channel` on `pool` (it takes one connection per
    /// NOTIFY).
    pub fn start(pool: PgPool, channel: &'static str, on_dropped: fn()) -> Self {
        let (ids, rx) = mpsc::channel(BACKLOG);
        tokio::spawn(announce_loop(pool, channel, rx));
        Self { ids, on_dropped }
    }

    /// Announces `ids`, whose changes have committed. Never waits; an id that does not
    /// fit in the backlog is dropped (and counted).
    pub fn announce(&self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            if self.ids.try_send(id).is_err() {
                (self.on_dropped)();
            }
        }
    }
}

async fn announce_loop(pool: PgPool, channel: &'static str, mut rx: mpsc::Receiver<String>) {
    let mut batch = Vec::with_capacity(IDS_PER_NOTIFY);
    // Whatever arrived while the previous NOTIFY was on its way goes into the next one.
    while rx.recv_many(&mut batch, IDS_PER_NOTIFY).await > 0 {
        let payload = batch.join(&SEPARATOR.to_string());
        batch.clear();
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(&payload)
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            tracing::warn!(channel, error = %e, "could not send an announcement; its listeners fall back to reading the database");
        }
    }
}

/// The ids of one announcement (a NOTIFY sent in a transaction names one).
pub fn ids(payload: &str) -> impl Iterator<Item = &str> {
    payload.split(SEPARATOR).filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_of_the_largest_batch_of_uuids_fits_in_a_notify() {
        let ids: Vec<String> = (0..IDS_PER_NOTIFY)
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect();
        let payload = ids.join(&SEPARATOR.to_string());
        assert!(payload.len() < 8000, "{} bytes", payload.len());
        assert_eq!(super::ids(&payload).collect::<Vec<_>>(), ids);
        assert!(ids.iter().all(|id| !id.contains(SEPARATOR)));
    }

    #[test]
    fn a_single_id_is_its_own_payload() {
        assert_eq!(super::ids("01ABC").collect::<Vec<_>>(), vec!["01ABC"]);
        assert_eq!(super::ids("").count(), 0);
    }
}
