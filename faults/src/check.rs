//! After the faults: quiescence, then the checks, through SQL and through the API, of
//! everything the clients did against what the database and the api say.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use futures::StreamExt;
use rand::seq::SliceRandom;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    Res,
    api::Auth,
    load::{Ctx, OrderRec, keys_of},
};

/// Jobs of ours still to run: queued or running, or failed with a retry to come.
const UNFINISHED_JOBS: &str = "SELECT
    count(*) FILTER (WHERE status IN ('Pending', 'Queued', 'Running')),
    count(*) FILTER (WHERE status = 'Failed' AND attempts < max_attempts)
  FROM apalis.jobs WHERE job_type IN ('autokey::fulfill_order', 'autokey::replenish_pool')";

/// Paid orders waiting in a pool that has keys to give: work the workers still owe.
const SERVABLE_WAITING: &str = "SELECT count(*) FROM orders o JOIN key_pools p ON p.id = o.pool_id
  WHERE o.status = 'PAID' AND p.available_keys > 0";

/// Waits until no job is queued, running or due for a retry, and every PAID order left
/// waits in a pool without an AVAILABLE key. Err(state) on timeout.
pub async fn quiesce(db: &PgPool, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < limit {
        let state: Result<((i64, i64), i64), sqlx::Error> = async {
            let jobs: (i64, i64) = sqlx::query_as(UNFINISHED_JOBS).fetch_one(db).await?;
            let waiting: i64 = sqlx::query_scalar(SERVABLE_WAITING).fetch_one(db).await?;
            Ok((jobs, waiting))
        }
        .await;
        match state {
            Ok(((0, 0), 0)) => return Ok(started.elapsed()),
            Ok(((active, retrying), waiting)) => {
                last = format!(
                    "{active} jobs queued or running, {retrying} failed jobs waiting for a retry, \
                     {waiting} paid orders waiting in pools that have keys"
                );
            }
            Err(e) => last = format!("cannot read the queue: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

#[derive(Default, Debug)]
pub struct Verdict {
    pub paid: u64,
    pub fulfilled: u64,
    pub backordered: u64,
    pub canceled: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub violations: Vec<String>,
    pub api_verified: usize,
    /// Orders that waited for keys at some point (backorders), and jobs that ran more
    /// than once (after a failure, or taken over from a killed worker).
    pub ever_backordered: i64,
    pub jobs: i64,
    pub jobs_rerun: i64,
    /// Finished jobs by who finished them: the fast lane, another job's batch, the queue's
    /// workers (the fallback: a lane that was killed, failed, or did not take the job).
    pub done_by: (i64, i64, i64),
}

impl Verdict {
    fn violation(&mut self, v: String) {
        if self.violations.len() < 200 {
            self.violations.push(v);
        } else if self.violations.len() == 200 {
            self.violations.push("(more violations not listed)".into());
        }
    }
    fn duplicate(&mut self, n: u64, v: String) {
        self.duplicates += n;
        self.violation(v);
    }
    fn lost(&mut self, n: u64, v: String) {
        self.lost += n;
        self.violation(v);
    }
}

/// One order as the database has it.
struct DbOrder {
    status: String,
    quantity: i64,
    pool_id: Option<Uuid>,
    payment_id: Option<String>,
    deliveries: i64,
    distinct_keys: i64,
    /// Deliveries whose key is not DELIVERED to this order, or is of another pool.
    bad_deliveries: i64,
    reserved: i64,
    delivered_keys: i64,
}

struct DbPool {
    total: i64,
    available: i64,
    reserved: i64,
    delivered: i64,
    invalid: i64,
}

pub async fn verify(
    ctx: &Ctx,
    db: &PgPool,
    orders: &[OrderRec],
    api_verify_max: usize,
) -> Res<Verdict> {
    let mut v = Verdict::default();

    // ---- orders, from the database
    type OrderRow = (
        Uuid,
        String,
        i32,
        Option<Uuid>,
        Option<String>,
        i64,
        i64,
        i64,
        i64,
        i64,
    );
    let rows: Vec<OrderRow> = sqlx::query_as(
        "SELECT o.id, o.status, o.quantity, o.pool_id, o.payment_id,
                coalesce(d.n, 0), coalesce(d.distinct_keys, 0), coalesce(d.bad, 0),
                coalesce(k.reserved, 0), coalesce(k.delivered, 0)
         FROM orders o
         LEFT JOIN (SELECT d.order_id, count(*) AS n, count(DISTINCT d.key_id) AS distinct_keys,
                           count(*) FILTER (WHERE k.status <> 'DELIVERED' OR k.order_id IS DISTINCT FROM d.order_id
                                              OR k.pool_id IS DISTINCT FROM o.pool_id) AS bad
                    FROM order_deliveries d JOIN keys k ON k.id = d.key_id JOIN orders o ON o.id = d.order_id
                    GROUP BY d.order_id) d ON d.order_id = o.id
         LEFT JOIN (SELECT order_id, count(*) FILTER (WHERE status = 'RESERVED') AS reserved,
                           count(*) FILTER (WHERE status = 'DELIVERED') AS delivered
                    FROM keys WHERE order_id IS NOT NULL GROUP BY order_id) k ON k.order_id = o.id",
    )
    .fetch_all(db)
    .await?;
    let db_orders: HashMap<Uuid, DbOrder> = rows
        .into_iter()
        .map(|r| {
            (
                r.0,
                DbOrder {
                    status: r.1,
                    quantity: i64::from(r.2),
                    pool_id: r.3,
                    payment_id: r.4,
                    deliveries: r.5,
                    distinct_keys: r.6,
                    bad_deliveries: r.7,
                    reserved: r.8,
                    delivered_keys: r.9,
                },
            )
        })
        .collect();

    // ---- pools, from the database
    let pool_rows: Vec<(Uuid, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT id, total_keys, available_keys, reserved_keys, delivered_keys, invalid_keys FROM key_pools",
    )
    .fetch_all(db)
    .await?;
    let db_pools: HashMap<Uuid, DbPool> = pool_rows
        .into_iter()
        .map(|r| {
            (
                r.0,
                DbPool {
                    total: r.1,
                    available: r.2,
                    reserved: r.3,
                    delivered: r.4,
                    invalid: r.5,
                },
            )
        })
        .collect();

    // ---- every order a client placed
    let mut known: HashSet<Uuid> = HashSet::with_capacity(orders.len());
    let mut fulfilled_ids = Vec::new();
    for o in orders {
        if !known.insert(o.id) {
            v.duplicate(1, format!("order {} was handed to two clients", o.id));
            continue;
        }
        let pool_id = ctx.pools[o.pool].id;
        let Some(d) = db_orders.get(&o.id) else {
            v.lost(1, format!("order {} (paid) is not in the database", o.id));
            continue;
        };
        v.paid += 1;
        if d.pool_id != Some(pool_id) || d.quantity != o.quantity {
            v.violation(format!(
                "order {}: pool {:?} quantity {} in the database, placed for pool {pool_id} quantity {}",
                o.id, d.pool_id, d.quantity, o.quantity
            ));
        }
        if d.deliveries > d.quantity || d.distinct_keys < d.deliveries {
            v.duplicate(
                (d.deliveries - d.quantity).max(1) as u64,
                format!(
                    "order {} ({}) has {} deliveries of {} distinct keys for quantity {}",
                    o.id, d.status, d.deliveries, d.distinct_keys, d.quantity
                ),
            );
        }
        if d.bad_deliveries > 0 {
            v.violation(format!(
                "order {}: {} delivered keys are not DELIVERED to it, or not of its pool",
                o.id, d.bad_deliveries
            ));
        }
        if o.canceled {
            v.canceled += 1;
            if d.status != "CANCELED" {
                v.violation(format!(
                    "order {}: canceled (200), but {} in the database",
                    o.id, d.status
                ));
            }
            if d.deliveries + d.reserved + d.delivered_keys > 0 {
                v.lost(
                    (d.deliveries.max(d.delivered_keys) + d.reserved) as u64,
                    format!(
                        "canceled order {}: {} deliveries, {} keys RESERVED, {} DELIVERED to it (they should be back in the pool)",
                        o.id, d.deliveries, d.reserved, d.delivered_keys
                    ),
                );
            }
            continue;
        }
        match d.status.as_str() {
            "FULFILLED" => {
                v.fulfilled += 1;
                if d.deliveries < d.quantity || d.delivered_keys != d.quantity || d.reserved != 0 {
                    v.lost(
                        (d.quantity - d.deliveries).max(1) as u64,
                        format!(
                            "fulfilled order {}: {} deliveries, {} keys DELIVERED, {} RESERVED for quantity {}",
                            o.id, d.deliveries, d.delivered_keys, d.reserved, d.quantity
                        ),
                    );
                }
                fulfilled_ids.push(o);
            }
            "PAID" => {
                let available = db_pools.get(&pool_id).map(|p| p.available).unwrap_or(-1);
                if available == 0 && d.deliveries == 0 && d.reserved < d.quantity {
                    v.backordered += 1;
                } else {
                    v.lost(
                        1,
                        format!(
                            "order {} is still PAID ({} keys reserved of {}, {} deliveries) while its pool has {available} available keys",
                            o.id, d.reserved, d.quantity, d.deliveries
                        ),
                    );
                }
            }
            "CANCELED" => v.violation(format!(
                "order {} is CANCELED, but no cancel of it succeeded",
                o.id
            )),
            s => v.lost(1, format!("order {} was paid, but is {s}", o.id)),
        }
    }
    for id in db_orders.keys() {
        if !known.contains(id) {
            v.duplicate(
                1,
                format!(
                    "order {id} is in the database but no client placed it (a retry made two?)"
                ),
            );
        }
    }

    // ---- keys
    let (twice, unrecorded, stray_reserved): (i64, i64, i64) = sqlx::query_as(
        "SELECT
           (SELECT count(*) FROM (SELECT key_id FROM order_deliveries GROUP BY key_id HAVING count(*) > 1) t),
           (SELECT count(*) FROM keys k WHERE k.status = 'DELIVERED' AND NOT EXISTS
               (SELECT 1 FROM order_deliveries d WHERE d.key_id = k.id AND d.order_id = k.order_id)),
           (SELECT count(*) FROM keys k JOIN orders o ON o.id = k.order_id
             WHERE k.status = 'RESERVED' AND o.status <> 'PAID')",
    )
    .fetch_one(db)
    .await?;
    if twice > 0 {
        v.duplicate(
            twice as u64,
            format!("{twice} keys were delivered more than once"),
        );
    }
    if unrecorded > 0 {
        v.violation(format!(
            "{unrecorded} DELIVERED keys have no matching delivery record"
        ));
    }
    if stray_reserved > 0 {
        v.lost(
            stray_reserved as u64,
            format!("{stray_reserved} keys are RESERVED for orders that are not PAID"),
        );
    }

    // ---- pools: uploaded = available + reserved + delivered + invalid
    let by_status: Vec<(Uuid, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT pool_id, count(*),
                count(*) FILTER (WHERE status = 'AVAILABLE'), count(*) FILTER (WHERE status = 'RESERVED'),
                count(*) FILTER (WHERE status = 'DELIVERED'), count(*) FILTER (WHERE status = 'INVALID')
         FROM keys GROUP BY pool_id",
    )
    .fetch_all(db)
    .await?;
    let by_status: HashMap<Uuid, (i64, i64, i64, i64, i64)> = by_status
        .into_iter()
        .map(|r| (r.0, (r.1, r.2, r.3, r.4, r.5)))
        .collect();
    let demand: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "SELECT pool_id, coalesce(sum(quantity) FILTER (WHERE status = 'FULFILLED'), 0)::bigint,
                count(*) FILTER (WHERE status = 'PAID')
         FROM orders GROUP BY pool_id",
    )
    .fetch_all(db)
    .await?;
    let demand: HashMap<Uuid, (i64, i64)> = demand.into_iter().map(|r| (r.0, (r.1, r.2))).collect();
    for (i, p) in ctx.pools.iter().enumerate() {
        let uploaded = ctx.uploaded[i].load(std::sync::atomic::Ordering::Relaxed) as i64;
        let Some(c) = db_pools.get(&p.id) else {
            v.violation(format!("pool {} is missing", p.id));
            continue;
        };
        let sum = c.available + c.reserved + c.delivered + c.invalid;
        if uploaded != sum || uploaded != c.total {
            let n = (uploaded - sum).unsigned_abs();
            let what = format!(
                "pool {i}: uploaded {uploaded} keys, total {} = {} available + {} reserved + {} delivered + {} invalid",
                c.total, c.available, c.reserved, c.delivered, c.invalid
            );
            if uploaded > sum {
                v.lost(n, what);
            } else {
                v.duplicate(n.max(1), what);
            }
        }
        let counted = by_status.get(&p.id).copied().unwrap_or_default();
        if counted != (c.total, c.available, c.reserved, c.delivered, c.invalid) {
            v.violation(format!(
                "pool {i}: counters (total, available, reserved, delivered, invalid) = {:?}, keys by status = {counted:?}",
                (c.total, c.available, c.reserved, c.delivered, c.invalid)
            ));
        }
        let (sold, _) = demand.get(&p.id).copied().unwrap_or_default();
        if sold != c.delivered {
            v.violation(format!(
                "pool {i}: {} keys DELIVERED, but its FULFILLED orders add up to {sold}",
                c.delivered
            ));
        }
        // The same counts through the API.
        let r = ctx
            .api
            .get(&format!("/key-pools/{}", p.id), Auth::Seller)
            .await?;
        let api_counts = (
            r.body["totalKeys"].as_i64(),
            r.body["availableKeys"].as_i64(),
            r.body["reservedKeys"].as_i64(),
            r.body["deliveredKeys"].as_i64(),
            r.body["invalidKeys"].as_i64(),
        );
        if api_counts
            != (
                Some(c.total),
                Some(c.available),
                Some(c.reserved),
                Some(c.delivered),
                Some(c.invalid),
            )
        {
            v.violation(format!(
                "pool {i}: GET /key-pools says {api_counts:?}, the database ({}, {}, {}, {}, {})",
                c.total, c.available, c.reserved, c.delivered, c.invalid
            ));
        }
    }

    // ---- webhook events: each applied exactly once, to its order
    let events: Vec<(String, Option<Uuid>, String)> =
        sqlx::query_as("SELECT event_id, order_id, outcome FROM payment_events")
            .fetch_all(db)
            .await?;
    let mut events: HashMap<String, (Option<Uuid>, String)> = events
        .into_iter()
        .map(|(e, o, out)| (e, (o, out)))
        .collect();
    for o in orders {
        let Some(w) = &o.webhook else { continue };
        if w.applied_answers > 1 {
            v.duplicate(
                1,
                format!(
                    "webhook {} for order {} was answered `applied` {} times",
                    w.event_id, o.id, w.applied_answers
                ),
            );
        }
        match events.remove(&w.event_id) {
            None => v.lost(
                1,
                format!("webhook {} (order {}) is not recorded", w.event_id, o.id),
            ),
            Some((order_id, outcome)) => {
                if order_id != Some(o.id) || outcome != "applied" {
                    v.violation(format!(
                        "webhook {} for order {}: recorded for {order_id:?} with outcome {outcome}",
                        w.event_id, o.id
                    ));
                }
                let paid_by = db_orders.get(&o.id).and_then(|d| d.payment_id.clone());
                if paid_by.as_deref() != Some(w.payment_id.as_str()) {
                    v.violation(format!(
                        "order {} paid by webhook {}: payment id {paid_by:?}, sent {}",
                        o.id, w.event_id, w.payment_id
                    ));
                }
            }
        }
    }
    for (event, (order, outcome)) in events {
        v.violation(format!(
            "payment event {event} (order {order:?}, {outcome}) was never sent by a client"
        ));
    }

    // ---- jobs: none running, orphaned or dead
    let (active, retrying): (i64, i64) = sqlx::query_as(UNFINISHED_JOBS).fetch_one(db).await?;
    if active + retrying > 0 {
        v.violation(format!(
            "{active} jobs still queued or running, {retrying} waiting for a retry"
        ));
    }
    let dead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs
         WHERE job_type IN ('autokey::fulfill_order', 'autokey::replenish_pool')
           AND (status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts))",
    )
    .fetch_one(db)
    .await?;
    if dead > 0 {
        v.violation(format!("{dead} jobs are dead"));
    }
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders o WHERE o.status = 'PAID' AND NOT EXISTS
           (SELECT 1 FROM apalis.jobs j WHERE j.job_type = 'autokey::fulfill_order'
              AND j.idempotency_key = o.id::text)",
    )
    .fetch_one(db)
    .await?;
    if orphans > 0 {
        v.violation(format!(
            "{orphans} paid orders have no fulfillment job (orphaned)"
        ));
    }

    (v.ever_backordered, v.jobs, v.jobs_rerun) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders WHERE backordered_at IS NOT NULL),
                (SELECT count(*) FROM apalis.jobs WHERE job_type IN ('autokey::fulfill_order', 'autokey::replenish_pool')),
                (SELECT count(*) FROM apalis.jobs WHERE job_type IN ('autokey::fulfill_order', 'autokey::replenish_pool')
                   AND attempts > 1)",
    )
    .fetch_one(db)
    .await?;
    v.done_by = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE last_result->>'Ok' = 'served by the fast lane'),
                count(*) FILTER (WHERE last_result->>'Ok' = 'served in a batch'),
                count(*) FILTER (WHERE last_result->>'Ok' IS DISTINCT FROM 'served by the fast lane'
                                   AND last_result->>'Ok' IS DISTINCT FROM 'served in a batch')
         FROM apalis.jobs
         WHERE job_type IN ('autokey::fulfill_order', 'autokey::replenish_pool') AND status = 'Done'",
    )
    .fetch_one(db)
    .await?;

    // ---- through the API: the keys of fulfilled orders (all, or a sample)
    let mut sample: Vec<&OrderRec> = fulfilled_ids;
    if sample.len() > api_verify_max {
        sample.shuffle(&mut rand::thread_rng());
        sample.truncate(api_verify_max);
    }
    let delivered: HashMap<Uuid, Vec<Uuid>> = {
        let ids: Vec<Uuid> = sample.iter().map(|o| o.id).collect();
        let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT order_id, key_id FROM order_deliveries WHERE order_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(db)
        .await?;
        let mut m: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for (o, k) in rows {
            m.entry(o).or_default().push(k);
        }
        m
    };
    let results: Vec<_> = futures::stream::iter(sample.iter().map(|o| {
        let path = format!("/orders/{}", o.id);
        async move { (*o, ctx.api.get(&path, Auth::Storefront).await) }
    }))
    .buffer_unordered(16)
    .collect()
    .await;
    let uploaded_keys = ctx.keys.lock().unwrap();
    let mut owner: HashMap<String, Uuid> = HashMap::new();
    for (o, r) in results {
        let r = r?;
        v.api_verified += 1;
        if r.status != 200 || r.body["status"] != "FULFILLED" {
            v.violation(format!(
                "GET /orders/{}: {} {} (FULFILLED in the database)",
                o.id, r.status, r.body["status"]
            ));
            continue;
        }
        let keys = keys_of(&r.body);
        let ids: HashSet<Uuid> = keys.iter().map(|k| k.0).collect();
        let want: HashSet<Uuid> = delivered
            .get(&o.id)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default();
        if keys.len() as i64 != o.quantity || ids.len() != keys.len() || ids != want {
            v.violation(format!(
                "GET /orders/{}: {} keys ({} distinct ids) for quantity {}, {} delivered in the database",
                o.id,
                keys.len(),
                ids.len(),
                o.quantity,
                want.len()
            ));
        }
        for (_, plain) in &keys {
            match uploaded_keys.get(plain) {
                Some(&p) if p == o.pool => {}
                Some(&p) => v.violation(format!(
                    "order {} (pool {}) got a key uploaded to pool {p}",
                    o.id, o.pool
                )),
                None => v.violation(format!("order {} got a key nobody uploaded", o.id)),
            }
            if let Some(other) = owner.insert(plain.clone(), o.id)
                && other != o.id
            {
                v.duplicate(
                    1,
                    format!("one key was delivered to orders {other} and {}", o.id),
                );
            }
        }
        if let Some(seen) = &o.seen_keys {
            let mut a = seen.clone();
            let mut b = keys.clone();
            a.sort();
            b.sort();
            if a != b {
                v.violation(format!(
                    "order {}: fulfill answered other keys than the order has now",
                    o.id
                ));
            }
        }
    }
    Ok(v)
}
