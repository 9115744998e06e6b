//! Delivering keys to paid orders: the one routine behind a job's own order, a batch of
//! waiting orders and a replenishment (a batch of one is just a batch).
//!
//! The rules, in one place:
//! - orders are served oldest paid first; an order gets exactly `quantity` distinct keys,
//!   all at once, or none delivered;
//! - the first order that cannot be completed keeps the keys that are left (RESERVED, so
//!   later orders cannot take them) and waits (backordered); every later order of the
//!   batch waits behind it;
//! - an order paid after one of its pool's orders that already waits outside the batch
//!   claims nothing: keys that arrive go to the oldest waiting order first.
//!
//! Every statement is bound to an index by equality or by a bounded `LIMIT` in index
//! order: `orders_pkey`, `orders_fresh_idx`, `orders_backordered_idx`,
//! `keys_order_idx`, `keys_pool_status_idx` (its `status = 'AVAILABLE'` range).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::{
    announce::Announce, error::CoreError, model::ORDER_FULFILLED_CHANNEL, model::OrderStatus,
};

/// What happened to one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Keys delivered, order FULFILLED.
    Fulfilled { keys: i64 },
    /// Not enough keys: `reserved` of `quantity` are held for the order, which waits.
    Backordered { reserved: i64, quantity: i64 },
    /// Nothing to do: the order is not PAID (already fulfilled, canceled, or unpaid), or
    /// it has no pool (a MANUAL offer's).
    NothingToDo,
}

/// An order row-locked for delivery.
#[derive(Debug, Clone, FromRow)]
pub struct Locked {
    pub id: Uuid,
    pub pool_id: Option<Uuid>,
    pub quantity: i32,
    pub status: OrderStatus,
    pub paid_at: Option<DateTime<Utc>>,
}

/// Which orders to lock for a delivery.
#[derive(Debug, Clone, Copy)]
pub enum Take {
    /// This order, waiting for its lock (a job's own order). Locked whatever its status,
    /// so the caller can tell a missing order from a finished one.
    One(Uuid),
    /// Up to `limit` PAID orders of `pool_id` whose own job has not served them yet,
    /// oldest paid first, skipping any another transaction holds, `except` excluded.
    Fresh {
        pool_id: Uuid,
        except: Uuid,
        limit: i64,
    },
    /// The `limit` oldest backordered orders of `pool_id`, waiting for their locks (a
    /// replenishment: strictly in order). Orders whose own job has not run are left to it.
    Waiting { pool_id: Uuid, limit: i64 },
}

pub const LOCK_ONE: &str =
    "SELECT id, pool_id, quantity, status, paid_at FROM orders WHERE id = $1 FOR UPDATE";
pub const LOCK_FRESH: &str = "SELECT id, pool_id, quantity, status, paid_at FROM orders
     WHERE pool_id = $1 AND status = 'PAID' AND backordered_at IS NULL AND id <> $2
     ORDER BY paid_at, id LIMIT $3 FOR UPDATE SKIP LOCKED";
pub const LOCK_WAITING: &str = "SELECT id, pool_id, quantity, status, paid_at FROM orders
     WHERE pool_id = $1 AND status = 'PAID' AND backordered_at IS NOT NULL
     ORDER BY paid_at, id LIMIT $2 FOR UPDATE";

pub const LOCK_MANY: &str = "SELECT id, pool_id, quantity, status, paid_at FROM orders
     WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// Several jobs' own orders at once (a fast lane group), each waiting for its lock,
/// whatever its status. Locked in id order, so two groups cannot deadlock on them.
pub async fn lock_many(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<Locked>, sqlx::Error> {
    sqlx::query_as(LOCK_MANY).bind(ids).fetch_all(conn).await
}

/// The one order lock of deliveries.
pub async fn lock(conn: &mut PgConnection, take: Take) -> Result<Vec<Locked>, sqlx::Error> {
    match take {
        Take::One(id) => sqlx::query_as(LOCK_ONE).bind(id).fetch_all(conn).await,
        Take::Fresh {
            pool_id,
            except,
            limit,
        } => {
            sqlx::query_as(LOCK_FRESH)
                .bind(pool_id)
                .bind(except)
                .bind(limit)
                .fetch_all(conn)
                .await
        }
        Take::Waiting { pool_id, limit } => {
            sqlx::query_as(LOCK_WAITING)
                .bind(pool_id)
                .bind(limit)
                .fetch_all(conn)
                .await
        }
    }
}

/// Serializes replenishments of one pool for the rest of the transaction, so backorders
/// are served strictly in order.
pub async fn lock_replenishment(conn: &mut PgConnection, pool_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('autokey:replenish:' || $1::text, 0))",
    )
    .bind(pool_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Delivers to `orders` (locked by the caller's transaction) what their pools allow, by
/// the rules above; returns each order's outcome, in the order given. Fulfilled orders are
/// announced on [`ORDER_FULFILLED_CHANNEL`] in the transaction.
pub async fn deliver(
    conn: &mut PgConnection,
    orders: &[Locked],
) -> Result<Vec<(Uuid, Outcome)>, CoreError> {
    deliver_with(conn, orders, Announce::InTransaction).await
}

/// [`deliver`], saying who announces the fulfilled orders: with `AfterCommit` the caller
/// hands them to its [`crate::announce::Announcer`] once its transaction has committed
/// (the worker: its deliveries' commits would otherwise queue on the NOTIFY lock).
pub async fn deliver_with(
    conn: &mut PgConnection,
    orders: &[Locked],
    announce: Announce,
) -> Result<Vec<(Uuid, Outcome)>, CoreError> {
    let channel = (announce == Announce::InTransaction).then_some(ORDER_FULFILLED_CHANNEL);
    // Pools in id order: two batches spanning the same pools (fast lane groups) take
    // their pools' locks in the same order and cannot deadlock.
    let mut by_pool: std::collections::BTreeMap<Uuid, Vec<Member>> = Default::default();
    for o in orders {
        if let (OrderStatus::Paid, Some(pool_id), Some(paid_at)) = (o.status, o.pool_id, o.paid_at)
        {
            by_pool.entry(pool_id).or_default().push(Member {
                id: o.id,
                quantity: i64::from(o.quantity),
                paid_at,
            });
        }
    }
    // Every pool is planned (reads and key locks only) before anything is written, and
    // the plans are written by one statement: the pools' counter rows and owed-units
    // stripes, which the write's triggers update and hold to the commit, are then held
    // only from the end of the write to the commit, not across the other pools' reads.
    // Every delivery of a pool queues on its counter row, so that hold is the pool's
    // pace (measured: a fast lane group of 10 pools held the first pool's row across
    // ~30 round trips).
    let mut outcomes: HashMap<Uuid, Outcome> = HashMap::new();
    let mut plan = Plan::default();
    for (pool_id, mut members) in by_pool {
        members.sort_by_key(|m| (m.paid_at, m.id));
        outcomes.extend(plan_pool(conn, pool_id, &members, &mut plan).await?);
    }
    plan.write(conn, channel).await?;
    Ok(orders
        .iter()
        .map(|o| {
            let outcome = outcomes.get(&o.id).copied().unwrap_or(Outcome::NothingToDo);
            (o.id, outcome)
        })
        .collect())
}

#[derive(Debug, Clone, Copy)]
struct Member {
    id: Uuid,
    quantity: i64,
    paid_at: DateTime<Utc>,
}

/// In one round trip: the keys already held for the batch's orders `$2` (a backorder's
/// partial reservation; `order_id` set, oldest first), then the first order of pool `$1`
/// that waits outside the batch (`order_id` NULL, its own id and `paid_at`), if any. Each
/// branch is an index path of its own (`keys_order_idx`, `orders_backordered_idx`).
pub const HELD_AND_FIRST_WAITING: &str = "SELECT order_id, id, paid_at FROM (
         SELECT order_id, id, NULL::timestamptz AS paid_at, created_at FROM keys
         WHERE order_id = ANY($2) AND status = 'RESERVED'
         UNION ALL
         (SELECT NULL::uuid, id, paid_at, NULL::timestamptz FROM orders
          WHERE pool_id = $1 AND status = 'PAID' AND backordered_at IS NOT NULL
            AND id <> ALL($2)
          ORDER BY paid_at, id LIMIT 1)) x
     ORDER BY created_at, id";
pub const CLAIM_KEYS: &str = "SELECT id FROM keys WHERE pool_id = $1 AND status = 'AVAILABLE'
     ORDER BY created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED";

/// Plans the delivery to `members` (PAID orders of one pool, locked, oldest paid first)
/// into `plan`: reads, and locks the keys it claims; writes nothing.
async fn plan_pool(
    conn: &mut PgConnection,
    pool_id: Uuid,
    members: &[Member],
    plan: &mut Plan,
) -> Result<Vec<(Uuid, Outcome)>, CoreError> {
    let ids: Vec<Uuid> = members.iter().map(|m| m.id).collect();
    let mut held: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    // Members paid after an order that already waits outside the batch queue behind it.
    let mut first_waiting: Option<(DateTime<Utc>, Uuid)> = None;
    let rows: Vec<(Option<Uuid>, Uuid, Option<DateTime<Utc>>)> =
        sqlx::query_as(HELD_AND_FIRST_WAITING)
            .bind(pool_id)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
    for row in rows {
        match row {
            (Some(order_id), key_id, _) => held.entry(order_id).or_default().push(key_id),
            (None, order_id, Some(paid_at)) => first_waiting = Some((paid_at, order_id)),
            (None, _, None) => {
                return Err(CoreError::invariant("a waiting order without paid_at"));
            }
        }
    }
    let held_of = |m: &Member| held.get(&m.id).map_or(&[][..], Vec::as_slice);
    let open = members
        .iter()
        .take_while(|m| first_waiting.is_none_or(|w| (m.paid_at, m.id) < w))
        .count();
    let need: i64 = members[..open]
        .iter()
        .map(|m| (m.quantity - held_of(m).len() as i64).max(0))
        .sum();
    let fresh: Vec<Uuid> = if need > 0 {
        sqlx::query_scalar(CLAIM_KEYS)
            .bind(pool_id)
            .bind(need)
            .fetch_all(&mut *conn)
            .await?
    } else {
        Vec::new()
    };

    let mut outcomes = Vec::with_capacity(members.len());
    let mut next = 0;
    let mut short = false;
    for (i, m) in members.iter().enumerate() {
        let have = held_of(m);
        if have.len() as i64 > m.quantity {
            return Err(CoreError::invariant(format!(
                "order {} holds {} keys for a quantity of {}",
                m.id,
                have.len(),
                m.quantity
            )));
        }
        let missing = (m.quantity - have.len() as i64).max(0) as usize;
        if i < open && !short && missing <= fresh.len() - next {
            let keys = have.iter().chain(&fresh[next..next + missing]);
            plan.deliveries.extend(keys.map(|&k| (k, m.id)));
            next += missing;
            plan.fulfilled.push(m.id);
            outcomes.push((m.id, Outcome::Fulfilled { keys: m.quantity }));
            continue;
        }
        let mut reserved = have.len();
        if i < open && !short {
            // The first order that cannot be completed keeps what is left.
            plan.reservations
                .extend(fresh[next..].iter().map(|&k| (k, m.id)));
            reserved += fresh.len() - next;
            next = fresh.len();
            short = true;
        }
        plan.backordered.push(m.id);
        outcomes.push((
            m.id,
            Outcome::Backordered {
                reserved: reserved as i64,
                quantity: m.quantity,
            },
        ));
    }
    Ok(outcomes)
}

/// The writes of one delivery, applied by one statement, whatever the number of pools.
#[derive(Debug, Default)]
struct Plan {
    /// (key, order): keys delivered.
    deliveries: Vec<(Uuid, Uuid)>,
    /// (key, order): AVAILABLE keys reserved for a waiting order.
    reservations: Vec<(Uuid, Uuid)>,
    fulfilled: Vec<Uuid>,
    backordered: Vec<Uuid>,
}

/// The orders' status is tested with `IS NOT DISTINCT FROM` (the same, for a NOT NULL
/// column) because the planner cannot prove a partial index's `status = 'PAID'` from it:
/// each order is then found by its primary key only. With `=`, and statistics that call
/// `orders` small, the planner scanned all of `orders_fresh_idx` (every fresh paid order
/// of every pool) on each write; `tests/tests/plans.rs` refuses such a plan.
pub const WRITE: &str = concat!(
    "WITH dk AS (SELECT * FROM unnest($1::uuid[], $2::uuid[]) AS t(key_id, order_id)),
     rk AS (SELECT * FROM unnest($3::uuid[], $4::uuid[]) AS t(key_id, order_id)),
     d AS (INSERT INTO order_deliveries (order_id, key_id) SELECT order_id, key_id FROM dk RETURNING 1),
     kd AS (UPDATE keys k SET status = 'DELIVERED', order_id = dk.order_id, delivered_at = now()
            FROM dk WHERE k.id = dk.key_id
              AND (k.status = 'AVAILABLE' OR (k.status = 'RESERVED' AND k.order_id = dk.order_id))
            RETURNING 1),
     kr AS (UPDATE keys k SET status = 'RESERVED', order_id = rk.order_id, reserved_at = now()
            FROM rk WHERE k.id = rk.key_id AND k.status = 'AVAILABLE' RETURNING 1),
     f AS (UPDATE orders o SET status = 'FULFILLED', fulfilled_at = now()
           FROM unnest($5::uuid[]) AS t(id) WHERE o.id = t.id AND o.status IS NOT DISTINCT FROM 'PAID'
           RETURNING ",
    crate::order_event_columns!("o"),
    "),
     b AS (UPDATE orders o SET backordered_at = now()
           FROM unnest($6::uuid[]) AS t(id)
           WHERE o.id = t.id AND o.status IS NOT DISTINCT FROM 'PAID' AND o.backordered_at IS NULL
           RETURNING ",
    crate::order_event_columns!("o"),
    "),
     ef AS (",
    crate::order_events!("order.fulfilled", "f"),
    "),
     eb AS (",
    crate::order_events!("order.backordered", "b"),
    ")
     SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM kd), (SELECT count(*) FROM kr),
            (SELECT count(*) FROM f),
            (SELECT count(*) FROM (SELECT pg_notify($7, id::text) FROM f WHERE $7::text IS NOT NULL) n)"
);

impl Plan {
    /// `channel`: where fulfilled orders are announced in the transaction (None: the
    /// caller announces them after its commit).
    async fn write(self, conn: &mut PgConnection, channel: Option<&str>) -> Result<(), CoreError> {
        if self.deliveries.is_empty() && self.reservations.is_empty() && self.backordered.is_empty()
        {
            return Ok(());
        }
        let (dk, do_): (Vec<Uuid>, Vec<Uuid>) = self.deliveries.iter().copied().unzip();
        let (rk, ro): (Vec<Uuid>, Vec<Uuid>) = self.reservations.iter().copied().unzip();
        // The UNIQUE on order_deliveries.key_id refuses a second delivery of any key, even
        // if the checks here were wrong; the counts below refuse a partial one.
        let (delivered, keys_delivered, keys_reserved, fulfilled, _notified): (
            i64,
            i64,
            i64,
            i64,
            i64,
        ) = sqlx::query_as(WRITE)
            .bind(&dk)
            .bind(&do_)
            .bind(&rk)
            .bind(&ro)
            .bind(&self.fulfilled)
            .bind(&self.backordered)
            .bind(channel)
            .fetch_one(conn)
            .await?;
        let n = dk.len() as i64;
        if (delivered, keys_delivered, keys_reserved, fulfilled)
            != (n, n, rk.len() as i64, self.fulfilled.len() as i64)
        {
            return Err(CoreError::invariant(format!(
                "a delivery of {n} keys to {} orders and {} reservations wrote \
                 {delivered} deliveries, {keys_delivered} delivered keys, {keys_reserved} \
                 reserved keys and {fulfilled} fulfilled orders",
                self.fulfilled.len(),
                rk.len()
            )));
        }
        Ok(())
    }
}
