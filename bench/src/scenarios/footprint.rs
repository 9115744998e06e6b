//! `footprint`: resident memory of the api and the worker after start-up and 5 s idle.

use std::time::Duration;

use crate::common::*;

pub async fn run(env: &Env) -> Res<serde_json::Value> {
    let db = BenchDb::create(env, 4).await?;
    let result = body(env, &db).await;
    db.drop_now().await;
    result
}

async fn body(env: &Env, db: &BenchDb) -> Res<serde_json::Value> {
    let secrets = Secrets::generate();
    let port = free_port()?;
    let api = start_api(env, db, &secrets, port, "footprint-api").await?;
    let mut worker = start_worker(env, db, &secrets, "footprint-worker")?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    worker.check_alive(env)?;
    let (api_rss, api_hwm) =
        rss_mib(api.pid()).ok_or_else(|| err("cannot read the api's /proc status"))?;
    let (w_rss, w_hwm) =
        rss_mib(worker.pid()).ok_or_else(|| err("cannot read the worker's /proc status"))?;
    api.kill().await;
    worker.kill().await;
    print_table(
        "footprint: idle RSS after start-up + 5 s (target <= 30 MiB each)",
        &["process", "VmRSS MiB", "VmHWM MiB", "target met"],
        &[
            vec![
                "autokey-api".into(),
                f1(api_rss),
                f1(api_hwm),
                (api_rss <= 30.0).to_string(),
            ],
            vec![
                "autokey-worker".into(),
                f1(w_rss),
                f1(w_hwm),
                (w_rss <= 30.0).to_string(),
            ],
        ],
    );
    let results = serde_json::json!({
        "api_rss_mib": api_rss, "api_hwm_mib": api_hwm,
        "worker_rss_mib": w_rss, "worker_hwm_mib": w_hwm,
        "worker_concurrency": 8,
    });
    record(env, &db.pool, "footprint", results.clone()).await?;
    Ok(results)
}
