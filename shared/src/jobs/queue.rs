//! The queue's tables (apalis-postgres 1.0's `apalis.jobs` and `apalis.workers`): every
//! statement of the project that reads or writes them. apalis itself fetches, heartbeats
//! and acknowledges; what it leaves to us (enqueue in the caller's transaction, the fast
//! lane's claim, durable retry delays, dead jobs, pruning) is here.

use std::{collections::HashSet, time::Duration};

use sqlx::PgConnection;
use uuid::Uuid;

use super::{FulfillOrder, Job, LANE_CHANNEL, LANE_GRACE, ReplenishPool};

/// Our queues' rows (apalis may share its tables with other applications).
const OURS: &str = "autokey::%";

/// Jobs that will not run again by themselves: out of attempts, or aborted.
const DEAD: &str = "(status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts))";

/// `INSERT INTO apalis.jobs` of the rows [`EnqueueRows`] binds as `$1` to `$6`, returning
/// the ids inserted (a job whose idempotency key or id exists is skipped). Shared by
/// [`ENQUEUE`] and the statements that insert jobs beside their data in one round trip
/// (`transitions::PAY_SIMULATED`).
#[macro_export]
#[doc(hidden)]
macro_rules! enqueue_rows {
    () => {
        "INSERT INTO apalis.jobs
             (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata, idempotency_key)
         SELECT t.id, $2, t.job, 'Pending', 0, $4, now() + $6 * interval '1 millisecond', 0,
                ''::hstore, t.idempotency_key
         FROM unnest($1::text[], $3::bytea[], $5::text[]) AS t(id, job, idempotency_key)
         ON CONFLICT DO NOTHING
         RETURNING id"
    };
}

pub const ENQUEUE: &str = concat!(
    "WITH ins AS (",
    enqueue_rows!(),
    ")
     SELECT (SELECT count(*) FROM ins),
            (SELECT count(*) FROM (SELECT pg_notify($7, id) FROM ins WHERE $7 IS NOT NULL) n)"
);

/// The arguments `$1` to `$6` of [`enqueue_rows!`] for some jobs of one queue.
///
/// The rows mirror apalis-postgres 1.0's `queries/task/sink.sql`; the test
/// `jobs_enqueued_by_sql_run_on_apalis` pins that coupling against a real worker.
pub struct EnqueueRows {
    pub ids: Vec<String>,
    pub queue: &'static str,
    pub payloads: Vec<Vec<u8>>,
    pub max_attempts: i32,
    pub idempotency_keys: Vec<Option<String>>,
    /// How long the queue's own workers leave the jobs alone (a fast lane's grace).
    pub grace_ms: f64,
}

impl EnqueueRows {
    pub fn of<J: Job>(jobs: &[J]) -> Self {
        Self {
            ids: jobs.iter().map(Job::job_id).collect(),
            queue: J::QUEUE,
            payloads: jobs
                .iter()
                .map(|j| serde_json::to_vec(j).expect("job payloads serialize"))
                .collect(),
            max_attempts: J::MAX_ATTEMPTS,
            idempotency_keys: jobs.iter().map(Job::idempotency_key).collect(),
            grace_ms: if J::FAST_LANE {
                LANE_GRACE.as_millis() as f64
            } else {
                0.0
            },
        }
    }

    /// Binds `$1` to `$6` of a statement holding [`enqueue_rows!`].
    pub fn bind<'q, O>(
        self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        query
            .bind(self.ids)
            .bind(self.queue)
            .bind(self.payloads)
            .bind(self.max_attempts)
            .bind(self.idempotency_keys)
            .bind(self.grace_ms)
    }
}

/// Who announces new fast-lane jobs: the enqueuing transaction, or its caller after the
/// commit (`jobs::lane::LaneAnnouncer`, many per NOTIFY: the api's pays).
pub use crate::announce::Announce;

/// Enqueues `jobs` on `conn` (typically inside the caller's transaction), in one statement;
/// fast-lane jobs are announced in the transaction.
/// Returns how many were new: a job whose idempotency key (or id) exists is skipped.
pub async fn enqueue_many<J: Job>(conn: &mut PgConnection, jobs: &[J]) -> Result<u64, sqlx::Error> {
    enqueue_many_with(conn, jobs, Announce::InTransaction).await
}

/// [`enqueue_many`], saying who announces fast-lane jobs.
pub async fn enqueue_many_with<J: Job>(
    conn: &mut PgConnection,
    jobs: &[J],
    announce: Announce,
) -> Result<u64, sqlx::Error> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let lane = (J::FAST_LANE && announce == Announce::InTransaction).then_some(LANE_CHANNEL);
    let (inserted, _announced): (i64, i64) = EnqueueRows::of(jobs)
        .bind(sqlx::query_as(ENQUEUE))
        .bind(lane)
        .fetch_one(conn)
        .await?;
    Ok(inserted as u64)
}

/// Enqueues one job; false when a job with the same idempotency key (or id) exists.
pub async fn enqueue<J: Job>(conn: &mut PgConnection, job: &J) -> Result<bool, sqlx::Error> {
    Ok(enqueue_many(conn, std::slice::from_ref(job)).await? == 1)
}

/// `UPDATE apalis.jobs` finishing jobs as apalis records a success: Done, now, one more
/// attempt, and `why` as the result. Every path that finishes jobs outside apalis's own
/// workers writes these same columns.
macro_rules! finish_jobs {
    ($why:literal) => {
        concat!(
            "UPDATE apalis.jobs SET status = 'Done', done_at = now(), attempts = attempts + 1,
            last_result = jsonb_build_object('Ok', '",
            $why,
            "')"
        )
    };
}

/// `IS NOT DISTINCT FROM` (the same, for NOT NULL columns) leaves the job found by its
/// primary key only: planned on an empty table, `=` made the planner walk every Pending
/// job of the queue in `autokey_jobs_live_idx` (`tests/tests/plans.rs`). The lock is a
/// sub-select (`SKIP LOCKED`), so there is no join the planner could turn around.
pub const CLAIM_AS_SERVED_BY_LANE: &str = concat!(
    finish_jobs!("served by the fast lane"),
    "
     WHERE id = ANY(ARRAY(SELECT id FROM apalis.jobs
                          WHERE id = $1 AND job_type IS NOT DISTINCT FROM $2
                            AND status IS NOT DISTINCT FROM 'Pending'
                          FOR UPDATE SKIP LOCKED))
     RETURNING job"
);

/// Claims job `job_id` of queue `J` for the fast lane, if it is still Pending and nobody
/// holds it, and marks it Done on the caller's transaction, in one round trip: the
/// transaction's commit, after its work, is what finishes the job, and a rollback (the
/// work failed) leaves it Pending. Returns its payload; None when it is not there to take
/// (the queue's workers have it, or it is done), or when its payload does not parse (the
/// caller then commits nothing, so the queue's workers run it and record why it fails).
pub async fn claim_as_served_by_lane<J: Job>(
    conn: &mut PgConnection,
    job_id: &str,
) -> Result<Option<J>, sqlx::Error> {
    let payload: Option<Vec<u8>> = sqlx::query_scalar(CLAIM_AS_SERVED_BY_LANE)
        .bind(job_id)
        .bind(J::QUEUE)
        .fetch_optional(conn)
        .await?;
    Ok(payload.and_then(|p| serde_json::from_slice(&p).ok()))
}

pub const CLAIM_PENDING_MANY: &str = "SELECT id, job FROM apalis.jobs
     WHERE id = ANY($1) AND job_type IS NOT DISTINCT FROM $2
       AND status IS NOT DISTINCT FROM 'Pending'
     ORDER BY id FOR UPDATE SKIP LOCKED";

/// Claims several jobs at once (a fast lane group): the ones still Pending and free, with
/// their payloads, in id order. Unlike [`claim_as_served_by_lane`] this only locks them:
/// a group leaves the jobs whose orders are missing Pending, for runs of their own.
pub async fn claim_pending_many<J: Job>(
    conn: &mut PgConnection,
    job_ids: &[String],
) -> Result<Vec<(String, J)>, sqlx::Error> {
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(CLAIM_PENDING_MANY)
        .bind(job_ids)
        .bind(J::QUEUE)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, p)| Some((id, serde_json::from_slice(&p).ok()?)))
        .collect())
}

pub const TAKE_PENDING_FULFILLMENTS: &str = concat!(
    finish_jobs!("served in a batch"),
    "
     WHERE id = ANY(ARRAY(SELECT id FROM apalis.jobs
                          WHERE id = ANY($1)
                            AND (status IS NOT DISTINCT FROM 'Pending'
                                 OR status IS NOT DISTINCT FROM 'Failed'
                                 OR status IS NOT DISTINCT FROM 'Killed')
                          FOR UPDATE SKIP LOCKED))
     RETURNING id"
);

/// Takes the fulfillment jobs of `order_ids` that no one is running for a batch of the
/// caller's transaction: marks them Done, skipping any another transaction holds (a fast
/// lane claiming it) and any a queue worker has fetched (Queued, Running); a job waiting
/// for a retry, or dead, is taken too (its order is served now). Returns the orders whose
/// jobs it took, which the batch must then serve in the same transaction. One statement:
/// each job row is locked and written once, found by primary key (the ids derive from the
/// orders; the lock is a sub-select, so no join the planner could turn around; the status
/// test is one no index can serve, so the planner cannot read the queue's live jobs instead).
pub async fn take_pending_fulfillments(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if order_ids.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<String> = order_ids
        .iter()
        .map(|&o| FulfillOrder::job_id_of(o))
        .collect();
    let taken: Vec<String> = sqlx::query_scalar(TAKE_PENDING_FULFILLMENTS)
        .bind(&ids)
        .fetch_all(conn)
        .await?;
    let taken: HashSet<String> = taken.into_iter().collect();
    Ok(order_ids
        .iter()
        .zip(&ids)
        .filter(|(_, job_id)| taken.contains(*job_id))
        .map(|(&order_id, _)| order_id)
        .collect())
}

pub const MARK_SERVED_BY_LANE: &str = concat!(
    finish_jobs!("served by the fast lane"),
    "
     WHERE id = ANY($1)"
);

/// Marks the fast lane's own jobs (claimed by [`claim_pending_many`]) Done, on the
/// transaction that did their work.
pub async fn mark_served_by_lane(
    conn: &mut PgConnection,
    job_ids: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(MARK_SERVED_BY_LANE)
        .bind(job_ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a failed run of a Pending job that was run outside the queue's workers (the
/// fast lane), as apalis records its own: a retryable failure becomes a Failed attempt
/// due again after `retry_in`; anything else kills the job (dead, retryable by an
/// operator). A job someone else has taken meanwhile is left alone.
pub async fn record_failed_run(
    conn: &mut PgConnection,
    job_id: &str,
    error: &str,
    retry_in: Option<Duration>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE apalis.jobs
         SET status = CASE WHEN $3::float8 IS NULL THEN 'Killed' ELSE 'Failed' END,
             attempts = attempts + 1,
             last_result = jsonb_build_object('Err', $2::text),
             run_at = CASE WHEN $3::float8 IS NULL THEN run_at
                           ELSE now() + $3 * interval '1 second' END,
             done_at = CASE WHEN $3::float8 IS NULL THEN now() END
         WHERE id = $1 AND status = 'Pending'",
    )
    .bind(job_id)
    .bind(error)
    .bind(retry_in.map(|d| d.as_secs_f64()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Pushes a failing job's next run into the future. apalis-postgres retries a failed
/// job as soon as it is fetched again and only fetches jobs whose `run_at` has passed,
/// so this row update is what makes retries wait (and survive a restart).
pub async fn schedule_retry(
    conn: &mut PgConnection,
    job_id: &str,
    delay: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE apalis.jobs SET run_at = now() + $2 * interval '1 second' WHERE id = $1")
        .bind(job_id)
        .bind(delay.as_secs_f64())
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes dead jobs runnable again (the operator's `retry-dead`). Returns how many.
pub async fn retry_dead(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE apalis.jobs SET status = 'Pending', attempts = 0, run_at = now(),
                lock_by = NULL, lock_at = NULL, done_at = NULL
         WHERE job_type LIKE '{OURS}' AND {DEAD}"
    )))
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Live (not Done) jobs by queue and status, and how many of them are dead: one scan of
/// autokey_jobs_live_idx, which holds only unfinished jobs.
pub async fn live_counts(
    conn: &mut PgConnection,
) -> Result<(Vec<(String, String, i64)>, i64), sqlx::Error> {
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT job_type, status, count(*), count(*) FILTER (WHERE {DEAD})
         FROM apalis.jobs WHERE job_type LIKE '{OURS}' AND status <> 'Done'
         GROUP BY 1, 2 ORDER BY 1, 2"
    )))
    .fetch_all(conn)
    .await?;
    let dead = rows.iter().map(|r| r.3).sum();
    Ok((
        rows.into_iter().map(|(q, s, n, _)| (q, s, n)).collect(),
        dead,
    ))
}

/// Who served the FULFILLED orders of `order_ids`, from their jobs' recorded results:
/// (the fast lane, another job's batch, anything else: their own queue run).
pub async fn fulfillment_breakdown(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
) -> Result<(i64, i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE r = 'served by the fast lane'),
                count(*) FILTER (WHERE r = 'served in a batch'),
                count(*) FILTER (WHERE r IS DISTINCT FROM 'served by the fast lane'
                                   AND r IS DISTINCT FROM 'served in a batch')
         FROM (SELECT (SELECT j.last_result ->> 'Ok' FROM apalis.jobs j
                       WHERE j.job_type = $2 AND j.idempotency_key = o.id::text) AS r
               FROM orders o WHERE o.id = ANY($1) AND o.status = 'FULFILLED') t",
    )
    .bind(order_ids)
    .bind(FulfillOrder::QUEUE)
    .fetch_one(conn)
    .await
}

/// Jobs of `J`'s queue by status, Done included (a benchmark's account of who ran what).
pub async fn counts_of<J: Job>(conn: &mut PgConnection) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT status, count(*) FROM apalis.jobs WHERE job_type = $1 GROUP BY status ORDER BY status",
    )
    .bind(J::QUEUE)
    .fetch_all(conn)
    .await
}

/// How many jobs of `J`'s queue are waiting or running (not Done, not dead).
pub async fn live_of<J: Job>(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM apalis.jobs
         WHERE job_type = $1 AND status <> 'Done' AND NOT {DEAD}"
    )))
    .bind(J::QUEUE)
    .fetch_one(conn)
    .await
}

/// A dead job as an operator sees it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadJob {
    pub id: String,
    pub queue: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// The job's payload (ids only: jobs never carry keys or secrets).
    pub payload: serde_json::Value,
    pub run_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Dead jobs, most recent first (at most `limit`).
pub async fn dead(conn: &mut PgConnection, limit: i64) -> Result<Vec<DeadJob>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, job_type AS queue, status, attempts, last_result::text AS last_error,
                convert_from(job, 'UTF8')::jsonb AS payload, run_at
         FROM apalis.jobs WHERE job_type LIKE '{OURS}' AND status <> 'Done' AND {DEAD}
         ORDER BY run_at DESC NULLS LAST, id DESC LIMIT $1"
    )))
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// The queue's unfinished jobs, for the metrics.
#[derive(Debug, Default)]
pub struct LiveJobs {
    /// (queue, status, count) of unfinished jobs.
    pub counts: Vec<(String, String, i64)>,
    /// Jobs that will not run again without an operator.
    pub dead: i64,
    /// By queue: jobs that will still run (not dead), and how many seconds the oldest
    /// of them has been due (0 when none is due yet).
    pub depth: std::collections::HashMap<String, (i64, f64)>,
}

/// [`live_counts`] plus each queue's depth and oldest due job: one scan of the
/// unfinished jobs (autokey_jobs_live_idx, reading their `run_at` from the table).
pub async fn live_jobs(conn: &mut PgConnection) -> Result<LiveJobs, sqlx::Error> {
    let rows: Vec<(String, String, i64, i64, Option<f64>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT job_type, status, count(*), count(*) FILTER (WHERE {DEAD}),
                extract(epoch FROM now() - min(run_at) FILTER (WHERE NOT {DEAD}))::float8
         FROM apalis.jobs WHERE job_type LIKE '{OURS}' AND status <> 'Done'
         GROUP BY 1, 2 ORDER BY 1, 2"
        )))
        .fetch_all(conn)
        .await?;
    let mut live = LiveJobs::default();
    for (q, status, n, dead, age) in rows {
        live.dead += dead;
        let entry = live.depth.entry(q.clone()).or_insert((0, 0.0));
        entry.0 += n - dead;
        entry.1 = entry.1.max(age.unwrap_or(0.0).max(0.0));
        live.counts.push((q, status, n));
    }
    Ok(live)
}

/// How many jobs are dead.
pub async fn dead_count(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    Ok(live_counts(conn).await?.1)
}

/// The status of an order's fulfillment job, if it has one.
pub async fn fulfillment_status(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT status FROM apalis.jobs WHERE job_type = $1 AND idempotency_key = $2",
    )
    .bind(FulfillOrder::QUEUE)
    .bind(order_id.to_string())
    .fetch_optional(conn)
    .await
}

/// Finished jobs deleted per statement: one pass after an outage (an hour of jobs due at
/// once) is many short statements, not one that holds a million row locks.
const PRUNE_BATCH: i64 = 5_000;

/// `autokey::%`: this service's queues (`OURS`). `= ANY(ARRAY(..))` rather than `IN (..)`:
/// the ids are found first, then deleted by primary key, with no join for the planner to
/// turn into a scan of the table.
pub const PRUNE_DONE: &str = "DELETE FROM apalis.jobs WHERE id = ANY(ARRAY(
         SELECT id FROM apalis.jobs
         WHERE status = 'Done' AND done_at < now() - $1 * interval '1 second'
           AND job_type LIKE 'autokey::%'
         ORDER BY done_at LIMIT $2))";

/// Deletes Done jobs finished longer than `retention` ago (apalis never does), oldest
/// first, through `autokey_jobs_done_idx`: a pass reads what it deletes, not the table.
pub async fn prune_done(conn: &mut PgConnection, retention: Duration) -> Result<u64, sqlx::Error> {
    let mut pruned = 0;
    loop {
        let done = sqlx::query(PRUNE_DONE)
            .bind(retention.as_secs_f64())
            .bind(PRUNE_BATCH)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        pruned += done;
        if done < PRUNE_BATCH as u64 {
            return Ok(pruned);
        }
    }
}

/// Deletes worker rows silent for longer than `gone` that hold no job. Worker names are
/// unique per process start, so old rows would pile up forever.
pub async fn prune_workers(conn: &mut PgConnection, gone: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM apalis.workers w WHERE w.worker_type LIKE '{OURS}'
           AND w.last_seen < now() - $1 * interval '1 second'
           AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.lock_by = w.id)"
    )))
    .bind(gone.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

/// Which of `order_ids` have no fulfillment job at all (the sweeper gives them one).
pub async fn without_fulfillment(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    if order_ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = order_ids.iter().map(Uuid::to_string).collect();
    let existing: Vec<String> = sqlx::query_scalar(
        "SELECT idempotency_key FROM apalis.jobs WHERE job_type = $1 AND idempotency_key = ANY($2)",
    )
    .bind(FulfillOrder::QUEUE)
    .bind(&keys)
    .fetch_all(conn)
    .await?;
    let existing: HashSet<String> = existing.into_iter().collect();
    Ok(order_ids
        .iter()
        .copied()
        .filter(|o| !existing.contains(&o.to_string()))
        .collect())
}

/// Which of `pool_ids` have a replenishment queued or running.
pub async fn replenishing(
    conn: &mut PgConnection,
    pool_ids: &[Uuid],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if pool_ids.is_empty() {
        return Ok(HashSet::new());
    }
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT job FROM apalis.jobs
         WHERE job_type = $1 AND status IN ('Pending', 'Queued', 'Running')",
    )
    .bind(ReplenishPool::QUEUE)
    .fetch_all(conn)
    .await?;
    Ok(payloads
        .iter()
        .filter_map(|p| serde_json::from_slice::<ReplenishPool>(p).ok())
        .map(|j| j.pool_id)
        .filter(|p| pool_ids.contains(p))
        .collect())
}
