//! Seller-side commands over the HTTP API (never the database): `keys upload` streams a
//! key file to `POST /key-pools/:id/keys/upload` and prints the report; `pools` prints the
//! caller's pools and their counts. The token is AUTOKEY_TOKEN (or --token), the api
//! AUTOKEY_URL (or --url).

use std::{
    io::IsTerminal,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use uuid::Uuid;

/// Where the api is and who the caller is.
#[derive(Args)]
pub struct Remote {
    /// The api's base URL.
    #[arg(long, env = "AUTOKEY_URL", default_value = "http://localhost:4000")]
    pub url: String,
    /// A seller's API token.
    #[arg(long, env = "AUTOKEY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Bytes read from the file per chunk of the request body.
const CHUNK: usize = 64 * 1024;

impl Remote {
    fn client(&self) -> Result<(reqwest::Client, String, &str), String> {
        let token = self
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or("no token: set AUTOKEY_TOKEN (or pass --token)")?;
        let base = self.url.trim_end_matches('/').to_owned();
        let parsed = url::Url::parse(&base)
            .map_err(|e| format!("AUTOKEY_URL {base:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("AUTOKEY_URL {base:?} is not an http(s) URL"));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("autokey-api/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok((client, base, token))
    }
}

/// What a failed request says, in one line (never the token).
fn unreachable(base: &str, e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        cause = format!("{cause}: {s}");
        source = s.source();
    }
    format!("cannot reach the api at {base} (AUTOKEY_URL): {cause}")
}

/// The api's error for a non-2xx reply, in one line.
async fn refused(response: reqwest::Response) -> String {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
    match status.as_u16() {
        401 => "the api refused the token (AUTOKEY_TOKEN): unknown or revoked".into(),
        403 => format!("the token may not do this (a seller token is needed): {message}"),
        404 => format!("not found: {message} (is the pool id one of this seller's?)"),
        _ => format!("the api answered {status}: {message}"),
    }
}

pub async fn upload(pool: Uuid, file: PathBuf, remote: Remote) -> Result<(), String> {
    let (client, base, token) = remote.client()?;
    let opened = tokio::fs::File::open(&file)
        .await
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let size = opened
        .metadata()
        .await
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?
        .len();
    let bar = progress_bar(size);
    let lines = Arc::new(AtomicU64::new(0));
    let body = {
        let (bar, lines) = (bar.clone(), lines.clone());
        // Read as it is sent: memory stays at a chunk or two whatever the file's size.
        tokio_util::io::ReaderStream::with_capacity(opened, CHUNK).inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                let n = lines.fetch_add(bytecount(chunk), Ordering::Relaxed) + bytecount(chunk);
                bar.inc(chunk.len() as u64);
                bar.set_message(format!("{n} lines"));
            }
        })
    };
    let response = client
        .post(format!("{base}/key-pools/{pool}/keys/upload"))
        .bearer_auth(token)
        .header("content-type", "text/plain; charset=utf-8")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    bar.finish_and_clear();
    let response = response.map_err(|e| unreachable(&base, e))?;
    if !response.status().is_success() {
        return Err(refused(response).await);
    }
    let report: Value = response
        .json()
        .await
        .map_err(|e| format!("the api's report could not be read: {e}"))?;
    print!(
        "{}",
        format_report(&report, lines.load(Ordering::Relaxed), size)
    );
    Ok(())
}

fn bytecount(chunk: &[u8]) -> u64 {
    chunk.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Bytes and lines on stderr, drawn only when stderr is a terminal.
fn progress_bar(size: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(size), target);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta}) {msg}",
        )
        .expect("a valid template"),
    );
    bar
}

fn format_report(report: &Value, lines: u64, bytes: u64) -> String {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let pool = &report["pool"];
    let mut out = format!(
        "uploaded {bytes} bytes, {lines} lines\nadded: {}\nduplicates: {}\ninvalid: {}\n",
        n(&report["added"]),
        n(&report["duplicatesCount"]),
        n(&report["invalidCount"]),
    );
    for (kind, list) in [
        ("duplicate", &report["duplicates"]),
        ("invalid", &report["invalid"]),
    ] {
        for issue in list.as_array().into_iter().flatten().take(10) {
            out.push_str(&format!(
                "  line {}: {kind} ({})\n",
                n(&issue["line"]),
                issue["reason"].as_str().unwrap_or("-")
            ));
        }
    }
    if report["truncated"].as_bool() == Some(true) {
        out.push_str("  (the api lists at most the first 1000 problems of each kind)\n");
    }
    out.push_str(&format!(
        "pool {}: {} available, {} reserved, {} delivered, {} invalid, {} total\n",
        pool["id"].as_str().unwrap_or("-"),
        n(&pool["availableKeys"]),
        n(&pool["reservedKeys"]),
        n(&pool["deliveredKeys"]),
        n(&pool["invalidKeys"]),
        n(&pool["totalKeys"]),
    ));
    out
}

/// Every pool of the caller (all pages), as a table.
pub async fn pools(remote: Remote) -> Result<(), String> {
    let (client, base, token) = remote.client()?;
    let mut pools = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = client
            .get(format!("{base}/key-pools"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(30))
            .query(&[("limit", "500")]);
        if let Some(c) = &cursor {
            request = request.query(&[("cursor", c)]);
        }
        let response = request.send().await.map_err(|e| unreachable(&base, e))?;
        if !response.status().is_success() {
            return Err(refused(response).await);
        }
        let page: Value = response
            .json()
            .await
            .map_err(|e| format!("the api's answer could not be read: {e}"))?;
        pools.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    print!("{}", format_pools(&pools));
    Ok(())
}

fn format_pools(pools: &[Value]) -> String {
    let header = [
        "ID",
        "NAME",
        "AVAILABLE",
        "RESERVED",
        "DELIVERED",
        "INVALID",
        "TOTAL",
        "LOW_STOCK",
    ];
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            let n = |k: &str| p[k].as_i64().unwrap_or(0).to_string();
            let name: String = p["name"]
                .as_str()
                .unwrap_or("")
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(32)
                .collect();
            vec![
                p["id"].as_str().unwrap_or("-").to_owned(),
                name,
                n("availableKeys"),
                n("reservedKeys"),
                n("deliveredKeys"),
                n("invalidKeys"),
                n("totalKeys"),
                n("lowStockThreshold"),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    if pools.is_empty() {
        out.push_str("(no pools)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn the_pools_table_aligns_its_columns() {
        let table = super::format_pools(&[json!({"id": "p1", "name": "Space\nGame",
            "availableKeys": 12, "reservedKeys": 0, "deliveredKeys": 3, "invalidKeys": 1,
            "totalKeys": 16, "lowStockThreshold": 5})]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID  NAME        AVAILABLE"), "{table}");
        assert!(lines[1].starts_with("p1  Space Game  12"), "{table}");
    }
}
