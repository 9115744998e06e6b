//! Burning a backlog down with worker processes: orders/s from database timestamps.

use std::time::{Duration, Instant};

use autokey_shared::{
    jobs::{FulfillOrder, queue},
    store,
};

use uuid::Uuid;

use super::{BenchDb, Env, Res, Secrets, err, rss_mib, start_worker};

/// Starts `workers` worker processes on a database whose `ids` orders are PAID with
/// their jobs queued, and waits until no order is PAID any more: orders/s overall and
/// after the first fulfillment, then checks that each order got exactly one distinct key.
pub async fn burn_down(
    env: &Env,
    db: &BenchDb,
    secrets: &Secrets,
    workers: usize,
    ids: &[Uuid],
    label: &str,
    timeout: Duration,
) -> Res<serde_json::Value> {
    let total = ids.len() as i64;
    let start = Instant::now();
    let mut procs = Vec::new();
    for i in 0..workers {
        procs.push(start_worker(
            env,
            db,
            secrets,
            &format!("{label}-worker{i}"),
        )?);
    }
    let mut first_done: Option<Duration> = None;
    let mut first_done_count = 0i64;
    let finished = loop {
        let waiting = {
            let mut conn = db.pool.acquire().await?;
            store::orders::waiting_counts(&mut conn).await?.0
        };
        let done = total - waiting;
        if first_done.is_none() && done > 0 {
            first_done = Some(start.elapsed());
            first_done_count = done;
        }
        if waiting == 0 {
            break start.elapsed();
        }
        for w in procs.iter_mut() {
            w.check_alive(env)?;
        }
        if start.elapsed() > timeout {
            for w in procs {
                w.kill().await;
            }
            return Err(err(format!(
                "{label}: {waiting} of {total} orders still PAID after {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut peak_rss: f64 = 0.0;
    for w in &procs {
        if let Some((_, hwm)) = rss_mib(w.pid()) {
            peak_rss = peak_rss.max(hwm);
        }
    }
    for w in procs {
        w.kill().await;
    }
    let mut conn = db.pool.acquire().await?;
    let (fulfilled, deliveries, distinct) = store::orders::delivery_summary(&mut conn, ids).await?;
    if fulfilled != total || deliveries != total || distinct != total {
        return Err(err(format!(
            "{label}: verification failed: {fulfilled} FULFILLED, {deliveries} deliveries, \
             {distinct} distinct keys (expected {total})"
        )));
    }
    let jobs = queue::counts_of::<FulfillOrder>(&mut conn).await?;
    drop(conn);
    let secs = finished.as_secs_f64();
    let first = first_done.unwrap_or(finished);
    let steady = if finished > first {
        (total - first_done_count) as f64 / (finished - first).as_secs_f64()
    } else {
        f64::NAN
    };
    eprintln!(
        "{label}: {total} orders fulfilled in {secs:.2} s = {:.0}/s",
        total as f64 / secs
    );
    Ok(serde_json::json!({
        "workers": workers,
        "orders": total,
        "seconds": secs,
        "orders_per_s": total as f64 / secs,
        "first_fulfilled_after_s": first.as_secs_f64(),
        "steady_orders_per_s": steady,
        "fulfilled": fulfilled,
        "deliveries": deliveries,
        "distinct_keys": distinct,
        "jobs_by_status": jobs.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "worker_peak_rss_mib": peak_rss,
    }))
}
