//! Order intake under load: new orders and simulated pays from concurrent requests are
//! written in groups (`group_commit`), one statement of each kind and one commit per group.
//!
//! Each writer isolates failures: a group that fails is written again one request at a
//! time, so a request gets its own row's error and never a neighbour's.

use std::collections::HashMap;

use autokey_shared::{
    jobs::{FulfillOrder, lane::LaneAnnouncer},
    model::OrderStatus,
    store::{
        self,
        audit::Actor,
        orders::{OrderRequest, OrderRow, Viewer},
    },
    transitions,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    error::{ApiError, ApiResult},
    group_commit::GroupCommit,
};

/// Rows per group: a few milliseconds of work for PostgreSQL at most.
const MAX_GROUP: usize = 64;
/// Groups of one kind written at once by one api process (each holds a connection).
///
/// One: while a group is written, everything that arrives queues for the next, so under
/// load groups grow to what the database can take, and at low load a lone request is
/// still written at once. Measured (`autokey-bench http`/`steady`, 2 cores, local server),
/// against 4 in flight: create + pay pairs 2,006-2,278/s against 1,379-1,588/s (CPU per
/// pair 0.71-0.74 ms against 1.17-1.30), `POST /orders` 14.7-16.1k/s against 9.6-10.4k/s,
/// pay -> fulfilled p50 at 1,000 orders/s 14.9 ms against 45.7 ms, and at 200/s the same
/// (1.65 against 1.54 ms). The ceiling is MAX_GROUP rows per group's write: with a
/// database 1 ms away (a pay group is four round trips), about 12k pays/s per process.
const IN_FLIGHT: usize = 1;

/// The grouped writers of one api process.
#[derive(Clone)]
pub struct Intake {
    orders: GroupCommit<OrderRequest, ApiResult<Option<OrderRow>>>,
    pays: GroupCommit<Pay, ApiResult<(OrderRow, bool)>>,
}

/// A simulated pay as the handler asks for it.
#[derive(Debug, Clone)]
pub struct Pay {
    pub order_id: Uuid,
    pub viewer: Viewer,
    pub actor: Actor,
    /// The paying request's id, carried by the order's job to the worker's log.
    pub request_id: Option<String>,
}

impl Intake {
    pub fn start(pool: PgPool, lane: LaneAnnouncer) -> Self {
        let orders = {
            let pool = pool.clone();
            GroupCommit::start("orders", MAX_GROUP, IN_FLIGHT, move |batch| {
                let pool = pool.clone();
                async move { place_orders(&pool, batch).await }
            })
        };
        let pays = GroupCommit::start("pays", MAX_GROUP, IN_FLIGHT, move |batch| {
            let (pool, lane) = (pool.clone(), lane.clone());
            async move { pay_orders(&pool, &lane, batch).await }
        });
        Self { orders, pays }
    }

    /// Places an order on an AUTO_KEY offer that accepts it: the PENDING order, once
    /// committed. None when it was not placed (a MANUAL offer, an inactive or unknown one,
    /// too little stock, or a failed write): the caller's one-request path finds out why.
    pub async fn place_order(&self, request: OrderRequest) -> ApiResult<Option<OrderRow>> {
        self.orders.submit(request).await?
    }

    /// PENDING -> PAID (with its job and audit row) for an order `viewer` may see; the
    /// order as it is after the commit, and whether this pay moved it. NotFound for an
    /// order it may not see, Conflict for a CANCELED one; PAID or FULFILLED ones are
    /// returned unchanged.
    pub async fn pay(&self, pay: Pay) -> ApiResult<(OrderRow, bool)> {
        self.pays.submit(pay).await?
    }
}

async fn place_orders(pool: &PgPool, batch: Vec<OrderRequest>) -> Vec<ApiResult<Option<OrderRow>>> {
    async fn together(
        pool: &PgPool,
        batch: &[OrderRequest],
    ) -> sqlx::Result<Vec<Option<OrderRow>>> {
        let mut conn = pool.acquire().await?;
        store::orders::place_auto_key_many(&mut conn, batch).await
    }
    // PostgreSQL refused the statement, so nothing of it was committed: the request may
    // take the one-request path, which reports why. Any other failure (the connection
    // lost mid-statement) is the request's error: a retry could place it twice.
    let alone = |result: sqlx::Result<Vec<Option<OrderRow>>>| match result {
        Ok(mut placed) => Ok(placed.pop().flatten()),
        Err(sqlx::Error::Database(e)) => {
            tracing::debug!(error = %e, "a grouped order was refused; it retries alone");
            Ok(None)
        }
        Err(e) => Err(ApiError::from(e)),
    };
    if batch.len() == 1 {
        return vec![alone(together(pool, &batch).await)];
    }
    match together(pool, &batch).await {
        Ok(placed) => placed.into_iter().map(Ok).collect(),
        Err(e @ (sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed)) => {
            // The statement's fate is unknown: none of its requests may be retried.
            tracing::warn!(error = %e, orders = batch.len(), "a grouped order insert was cut off");
            batch.iter().map(|_| Err(ApiError::Unavailable)).collect()
        }
        Err(_) => {
            let mut out = Vec::with_capacity(batch.len());
            for request in &batch {
                out.push(alone(together(pool, std::slice::from_ref(request)).await));
            }
            out
        }
    }
}

/// Pays are idempotent, so a group that failed, even one whose commit may have happened,
/// is simply paid again one request at a time.
async fn pay_orders(
    pool: &PgPool,
    lane: &LaneAnnouncer,
    batch: Vec<Pay>,
) -> Vec<ApiResult<(OrderRow, bool)>> {
    let outputs = match pay_together(pool, &batch).await {
        Ok(outputs) => outputs,
        Err(e) if batch.len() == 1 => vec![Err(e)],
        Err(_) => {
            let mut out = Vec::with_capacity(batch.len());
            for pay in &batch {
                out.push(match pay_together(pool, std::slice::from_ref(pay)).await {
                    Ok(mut one) => one
                        .pop()
                        .unwrap_or_else(|| Err(ApiError::Internal("a pay went unanswered".into()))),
                    Err(e) => Err(e),
                });
            }
            out
        }
    };
    // The fast lanes hear of the group's jobs at once, after the commit.
    lane.fulfillments(
        outputs
            .iter()
            .filter_map(|o| o.as_ref().ok().filter(|(_, now)| *now).map(|(o, _)| o.id)),
    );
    outputs
}

/// One transaction for the whole group: lock the orders each viewer may see, pay the
/// PENDING ones with their jobs and audit rows (one statement), commit. Per pay: the
/// order after the commit and whether this pay moved it.
async fn pay_together(pool: &PgPool, batch: &[Pay]) -> ApiResult<Vec<ApiResult<(OrderRow, bool)>>> {
    let mut tx = pool.begin().await?;
    let wanted: Vec<(Uuid, Viewer)> = batch.iter().map(|p| (p.order_id, p.viewer)).collect();
    let mut orders: HashMap<Uuid, OrderRow> = store::orders::lock_visible_many(&mut tx, &wanted)
        .await?
        .into_iter()
        .map(|o| (o.id, o))
        .collect();
    // Decide each pay in arrival order: the first pay of a PENDING order moves it, a later
    // one in the same group finds it PAID.
    let mut paying: Vec<usize> = Vec::new();
    let mut decided: Vec<ApiResult<(Uuid, bool)>> = Vec::with_capacity(batch.len());
    for (i, pay) in batch.iter().enumerate() {
        let Some(order) = orders
            .get_mut(&pay.order_id)
            .filter(|o| pay.viewer.may_see(o))
        else {
            decided.push(Err(ApiError::NotFound("order not found".into())));
            continue;
        };
        decided.push(match order.status {
            OrderStatus::Canceled => Err(ApiError::Conflict("the order is canceled".into())),
            OrderStatus::Pending => {
                order.status = OrderStatus::Paid;
                paying.push(i);
                Ok((order.id, true))
            }
            OrderStatus::Paid | OrderStatus::Fulfilled => Ok((order.id, false)),
        });
    }
    if !paying.is_empty() {
        let pays: Vec<(Uuid, Actor)> = paying
            .iter()
            .map(|&i| (batch[i].order_id, batch[i].actor))
            .collect();
        let request_ids: HashMap<Uuid, &str> = paying
            .iter()
            .filter_map(|&i| Some((batch[i].order_id, batch[i].request_id.as_deref()?)))
            .collect();
        let job_for = |order_id| FulfillOrder {
            order_id,
            request_id: request_ids.get(&order_id).map(|r| (*r).to_owned()),
        };
        let paid = transitions::pay_simulated_locked(&mut tx, &pays, job_for).await?;
        for (id, paid_at) in paid {
            if let Some(order) = orders.get_mut(&id) {
                order.paid_at = Some(paid_at);
            }
        }
    }
    tx.commit().await?;
    Ok(decided
        .into_iter()
        .map(|d| d.map(|(id, now)| (orders[&id].clone(), now)))
        .collect())
}
