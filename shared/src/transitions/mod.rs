//! Every change of a key's or an order's status, and nowhere else. The money rule — a
//! key goes to one order, once — is these functions plus the constraints under them
//! (`order_deliveries_key_unique`, `keys_order_matches_status`, the counters' CHECKs).
//!
//! | transition | key | order | where |
//! |---|---|---|---|
//! | pay | | PENDING -> PAID (+ its fulfillment job) | [`pay`] |
//! | cancel | RESERVED -> AVAILABLE | PENDING/PAID -> CANCELED | [`cancel`] |
//! | invalidate | AVAILABLE -> INVALID | | [`invalidate`] |
//! | reserve | AVAILABLE -> RESERVED | PAID, backordered | [`delivery::deliver`] |
//! | deliver | AVAILABLE/RESERVED -> DELIVERED | PAID -> FULFILLED | [`delivery::deliver`] |
//! | deliver by hand (MANUAL) | (keys the seller gives) | PAID -> FULFILLED | [`manual::deliver`] |
//! | approve a key report | DELIVERED -> INVALID (`replaced`) | | [`replacement::approve`] |
//! | replace | AVAILABLE -> DELIVERED (to the same order) | | [`replacement::serve_waiting`] |
//! | refund a delivery | DELIVERED -> AVAILABLE (never revealed) or INVALID (`refunded`) | FULFILLED (+ `refunded_at`) | [`refund::refund_fulfilled`] |
//!
//! Every function runs on the caller's transaction, on rows the caller has locked where
//! it says so; the caller commits.

pub mod delivery;
pub mod manual;
pub mod refund;
pub mod replacement;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

pub use crate::jobs::queue::Announce;

use crate::{
    error::CoreError,
    jobs::{FulfillOrder, ReplenishPool, queue},
    store::{audit::Actor, keys::KeyMeta, orders::OrderRow},
};

/// Inserts one event of type `$1` per row of the CTE named by the second argument, which
/// returns an order's `id`, `offer_id`, `pool_id`, `storefront_id` and `data`
/// (`order_json`); the seller is the offer's.
#[macro_export]
#[doc(hidden)]
macro_rules! order_events {
    ($kind:literal, $cte:literal) => {
        concat!(
            "INSERT INTO events (id, type, seller_id, storefront_id, pool_id, order_id, data)
             SELECT gen_random_uuid(), '",
            $kind,
            "', f.seller_id, x.storefront_id, x.pool_id, x.id, x.data
             FROM ",
            $cte,
            " x JOIN offers f ON f.id = x.offer_id"
        )
    };
}

/// What an order event's CTE returns of the changed order.
#[macro_export]
#[doc(hidden)]
macro_rules! order_event_columns {
    ($alias:literal) => {
        concat!(
            $alias,
            ".id, ",
            $alias,
            ".offer_id, ",
            $alias,
            ".pool_id, ",
            $alias,
            ".storefront_id, order_json(",
            $alias,
            ") AS data"
        )
    };
}

/// `p` and `e`: PENDING -> PAID for the orders (`id`, `payment_id`) of `$rows`, returning
/// `paid_at` and [`order_event_columns!`], with their `order.paid` events.
///
/// The status is tested with `IS NOT DISTINCT FROM` (the same, for a NOT NULL column) so
/// that each order is found by its primary key only: with `=`, and statistics taken while
/// `orders` was small and all open, the planner read all of `orders_open_by_offer_idx`
/// (every PENDING and PAID order) on each pay and kept that plan as the backlog grew:
/// measured during an API-built launch (auto_explain), 1,922 pays over 8 ms, each reading
/// up to 8,900 open orders.
macro_rules! pay_ctes {
    ($rows:literal) => {
        concat!(
            "p AS (UPDATE orders o SET status = 'PAID', paid_at = now(), payment_id = t.payment_id
                 FROM ",
            $rows,
            "
                 WHERE o.id = t.id AND o.status IS NOT DISTINCT FROM 'PENDING'
                 RETURNING o.paid_at, ",
            order_event_columns!("o"),
            "),
             e AS (",
            order_events!("order.paid", "p"),
            ")"
        )
    };
}

pub const PAY: &str = concat!(
    "WITH ",
    pay_ctes!("unnest($1::uuid[], $2::text[]) AS t(id, payment_id)"),
    " SELECT id, paid_at FROM p"
);

/// PENDING -> PAID for several orders at once, each with its fulfillment job, on the same
/// transaction (one statement each). Returns the orders that moved, with their `paid_at`;
/// orders not PENDING are left unchanged. `announce`: who tells the worker's fast lane
/// (with `AfterCommit`, the caller hands the returned ids to its `LaneAnnouncer`).
pub async fn pay_many(
    conn: &mut PgConnection,
    payments: &[(Uuid, Option<&str>)],
    announce: Announce,
) -> Result<Vec<(Uuid, DateTime<Utc>)>, CoreError> {
    pay_many_with(conn, payments, announce, FulfillOrder::new).await
}

/// [`pay_many`], each job made by `job_for` (a group of pays from several HTTP requests
/// gives each job its own request's id).
pub async fn pay_many_with(
    conn: &mut PgConnection,
    payments: &[(Uuid, Option<&str>)],
    announce: Announce,
    job_for: impl Fn(Uuid) -> FulfillOrder,
) -> Result<Vec<(Uuid, DateTime<Utc>)>, CoreError> {
    let paid = run_pay(&mut *conn, payments).await?;
    let jobs: Vec<FulfillOrder> = paid
        .iter()
        .map(|&(order_id, _)| job_for(order_id))
        .collect();
    queue::enqueue_many_with(conn, &jobs, announce).await?;
    Ok(paid)
}

/// [`PAY`] on `payments` (order, payment id): the orders that moved, with their `paid_at`.
async fn run_pay(
    conn: &mut PgConnection,
    payments: &[(Uuid, Option<&str>)],
) -> Result<Vec<(Uuid, DateTime<Utc>)>, sqlx::Error> {
    let ids: Vec<Uuid> = payments.iter().map(|p| p.0).collect();
    let payment_ids: Vec<Option<&str>> = payments.iter().map(|p| p.1).collect();
    sqlx::query_as(PAY)
        .bind(&ids)
        .bind(&payment_ids)
        .fetch_all(conn)
        .await
}

/// A group of simulated pays in one statement: the orders' fulfillment jobs
/// ([`crate::enqueue_rows!`], `$1` to `$6`), PENDING -> PAID for the orders `$7` with
/// their `order.paid` events, and one `order.paid_simulated` audit row per order moved,
/// for the actor at the same index of `$8` to `$10` (role, subject, token). The audit row
/// names its seller and object itself, so `audit_log_derive` has nothing to look up.
pub const PAY_SIMULATED: &str = concat!(
    "WITH j AS (",
    crate::enqueue_rows!(),
    "),
     ",
    pay_ctes!("(SELECT u.id, NULL::text AS payment_id FROM unnest($7::uuid[]) AS u(id)) t"),
    ",
     a AS (INSERT INTO audit_log
               (actor_role, actor_subject, actor_token_id, action, order_id, seller_id, object_ids)
           SELECT r.role, r.subject, r.token_id, 'order.paid_simulated', p.id, f.seller_id,
                  ARRAY[p.id]
           FROM unnest($7::uuid[], $8::text[], $9::uuid[], $10::uuid[])
                AS r(order_id, role, subject, token_id)
           JOIN p ON p.id = r.order_id JOIN offers f ON f.id = p.offer_id)
     SELECT id, paid_at FROM p"
);

/// PENDING -> PAID for a group of simulated pays, on orders the caller has locked and
/// found PENDING, each given by `(order, who paid)`: their jobs (made by `job_for`; the
/// caller announces them to the fast lane after its commit), `order.paid` events and
/// audit rows, in one statement (one round trip for the group). Its triggers take the
/// owed-units stripes, which the pools' deliveries and other pays wait for, so the
/// caller's commit should follow at once. An order that did not move is an error, and the
/// caller's transaction must then be rolled back.
pub async fn pay_simulated_locked(
    conn: &mut PgConnection,
    pays: &[(Uuid, Actor)],
    job_for: impl Fn(Uuid) -> FulfillOrder,
) -> Result<Vec<(Uuid, DateTime<Utc>)>, CoreError> {
    let jobs: Vec<FulfillOrder> = pays.iter().map(|p| job_for(p.0)).collect();
    let paid: Vec<(Uuid, DateTime<Utc>)> = queue::EnqueueRows::of(&jobs)
        .bind(sqlx::query_as(PAY_SIMULATED))
        .bind(pays.iter().map(|p| p.0).collect::<Vec<_>>())
        .bind(pays.iter().map(|p| p.1.role).collect::<Vec<_>>())
        .bind(pays.iter().map(|p| p.1.subject).collect::<Vec<_>>())
        .bind(pays.iter().map(|p| p.1.token_id).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?;
    if paid.len() != pays.len() {
        return Err(CoreError::invariant(format!(
            "{} of {} locked PENDING orders moved to PAID",
            paid.len(),
            pays.len()
        )));
    }
    Ok(paid)
}

/// PENDING -> PAID, and the order's fulfillment job, on the same transaction: a paid order
/// always has a job (one per order, a database fact). Returns the new `paid_at`, or None
/// (and changes nothing) when the order is not PENDING.
pub async fn pay(
    conn: &mut PgConnection,
    order_id: Uuid,
    payment_id: Option<&str>,
    announce: Announce,
) -> Result<Option<DateTime<Utc>>, CoreError> {
    let paid = pay_many(conn, &[(order_id, payment_id)], announce).await?;
    Ok(paid.first().map(|p| p.1))
}

pub const RELEASE_RESERVED: &str =
    "UPDATE keys SET status = 'AVAILABLE', order_id = NULL, reserved_at = NULL
         WHERE order_id = $1 AND status = 'RESERVED'";

pub const CANCEL: &str = concat!(
    "WITH c AS (UPDATE orders o SET status = 'CANCELED', canceled_at = now()
         WHERE id = $1 AND status IN ('PENDING', 'PAID')
         RETURNING o.*, order_json(o) AS data),
     e AS (",
    order_events!("order.canceled", "c"),
    ")
     SELECT ",
    crate::order_columns!(),
    " FROM c"
);

/// PENDING or PAID -> CANCELED for an order the caller has locked (the caller refuses
/// other statuses). Keys reserved for it return to AVAILABLE, and when some did, its pool
/// gets a replenishment (they may complete other waiting orders). Returns the order as it
/// now is and how many keys were released.
pub async fn cancel(
    conn: &mut PgConnection,
    order: &OrderRow,
) -> Result<(OrderRow, u64), CoreError> {
    let released = sqlx::query(RELEASE_RESERVED)
        .bind(order.id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let canceled: Option<OrderRow> = sqlx::query_as(CANCEL)
        .bind(order.id)
        .fetch_optional(&mut *conn)
        .await?;
    let canceled = canceled.ok_or_else(|| {
        CoreError::invariant(format!(
            "order {} was not PENDING or PAID when canceled",
            order.id
        ))
    })?;
    if released > 0
        && let Some(pool_id) = order.pool_id
    {
        queue::enqueue(conn, &ReplenishPool { pool_id }).await?;
    }
    Ok((canceled, released))
}

pub const EXPIRE_MANUAL_HOLDS: &str = concat!(
    "WITH x AS (SELECT o.id FROM offers f JOIN orders o ON o.offer_id = f.id
                WHERE f.delivery_type = 'MANUAL' AND o.status = 'PENDING' AND o.created_at < $1
                ORDER BY o.created_at LIMIT $2 FOR UPDATE OF o SKIP LOCKED),
     c AS (UPDATE orders o SET status = 'CANCELED', canceled_at = now()
           FROM x WHERE o.id = x.id AND o.status = 'PENDING'
           RETURNING o.*, order_json(o) AS data),
     e AS (",
    order_events!("order.canceled", "c"),
    ")
     SELECT count(*) FROM c"
);

/// PENDING -> CANCELED for up to `limit` unpaid orders of MANUAL offers placed before
/// `placed_before`. A MANUAL order holds its units of the seller's stock from the moment
/// it is placed (so 50 orders at once on a stock of 10 place exactly 10); an abandoned one
/// must not hold them forever. Orders someone else holds locked (a payment arriving) are
/// left for the next pass. Returns how many were canceled, each with its
/// `order.canceled` event.
pub async fn expire_manual_holds(
    conn: &mut PgConnection,
    placed_before: DateTime<Utc>,
    limit: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(EXPIRE_MANUAL_HOLDS)
        .bind(placed_before)
        .bind(limit)
        .fetch_one(conn)
        .await
}

pub const INVALIDATE: &str = concat!(
    "WITH k AS (UPDATE keys SET status = 'INVALID', invalidated_at = now()
         WHERE id = $1 AND status = 'AVAILABLE' RETURNING *),
     e AS (INSERT INTO events (id, type, seller_id, pool_id, data)
           SELECT gen_random_uuid(), 'key.invalidated', p.seller_id, k.pool_id,
                  jsonb_build_object('keyId', k.id, 'poolId', k.pool_id,
                                     'invalidatedAt', k.invalidated_at)
           FROM k JOIN key_pools p ON p.id = k.pool_id)
     SELECT ",
    crate::key_meta_columns!(),
    " FROM k"
);

/// AVAILABLE -> INVALID for a key the caller has locked (so it is never sold), with its
/// `key.invalidated` event. The caller decides what other statuses mean; this refuses
/// anything but AVAILABLE.
pub async fn invalidate(conn: &mut PgConnection, key_id: Uuid) -> Result<KeyMeta, CoreError> {
    let row: Option<KeyMeta> = sqlx::query_as(INVALIDATE)
        .bind(key_id)
        .fetch_optional(conn)
        .await?;
    row.ok_or_else(|| CoreError::invariant(format!("key {key_id} was not AVAILABLE")))
}
