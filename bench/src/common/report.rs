//! Percentiles, tables, the machine's description and the results file.

use std::{io::Write, path::Path};

use sqlx::PgPool;

use super::{Env, Res};

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn print_table(title: &str, headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    println!("\n## {title}\n");
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:>w$}", w = widths[i]))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(headers.iter().map(|s| s.to_string()).collect());
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| format!("{}:", "-".repeat(w + 1)))
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        line(r.clone());
    }
    println!();
}

pub fn f1(x: f64) -> String {
    format!("{x:.1}")
}
pub fn f0(x: f64) -> String {
    format!("{x:.0}")
}
pub fn f2(x: f64) -> String {
    format!("{x:.2}")
}

/// The machine, as BENCHMARKS.md describes it.
pub async fn machine(db: &PgPool) -> serde_json::Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0);
    let pg: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(db)
        .await
        .unwrap_or_default();
    // The machine may be shared: the load average at the time of recording says how much.
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    serde_json::json!({ "cpus": cpus, "mem_mib": mem_mib, "postgres": pg, "loadavg": loadavg })
}

fn git_head(root: &Path) -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// How the run's processes reach PostgreSQL: a Unix socket or TCP (a local server
/// answers a round trip over its socket for much less CPU than over loopback TCP, so rows
/// of different transports are not comparable).
fn transport(server_url: &str) -> &'static str {
    let socket = std::str::FromStr::from_str(server_url)
        .map(|o: sqlx::postgres::PgConnectOptions| o.get_socket().is_some())
        .unwrap_or(false);
    if socket { "unix socket" } else { "tcp" }
}

/// Appends one dated JSON line to bench-results/results.jsonl.
pub async fn record(env: &Env, db: &PgPool, scenario: &str, results: serde_json::Value) -> Res<()> {
    let line = serde_json::json!({
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "scenario": scenario,
        "git": git_head(&env.root),
        "machine": machine(db).await,
        "database_transport": transport(&env.server_url),
        "database_settings": env.db_settings.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "api_env": env.api_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "results": results,
    });
    let dir = env.root.join("bench-results");
    std::fs::create_dir_all(&dir)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("results.jsonl"))?;
    writeln!(f, "{line}")?;
    println!("(appended to {})", dir.join("results.jsonl").display());
    Ok(())
}

/// The latest recorded line of a scenario, if any.
pub fn last_recorded(env: &Env, scenario: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(env.root.join("bench-results/results.jsonl")).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["scenario"] == scenario)
}
