//! Background jobs. A job is a serde struct with a fixed queue name; it is enqueued by
//! inserting into apalis-postgres's `apalis.jobs` on the caller's own connection, so it
//! commits (or rolls back) together with the data it acts on.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sqlx::PgConnection;
use uuid::Uuid;

/// A job type: its queue name is fixed forever (renaming it would orphan queued jobs).
pub trait Job: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    const QUEUE: &'static str;
    /// How many runs before the job is dead (kept, visible, retryable by an operator).
    const MAX_ATTEMPTS: i32 = 12;
    /// Jobs with the same key in the same queue exist at most once (a database fact:
    /// apalis's UNIQUE (job_type, idempotency_key)).
    fn idempotency_key(&self) -> Option<String>;
    /// Whether a new job is first offered to a worker's fast lane: announced on
    /// [`LANE_CHANNEL`] and left to the lane for [`LANE_GRACE`] before the queue's own
    /// workers may fetch it.
    const FAST_LANE: bool = false;
}

/// New fast-lane jobs are announced here at commit (payload: the job id).
pub const LANE_CHANNEL: &str = "autokey_job_lane";

/// How long the queue's own workers leave a new fast-lane job alone. A live lane takes it
/// within milliseconds; this only delays the fallback when no lane is running.
pub const LANE_GRACE: Duration = Duration::from_millis(250);

/// Deliver keys to one paid order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FulfillOrder {
    pub order_id: Uuid,
}

impl Job for FulfillOrder {
    const QUEUE: &'static str = "autokey::fulfill_order";
    const FAST_LANE: bool = true;
    fn idempotency_key(&self) -> Option<String> {
        Some(self.order_id.to_string())
    }
}

/// New keys arrived in a pool: serve its waiting (backordered) orders, oldest paid first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplenishPool {
    pub pool_id: Uuid,
}

impl Job for ReplenishPool {
    const QUEUE: &'static str = "autokey::replenish_pool";
    fn idempotency_key(&self) -> Option<String> {
        // Every upload gets its own run: a run already under way may have read the pool
        // before the upload committed.
        None
    }
}

/// Enqueues `job` on `conn` (typically inside the caller's transaction). Returns false
/// when a job with the same idempotency key already exists.
///
/// The row mirrors apalis-postgres 1.0's `queries/task/sink.sql`; the test
/// `jobs_enqueued_by_sql_run_on_apalis` pins that coupling against a real worker.
pub async fn enqueue<J: Job>(conn: &mut PgConnection, job: &J) -> Result<bool, sqlx::Error> {
    let payload = serde_json::to_vec(job).expect("job payloads serialize");
    let (grace_ms, lane) = if J::FAST_LANE {
        (LANE_GRACE.as_millis() as f64, Some(LANE_CHANNEL))
    } else {
        (0.0, None)
    };
    let (inserted, _announced): (i64, i64) = sqlx::query_as(
        "WITH ins AS (
             INSERT INTO apalis.jobs
                 (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata, idempotency_key)
             VALUES ($1, $2, $3, 'Pending', 0, $4, now() + $6 * interval '1 millisecond', 0, ''::hstore, $5)
             ON CONFLICT (job_type, idempotency_key) DO NOTHING
             RETURNING id)
         SELECT (SELECT count(*) FROM ins),
                (SELECT count(*) FROM (SELECT pg_notify($7, id) FROM ins WHERE $7 IS NOT NULL) n)",
    )
    .bind(ulid::Ulid::new().to_string())
    .bind(J::QUEUE)
    .bind(payload)
    .bind(J::MAX_ATTEMPTS)
    .bind(job.idempotency_key())
    .bind(grace_ms)
    .bind(lane)
    .fetch_one(conn)
    .await?;
    Ok(inserted == 1)
}

/// Records a failed run of a Pending job that was run outside the queue's workers (the
/// fast lane), as apalis records its own: a transient failure becomes a Failed attempt
/// due again after `retry_in`; anything else kills the job (dead, retryable by an
/// operator). A job someone else has taken meanwhile is left alone.
pub async fn record_failed_run(
    conn: &mut PgConnection,
    task_id: &str,
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
    .bind(task_id)
    .bind(error)
    .bind(retry_in.map(|d| d.as_secs_f64()))
    .execute(conn)
    .await?;
    Ok(())
}

/// The durable retry schedule: exponential with jitter, capped. `attempt` counts from 1.
pub fn retry_delay(attempt: usize, base: Duration) -> Duration {
    ExponentialBuilder::default()
        .with_min_delay(base)
        .with_max_delay(Duration::from_secs(300))
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(usize::MAX)
        .build()
        .nth(attempt.saturating_sub(1))
        .unwrap_or(Duration::from_secs(300))
}

/// Pushes a failing job's next run into the future. apalis-postgres retries a failed
/// job as soon as it is fetched again and only fetches jobs whose `run_at` has passed,
/// so this row update is what makes retries wait (and survive a restart).
pub async fn schedule_retry(
    conn: &mut PgConnection,
    task_id: &str,
    delay: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE apalis.jobs SET run_at = now() + $2 * interval '1 second' WHERE id = $1")
        .bind(task_id)
        .bind(delay.as_secs_f64())
        .execute(conn)
        .await?;
    Ok(())
}

/// Jobs that will not run again by themselves: out of attempts, or aborted.
pub const DEAD_JOBS_WHERE: &str =
    "(status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts))";

/// Makes dead jobs runnable again (the operator's `retry-dead`). Returns how many.
pub async fn retry_dead(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE apalis.jobs SET status = 'Pending', attempts = 0, run_at = now(),
                lock_by = NULL, lock_at = NULL, done_at = NULL
         WHERE job_type LIKE 'autokey::%' AND {DEAD_JOBS_WHERE}"
    )))
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let base = Duration::from_millis(100);
        let first = retry_delay(1, base);
        assert!(first >= base && first <= base * 2, "{first:?}");
        let fifth = retry_delay(5, base);
        assert!(fifth >= base * 16, "{fifth:?}");
        assert!(retry_delay(60, base) <= Duration::from_secs(600));
    }
}
