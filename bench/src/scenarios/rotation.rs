//! `rotation`: N keys uploaded over HTTP into one pool with a published offer, then
//! `autokey-api keys reencrypt` moves them all to a new encryption key (k1 -> k2) while
//! orders are created and paid at a constant rate (open loop) and a worker fulfills them.
//! Reports keys/s, the command's peak RSS, the orders served meanwhile and their
//! pay -> fulfilled latency (database timestamps).
//!
//! The orders come from this process's keep-alive HTTP client, so the load generator
//! costs next to nothing: the earlier shell script spent about a third of this 2-core
//! machine on `curl`, `sed` and `bash` (perf), which the rotation then did not have.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rand::RngCore;

use crate::{common::*, front::*};

pub struct Cfg {
    pub keys: usize,
    /// Orders created and paid per second while the rotation runs.
    pub rate: u64,
    pub buyers: usize,
}

/// A rotation of 1M keys takes well under a minute here; beyond this the scenario fails.
const TIMEOUT: Duration = Duration::from_secs(600);

pub async fn run(env: &Env, cfg: &Cfg) -> Res<()> {
    let front = Arc::new(Front::start(env, "rotation", cfg.buyers).await?);
    let r = body(env, cfg, &front).await;
    if let Ok(f) = Arc::try_unwrap(front) {
        f.close().await;
    }
    r
}

async fn body(env: &Env, cfg: &Cfg, front: &Arc<Front>) -> Res<()> {
    let shop = front.shop(1, cfg.keys).await?;
    eprintln!(
        "rotation: {} keys uploaded over HTTP in {:.1} s",
        shop.keys, shop.upload_secs
    );
    let offer = shop.offers[0];
    let mut worker = start_worker(env, &front.db, &front.secrets, "rotation-worker")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.check_alive(env)?;

    // Orders flow from before the rotation starts until it ends.
    let stop = Arc::new(AtomicBool::new(false));
    let (paid, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let orders = {
        let (front, stop, paid, failed) =
            (front.clone(), stop.clone(), paid.clone(), failed.clone());
        let rate = cfg.rate.max(1);
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut running = tokio::task::JoinSet::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate as f64))
                    .await;
                let (front, paid, failed) = (front.clone(), paid.clone(), failed.clone());
                running.spawn(async move {
                    let who = front.who(i);
                    let ok = match front.create_order(&who, offer).await {
                        Ok(id) => front.pay(&who, id).await.is_ok(),
                        Err(_) => false,
                    };
                    let counter = if ok { &paid } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                });
                while running.try_join_next().is_some() {}
                i += 1;
            }
            while running.join_next().await.is_some() {}
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut new_key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut new_key);
    let window_start: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&front.db.pool)
        .await?;
    let started = Instant::now();
    let mut rotation = start_reencrypt(
        env,
        &front.db,
        &front.secrets,
        &new_key,
        "rotation-reencrypt",
    )?;
    let pid = rotation.pid();
    let mut peak_mib = 0f64;
    let status = loop {
        if let Some((_, hwm)) = rss_mib(pid) {
            peak_mib = peak_mib.max(hwm);
        }
        if let Some(status) = rotation.child.try_wait()? {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            rotation.kill().await;
            return Err(err(format!("the rotation took more than {TIMEOUT:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = orders.await;
    let window_end: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&front.db.pool)
        .await?;
    if !status.success() {
        return Err(err(format!(
            "keys reencrypt exited with {status}; see {}",
            env.tmp_dir().join("rotation-reencrypt.log").display()
        )));
    }
    worker.check_alive(env)?;

    let (left, moved): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE enc_key_id <> 'k2'), count(*) FILTER (WHERE enc_key_id = 'k2')
         FROM keys",
    )
    .fetch_one(&front.db.pool)
    .await?;
    if left != 0 || moved != cfg.keys as i64 {
        return Err(err(format!(
            "after the rotation {left} keys are still under k1 and {moved} of {} under k2",
            cfg.keys
        )));
    }
    // Orders paid while the rotation ran: fulfilled, and how fast.
    let mut lat: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM fulfilled_at - paid_at)::float8 * 1000 FROM orders
         WHERE paid_at BETWEEN $1 AND $2 AND fulfilled_at IS NOT NULL",
    )
    .bind(window_start)
    .bind(window_end)
    .fetch_all(&front.db.pool)
    .await?;
    lat.sort_by(|a, b| a.total_cmp(b));
    let paid_in_window: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE paid_at BETWEEN $1 AND $2")
            .bind(window_start)
            .bind(window_end)
            .fetch_one(&front.db.pool)
            .await?;
    let keys_s = cfg.keys as f64 / secs;
    let machine_load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    print_table(
        &format!(
            "rotation: {} keys re-encrypted k1 -> k2 with {} orders/s created and paid (target >= 50,000 keys/s)",
            cfg.keys, cfg.rate
        ),
        &[
            "keys",
            "seconds",
            "keys/s",
            "reencrypt peak RSS MiB",
            "orders paid meanwhile",
            "of them fulfilled",
            "pay->fulfilled p50 ms",
            "p99 ms",
            "order errors",
        ],
        &[vec![
            cfg.keys.to_string(),
            f1(secs),
            f0(keys_s),
            f1(peak_mib),
            paid_in_window.to_string(),
            lat.len().to_string(),
            f1(percentile(&lat, 50.0)),
            f1(percentile(&lat, 99.0)),
            failed.load(Ordering::Relaxed).to_string(),
        ]],
    );
    record(
        env,
        &front.db.pool,
        "rotation",
        serde_json::json!({
            "keys": cfg.keys, "seconds": secs, "keys_per_s": keys_s,
            "reencrypt_peak_rss_mib": peak_mib, "order_rate": cfg.rate,
            "orders_paid_meanwhile": paid_in_window, "orders_fulfilled_of_them": lat.len(),
            "pay_to_fulfilled_p50_ms": percentile(&lat, 50.0),
            "pay_to_fulfilled_p99_ms": percentile(&lat, 99.0),
            "order_errors": failed.load(Ordering::Relaxed),
            "orders_paid_total": paid.load(Ordering::Relaxed),
            "upload_secs": shop.upload_secs, "loadavg": machine_load.trim(),
        }),
    )
    .await?;
    worker.kill().await;
    Ok(())
}
