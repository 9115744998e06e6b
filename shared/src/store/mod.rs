//! The store: every read and write of the project's tables, one module per aggregate.
//! Functions take the caller's connection or transaction (`&mut PgConnection`): request
//! handlers and jobs own begin/commit, the store owns the SQL.
//!
//! What the store does NOT do is move a key or an order from one status to another:
//! those writes live in [`crate::transitions`], the one place that knows the rules.
//!
//! Hot statements are written so that their intended index path stays the plan whatever
//! the statistics say (equality on a primary or unique key, or a bounded `LIMIT` in the
//! order of a partial index); the test `plans.rs` proves it on un-analyzed tables.

pub mod audit;
pub mod events;
pub mod idempotency;
pub mod identities;
pub mod key_reports;
pub mod keys;
pub mod offers;
pub mod order_keys;
pub mod orders;
pub mod payments;
pub mod pools;
pub mod sellers;
pub mod tokens;
pub mod webhooks;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A position in a list ordered by (created_at, id): the last row of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct After {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl After {
    /// Before every row (ascending lists start here). Within PostgreSQL's timestamp range,
    /// unlike chrono's own extremes.
    pub const START: After = After {
        created_at: DateTime::<Utc>::UNIX_EPOCH,
        id: Uuid::nil(),
    };
    /// After every row (descending lists start here): 9999-12-31T23:59:59Z.
    pub const END: After = After {
        created_at: match DateTime::<Utc>::from_timestamp(253_402_300_799, 0) {
            Some(t) => t,
            None => DateTime::<Utc>::UNIX_EPOCH,
        },
        id: Uuid::max(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_bounds_are_within_postgres_range() {
        assert_eq!(
            After::START.created_at.to_rfc3339(),
            "1970-01-01T00:00:00+00:00"
        );
        assert_eq!(
            After::END.created_at.to_rfc3339(),
            "9999-12-31T23:59:59+00:00"
        );
        assert!(After::START.id < After::END.id);
    }
}
