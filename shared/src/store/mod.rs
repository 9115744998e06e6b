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
pub mod idempotency;
pub mod keys;
pub mod offers;
pub mod orders;
pub mod payments;
pub mod pools;
pub mod tokens;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A position in a list ordered by (created_at, id): the last row of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct After {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}
