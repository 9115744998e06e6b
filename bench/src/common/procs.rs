//! The real release binaries as child processes, and their RSS and CPU time.

use std::{
    collections::HashMap,
    process::Stdio,
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tokio::process::{Child, Command};

use super::{BenchDb, Env, Res, Secrets, err};

/// A child process of the bench; killed on drop if still running.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
    /// Fails when the process has already exited (it printed why in its log).
    pub fn check_alive(&mut self, env: &Env) -> Res<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(err(format!(
                "{} exited early ({status}); see {}",
                self.name,
                env.tmp_dir().join(format!("{}.log", self.name)).display()
            )));
        }
        Ok(())
    }
}

fn spawn(
    env: &Env,
    bin: &str,
    log_name: &str,
    args: &[&str],
    vars: Vec<(&str, String)>,
) -> Res<Proc> {
    let log = std::fs::File::create(env.tmp_dir().join(format!("{log_name}.log")))?;
    let mut cmd = Command::new(env.bin(bin)?);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let child = cmd.spawn()?;
    Ok(Proc {
        name: log_name.to_string(),
        child,
    })
}

pub fn free_port() -> Res<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The api settings the bench changes from their defaults (all of them rate limits).
pub const API_BENCH_LIMITS: [(&str, &str); 5] = [
    ("RATE_LIMIT_PER_SECOND", "1000000"),
    ("RATE_LIMIT_BURST", "1000000"),
    ("RATE_LIMIT_ANONYMOUS_PER_SECOND", "1000000"),
    ("RATE_LIMIT_ANONYMOUS_BURST", "1000000"),
    ("MAX_CONCURRENT_UPLOADS_PER_SELLER", "8"),
];

/// Starts `autokey-api serve` on 127.0.0.1:`port` and waits until /readyz answers 200.
pub async fn start_api(
    env: &Env,
    db: &BenchDb,
    secrets: &Secrets,
    port: u16,
    log: &str,
) -> Res<Proc> {
    let mut vars: Vec<(&str, String)> = vec![
        ("DATABASE_URL", db.url.clone()),
        ("PORT", port.to_string()),
        ("BIND_ADDR", "127.0.0.1".into()),
        // The load generator pays through the simulated pay route.
        ("SIMULATED_PAYMENTS", "true".into()),
    ];
    // Rate limits raised so that the figures measure the service, not its limiter: the
    // bench's few tokens (and wrk's anonymous /healthz) stand for many real clients. Every
    // other setting (connections, timeouts, load shedding) keeps its default.
    for (k, v) in API_BENCH_LIMITS {
        vars.push((k, v.to_string()));
    }
    for (k, v) in &env.api_env {
        vars.push((k.as_str(), v.clone()));
    }
    vars.extend(secrets.env());
    let mut proc = spawn(env, "autokey-api", log, &["serve"], vars)?;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        proc.check_alive(env)?;
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(proc);
        }
        if Instant::now() > deadline {
            return Err(err("autokey-api did not become ready within 15 s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `autokey-worker run` (default `--concurrency`).
pub fn start_worker(env: &Env, db: &BenchDb, secrets: &Secrets, log: &str) -> Res<Proc> {
    let mut vars: Vec<(&str, String)> = vec![("DATABASE_URL", db.url.clone())];
    vars.extend(secrets.env());
    spawn(env, "autokey-worker", log, &["run"], vars)
}

/// Starts `autokey-api keys reencrypt` to a new encryption key `new` (id k2), the
/// current one retired (k1).
pub fn start_reencrypt(
    env: &Env,
    db: &BenchDb,
    secrets: &Secrets,
    new: &[u8; 32],
    log: &str,
) -> Res<Proc> {
    let mut vars: Vec<(&str, String)> = vec![("DATABASE_URL", db.url.clone())];
    vars.extend(secrets.rotated_env(new));
    spawn(env, "autokey-api", log, &["keys", "reencrypt"], vars)
}

/// (VmRSS, VmHWM) of a process in MiB.
pub fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU seconds (user + system) used so far by `pid`, if it still runs.
fn cpu_secs_of(pid: u32) -> Option<f64> {
    let tick = 100.0; // USER_HZ on Linux
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
}

/// The server's postmaster, when the server runs on this machine and its data directory
/// is readable.
async fn postmaster_pid(db: &PgPool) -> Option<u32> {
    let dir = sqlx::query_scalar::<_, String>("SELECT current_setting('data_directory')")
        .fetch_one(db)
        .await
        .ok()?;
    std::fs::read_to_string(format!("{dir}/postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
}

/// The postmaster and its children (backends, WAL writer, checkpointer, autovacuum) now.
fn server_processes(postmaster: u32) -> Vec<u32> {
    let mut pids = vec![postmaster];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("PPid:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u32>().ok())
            });
        if ppid == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

/// Whose CPU a group counts.
enum Members {
    Fixed(Vec<u32>),
    /// The server's processes as they are at each reading: backends that connect during a
    /// phase (a pool growing under load) count from their start.
    Server(Option<u32>),
}

impl Members {
    fn pids(&self) -> Vec<u32> {
        match self {
            Members::Fixed(pids) => pids.clone(),
            Members::Server(Some(postmaster)) => server_processes(*postmaster),
            Members::Server(None) => Vec::new(),
        }
    }
}

/// CPU used during a phase by the api, the database server, the worker and the bench
/// itself (the load generator), in ms per operation. A backend that exits during the
/// phase takes its CPU with it (rare: pools keep their connections).
pub struct CpuMeter {
    groups: Vec<(&'static str, Members, HashMap<u32, f64>)>,
}

impl CpuMeter {
    pub async fn start(db: &PgPool, api: u32, worker: Option<u32>) -> Self {
        let mut groups = vec![
            ("api", Members::Fixed(vec![api])),
            ("postgres", Members::Server(postmaster_pid(db).await)),
            ("generator", Members::Fixed(vec![std::process::id()])),
        ];
        if let Some(w) = worker {
            groups.push(("worker", Members::Fixed(vec![w])));
        }
        CpuMeter {
            groups: groups
                .into_iter()
                .map(|(n, m)| {
                    let before = m
                        .pids()
                        .into_iter()
                        .filter_map(|pid| Some((pid, cpu_secs_of(pid)?)))
                        .collect();
                    (n, m, before)
                })
                .collect(),
        }
    }

    /// ms of CPU per operation for each group since `start`, and their sum.
    pub fn per_op(&self, ops: u64) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        let mut total = 0.0;
        for (name, members, before) in &self.groups {
            let used: f64 = members
                .pids()
                .into_iter()
                .filter_map(|pid| {
                    Some(cpu_secs_of(pid)? - before.get(&pid).copied().unwrap_or(0.0))
                })
                .sum();
            let ms = used * 1000.0 / ops.max(1) as f64;
            total += ms;
            out.insert((*name).into(), ms.into());
        }
        out.insert("total".into(), total.into());
        serde_json::Value::Object(out)
    }
}
