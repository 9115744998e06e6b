//! Order reads under load: concurrent `GET /orders/:id` (a buyer polling for its keys)
//! look their orders up together, one statement for the group (`group_commit`).
//!
//! A grouped lookup starts after every request in it arrived, so a reader still sees
//! everything committed before its request (a storefront that got its 201 finds the
//! order). Who may see what is decided per request, in `read`.

use autokey_shared::store::{self, orders::OrderRow};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    error::{ApiError, ApiResult},
    group_commit::GroupCommit,
};

/// Lookups per statement.
const MAX_GROUP: usize = 128;
/// Lookup statements running at once (each holds a connection).
const IN_FLIGHT: usize = 4;

#[derive(Clone)]
pub struct OrderLookups(GroupCommit<Uuid, ApiResult<Option<OrderRow>>>);

impl OrderLookups {
    pub fn start(pool: PgPool) -> Self {
        Self(GroupCommit::start(
            "order lookups",
            MAX_GROUP,
            IN_FLIGHT,
            move |ids| {
                let pool = pool.clone();
                async move { find_many(&pool, ids).await }
            },
        ))
    }

    /// The order as committed now, whoever placed it (the caller checks the viewer).
    pub async fn find(&self, id: Uuid) -> ApiResult<Option<OrderRow>> {
        self.0.submit(id).await?
    }
}

async fn find_many(pool: &PgPool, ids: Vec<Uuid>) -> Vec<ApiResult<Option<OrderRow>>> {
    let found = async {
        let mut conn = pool.acquire().await?;
        store::orders::find_many(&mut conn, &ids).await
    };
    match found.await {
        Ok(rows) => ids
            .iter()
            .map(|id| Ok(rows.iter().find(|o| o.id == *id).cloned()))
            .collect(),
        // A read changes nothing: every request of the group gets the error (logged once).
        Err(e) => {
            let unavailable = autokey_shared::error::is_transient(&e);
            tracing::error!(error = %e, lookups = ids.len(), "a grouped order lookup failed");
            ids.iter()
                .map(|_| {
                    Err(if unavailable {
                        ApiError::Unavailable
                    } else {
                        ApiError::Internal("a grouped order lookup failed".into())
                    })
                })
                .collect()
        }
    }
}
