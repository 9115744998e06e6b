//! `ingest`: on a pool created over HTTP, 1M generated keys streamed as text/plain (chunked, from a generator: the
//! bench never holds the body) to POST /key-pools/:id/keys/upload; keys/s and the api's
//! peak RSS.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use autokey_shared::{model::Role, store::tokens};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufWriter},
    net::TcpStream,
};
use uuid::Uuid;

use crate::common::*;

const CHUNK_BYTES: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(240);

pub async fn run(env: &Env, keys: u64) -> Res<()> {
    let db = BenchDb::create(env, 4).await?;
    let result = body(env, &db, keys).await;
    db.drop_now().await;
    result
}

async fn body(env: &Env, db: &BenchDb, keys: u64) -> Res<()> {
    let upload_route = env.root.join("api/src/routes/upload.rs");
    if !upload_route.exists() {
        let results = serde_json::json!({ "blocked": "api/src/routes/upload.rs is absent: no streamed upload route yet" });
        println!("ingest: BLOCKED (the upload route is not there)");
        record(env, &db.pool, "ingest", results).await?;
        return Ok(());
    }
    let secrets = Secrets::generate();
    let token = {
        let mut conn = db.pool.acquire().await?;
        tokens::create_token(&mut conn, Role::Seller, None)
            .await?
            .token
    };
    let port = free_port()?;
    let api = start_api(env, db, &secrets, port, "ingest-api").await?;
    // The pool, created through the API like a seller would.
    let pool: serde_json::Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/key-pools"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "name": "ingest bench" }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let pool_id: Uuid = pool["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err(format!("POST /key-pools answered {pool}")))?;
    let pid = api.pid();
    let (idle_rss, _) = rss_mib(pid).unwrap_or_default();

    // Sample the api's RSS while the upload runs.
    let done = Arc::new(AtomicBool::new(false));
    let peak_kib = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak_kib.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some((rss, _)) = rss_mib(pid) {
                    peak.fetch_max((rss * 1024.0) as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let run = &Uuid::new_v4().simple().to_string()[..8];
    let start = Instant::now();
    let upload =
        tokio::time::timeout(TIMEOUT, stream_upload(port, pool_id, &token, keys, run)).await;
    let secs = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let (_, hwm) = rss_mib(pid).unwrap_or_default();
    api.kill().await;
    let (status, body, sent_bytes) =
        upload.map_err(|_| err(format!("the upload took more than {TIMEOUT:?}")))??;
    let report: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    let added = report["added"].as_u64().unwrap_or(0);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM keys WHERE pool_id = $1")
        .bind(pool_id)
        .fetch_one(&db.pool)
        .await?;
    if status != 200 || added != keys || stored != keys as i64 {
        return Err(err(format!(
            "ingest: status {status}, added {added}, stored {stored} of {keys}; body: {}",
            body.chars().take(300).collect::<String>()
        )));
    }
    let keys_s = keys as f64 / secs;
    let peak_sampled = peak_kib.load(Ordering::Relaxed) as f64 / 1024.0;
    print_table(
        &format!("ingest: {keys} keys streamed as text/plain (target <= 10 s, <= 100 MiB RSS)"),
        &[
            "keys",
            "MiB sent",
            "seconds",
            "keys/s",
            "api idle RSS MiB",
            "api peak RSS (VmHWM) MiB",
            "api peak RSS sampled MiB",
        ],
        &[vec![
            keys.to_string(),
            f1(sent_bytes as f64 / 1048576.0),
            f2(secs),
            f0(keys_s),
            f1(idle_rss),
            f1(hwm),
            f1(peak_sampled),
        ]],
    );
    record(
        env,
        &db.pool,
        "ingest",
        serde_json::json!({
            "keys": keys, "bytes_sent": sent_bytes, "seconds": secs, "keys_per_s": keys_s,
            "api_idle_rss_mib": idle_rss, "api_peak_rss_mib": hwm, "api_peak_rss_sampled_mib": peak_sampled,
            "added": added,
        }),
    )
    .await?;
    Ok(())
}

/// POSTs the keys over one HTTP/1.1 connection with a chunked body generated on the fly.
/// Returns (status, response body, bytes of keys sent).
async fn stream_upload(
    port: u16,
    pool_id: Uuid,
    token: &str,
    keys: u64,
    run: &str,
) -> Res<(u16, String, u64)> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (mut rd, wr) = stream.into_split();
    let mut wr = BufWriter::with_capacity(CHUNK_BYTES + 64, wr);
    let head = format!(
        "POST /key-pools/{pool_id}/keys/upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Authorization: Bearer {token}\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    );
    wr.write_all(head.as_bytes()).await?;
    let mut sent = 0u64;
    let mut chunk = String::with_capacity(CHUNK_BYTES + 64);
    let mut i = 0u64;
    let mut write_failed = None;
    while i < keys {
        chunk.clear();
        while i < keys && chunk.len() < CHUNK_BYTES {
            use std::fmt::Write;
            let _ = writeln!(chunk, "BENCH-{run}-{i:09}-XXXXX");
            i += 1;
        }
        sent += chunk.len() as u64;
        let framed = async {
            wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            wr.write_all(chunk.as_bytes()).await?;
            wr.write_all(b"\r\n").await
        };
        if let Err(e) = framed.await {
            // The server answered early (an error); read what it said.
            write_failed = Some(e);
            break;
        }
    }
    if write_failed.is_none() {
        wr.write_all(b"0\r\n\r\n").await?;
        wr.flush().await?;
    }
    let mut raw = Vec::new();
    rd.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err(format!("no HTTP response (write error: {write_failed:?})")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body, sent))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
