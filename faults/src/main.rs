//! `autokey-faults`: the release binaries under the faults production brings, all at once,
//! checked the way Jepsen checks a queue: everything that goes in comes out, once.
//!
//! Run it through `scripts/faults.sh [seconds]`, which builds the binaries and owns the
//! private PostgreSQL cluster this needs (it stops and starts that cluster). See
//! RELIABILITY.md for what is done and checked.

mod api;
mod check;
mod load;
mod nemesis;
mod pg;
mod procs;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use clap::Parser;
use rand::{Rng, RngCore};

use crate::{
    api::Api,
    load::Ctx,
    nemesis::Nemesis,
    pg::Cluster,
    procs::{Launcher, free_port, wait_ready},
};

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser, Debug)]
#[command(
    name = "autokey-faults",
    about = "Fault suite: an api and worker processes under SIGKILLs, a database restart, \
terminated connections and a rolling api restart, with concurrent orders, payments (simulated \
and signed webhooks, replayed), cancels and uploads; then checks that nothing was lost or doubled.",
    long_about = None
)]
struct Args {
    /// Seconds of load (and faults). With --orders, the load ends at whichever comes first.
    #[arg(long)]
    seconds: Option<u64>,
    /// Orders to place. Without --seconds the load lasts until they are all placed.
    #[arg(long)]
    orders: Option<u64>,
    /// The same load without any fault (the baseline).
    #[arg(long)]
    no_faults: bool,
    /// URL of the private cluster's maintenance database (superuser).
    #[arg(long)]
    server_url: String,
    /// The private cluster's data directory (it is stopped and started).
    #[arg(long)]
    pgdata: PathBuf,
    /// Where pg_ctl is.
    #[arg(long)]
    pg_bin: PathBuf,
    /// Where autokey-api and autokey-worker are (release builds).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Logs of every process and the `pids` file go here.
    #[arg(long)]
    run_dir: PathBuf,
    /// Concurrent storefront clients (two of them buy from the nearly empty pools).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    #[arg(long, default_value_t = 3)]
    workers: usize,
    #[arg(long, default_value_t = 4)]
    rich_pools: usize,
    #[arg(long, default_value_t = 3)]
    scarce_pools: usize,
    /// Keys a nearly empty pool starts with.
    #[arg(long, default_value_t = 6)]
    scarce_keys: usize,
    /// Keys per upload into a well-stocked pool (at start, and whenever it runs low).
    #[arg(long, default_value_t = 10_000)]
    chunk: usize,
    /// Seconds to wait for quiescence after the load before failing.
    #[arg(long, default_value_t = 300)]
    quiesce_timeout: u64,
    /// The slowest acceptable 503 answer while the database is down, in seconds.
    #[arg(long, default_value_t = 8.0)]
    max_unavailable_secs: f64,
    /// How the database is stopped: immediate (a crash: WAL recovery at start) or fast.
    #[arg(long, default_value = "immediate")]
    db_stop_mode: String,
    /// Fulfilled orders whose keys are read back through the API (a random sample beyond).
    #[arg(long, default_value_t = 20_000)]
    api_verify_max: usize,
    /// Seed of the clients' and the faults' random choices (random when absent).
    #[arg(long)]
    seed: Option<u64>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let code = tokio::select! {
        code = run(args) => match code {
            Ok(code) => code,
            Err(e) => {
                eprintln!("faults: error: {e}");
                2
            }
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("faults: interrupted");
            130
        }
    };
    // Children are killed on drop (kill_on_drop), and the script kills whatever is left.
    std::process::exit(code);
}

/// The machine's load average (the run shares its cores with whatever else runs).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

async fn run(args: Args) -> Res<i32> {
    let seconds = match (args.seconds, args.orders) {
        (None, None) => Some(60),
        (s, _) => s,
    };
    let seed = args.seed.unwrap_or_else(|| rand::thread_rng().r#gen());
    let faults = !args.no_faults;
    eprintln!(
        "faults: seed {seed}; load: {}{}; faults {}",
        seconds.map(|s| format!("{s} s")).unwrap_or_default(),
        args.orders
            .map(|n| format!(" {n} orders"))
            .unwrap_or_default(),
        if faults { "on" } else { "off (baseline)" }
    );

    // ---- database, schema, secrets, tokens
    let db_name = "autokey_faults";
    pg::create_database(&args.server_url, db_name, "autokey_api").await?;
    let worker_url = pg::url_for(&args.server_url, db_name, None)?;
    let api_url = pg::url_for(&args.server_url, db_name, Some("autokey_api"))?;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let hex32 = || {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    };
    use base64::Engine;
    let launcher = Arc::new(Launcher {
        bin_dir: std::fs::canonicalize(&args.bin_dir)?,
        run_dir: args.run_dir.clone(),
        common_env: vec![
            ("ENCRYPTION_KEY".into(), hex32()),
            ("ENCRYPTION_KEY_ID".into(), "k1".into()),
            ("FINGERPRINT_KEY".into(), hex32()),
            (
                "PAYMENT_WEBHOOK_SECRET".into(),
                format!(
                    "whsec_{}",
                    base64::engine::general_purpose::STANDARD.encode(secret)
                ),
            ),
        ],
        api_database_url: api_url,
        worker_database_url: worker_url.clone(),
    });
    launcher.api_command(&["migrate"]).await?;
    let seller = launcher
        .api_command(&["token", "create", "--role", "seller"])
        .await?;
    let storefront = launcher
        .api_command(&["token", "create", "--role", "storefront"])
        .await?;
    let db = pg::pool(&worker_url, 4).await?;

    // ---- processes
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let mut api_proc = launcher.start_api("api-1", port)?;
    wait_ready(
        &reqwest::Client::new(),
        &base,
        &mut api_proc,
        &launcher.log_path("api-1"),
        Duration::from_secs(30),
    )
    .await?;
    let mut workers = Vec::new();
    for i in 1..=args.workers {
        workers.push(launcher.start_worker(&format!("faults-w{i}"))?);
    }
    let cluster = Cluster {
        pgdata: args.pgdata.clone(),
        pg_bin: args.pg_bin.clone(),
        log: args.run_dir.join("logs").join("postgres.log"),
    };
    let mut nemesis = Nemesis::new(
        launcher.clone(),
        cluster,
        db.clone(),
        api_proc,
        workers,
        faults,
        seed ^ 0x5eed,
        args.db_stop_mode.clone(),
        Duration::from_secs_f64(args.max_unavailable_secs),
    );

    // Requests stop retrying (and the run fails) long after any sane run would be over.
    let budget = seconds.map(|s| s * 3 + 900).unwrap_or(6 * 3600);
    let give_up_at = Instant::now() + Duration::from_secs(budget);
    let api = Api::new(base, storefront, seller, secret.to_vec(), give_up_at);

    // ---- the shop
    let pools = load::create_shop(&api, args.rich_pools, args.scarce_pools).await?;
    let tag = format!("{:08x}", rand::thread_rng().next_u32());
    let ctx = Arc::new(Ctx::new(api, pools, tag, args.orders));
    for p in ctx.rich() {
        load::upload(&ctx, p, args.chunk).await?;
    }
    for p in ctx.scarce() {
        load::upload(&ctx, p, args.scarce_keys).await?;
    }
    eprintln!(
        "faults: {} pools ({} nearly empty), {} keys uploaded; {} workers, {} clients",
        ctx.pools.len(),
        args.scarce_pools,
        ctx.uploaded
            .iter()
            .map(|u| u.load(Ordering::Relaxed))
            .sum::<u64>(),
        args.workers,
        args.clients
    );

    // ---- the load, and the faults
    let load_at_start = loadavg();
    let load_started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    let scarce_clients = if args.scarce_pools > 0 { 2 } else { 0 };
    for i in 0..args.clients.max(scarce_clients + 1) {
        let ctx = ctx.clone();
        let s = seed.wrapping_add(i as u64 + 1);
        if i < scarce_clients {
            clients.spawn(load::scarce_client(ctx, s));
        } else {
            clients.spawn(load::rich_client(ctx, s));
        }
    }
    let restocker = tokio::spawn(load::restocker(
        ctx.clone(),
        seed ^ 0xface,
        (args.chunk / 2) as i64,
        args.chunk,
    ));
    let progress = {
        let ctx = ctx.clone();
        move || -> Option<f64> {
            if ctx.stopping() {
                return None;
            }
            let t = seconds
                .map(|s| ctx.started.elapsed().as_secs_f64() / s as f64)
                .unwrap_or(0.0);
            let n = args
                .orders
                .map(|n| ctx.placed.load(Ordering::Relaxed) as f64 / n as f64)
                .unwrap_or(0.0);
            Some(t.max(n))
        }
    };
    let nemesis_task = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            let r = nemesis.run(ctx, progress).await;
            (nemesis, r)
        }
    });

    // The load ends after `seconds`, or when the clients have placed every order.
    let mut ledger = Vec::new();
    let mut last_report = Instant::now();
    let mut client_error = None;
    loop {
        let over = seconds.is_some_and(|s| load_started.elapsed() >= Duration::from_secs(s));
        if over {
            ctx.stop.store(true, Ordering::Relaxed);
        }
        match tokio::time::timeout(Duration::from_millis(200), clients.join_next()).await {
            Ok(None) => break,
            Ok(Some(done)) => match done? {
                Ok(orders) => ledger.extend(orders),
                Err(e) => {
                    client_error = Some(e.to_string());
                    ctx.stop.store(true, Ordering::Relaxed);
                }
            },
            Err(_) => {}
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "faults: {:>4.0} s: {} orders placed, {} paid, {} canceled, {} out of stock; {} requests, {} retried",
                load_started.elapsed().as_secs_f64(),
                ctx.placed.load(Ordering::Relaxed),
                ctx.paid.load(Ordering::Relaxed),
                ctx.canceled.load(Ordering::Relaxed),
                ctx.out_of_stock.load(Ordering::Relaxed),
                ctx.api.stats.requests.load(Ordering::Relaxed),
                ctx.api.stats.retries.load(Ordering::Relaxed),
            );
        }
    }
    ctx.stop.store(true, Ordering::Relaxed);
    let load_time = load_started.elapsed();
    let load_at_end = loadavg();
    if let Err(e) = restocker.await? {
        client_error.get_or_insert(e.to_string());
    }
    let (mut nemesis, nemesis_result) = nemesis_task.await?;
    nemesis_result?;
    eprintln!(
        "faults: load over after {}: {} orders placed; waiting for quiescence",
        secs(load_time),
        ledger.len()
    );

    // ---- quiescence: faults stopped, every worker healthy
    let quiet_started = Instant::now();
    let quiescence = check::quiesce(&db, Duration::from_secs(args.quiesce_timeout)).await;
    let quiet_time = quiet_started.elapsed();
    nemesis.reap(&ctx).await?;
    let total_time = load_started.elapsed();

    // ---- checks
    let checks_started = Instant::now();
    let mut verdict = check::verify(&ctx, &db, &ledger, args.api_verify_max).await?;
    let checks_time = checks_started.elapsed();
    let record = &nemesis.record;
    let mut violations: Vec<String> = record.violations.clone();
    if let Some(e) = client_error {
        violations.push(format!("a client could not finish: {e}"));
    }
    if let Err(state) = &quiescence {
        violations.push(format!(
            "not quiescent {} s after the load: {state}",
            args.quiesce_timeout
        ));
    }
    violations.extend(ctx.api.anomalies.lock().unwrap().iter().cloned());
    violations.append(&mut verdict.violations);
    let stats = &ctx.api.stats;
    let slowest_503 = stats.slowest_unavailable_us.load(Ordering::Relaxed) as f64 / 1e6;
    if faults && slowest_503 > args.max_unavailable_secs {
        violations.push(format!(
            "a client waited {slowest_503:.2} s for a 503 (limit {} s)",
            args.max_unavailable_secs
        ));
    }

    for n in &record.notes {
        println!("faults: {n}");
    }
    println!(
        "faults: timing: load {}, quiescence {}, total {} (then checks {}); {} orders placed ({:.0}/s over the total), {} keys uploaded in {} uploads",
        secs(load_time),
        secs(quiet_time),
        secs(total_time),
        secs(checks_time),
        ledger.len(),
        ledger.len() as f64 / total_time.as_secs_f64(),
        ctx.uploaded
            .iter()
            .map(|u| u.load(Ordering::Relaxed))
            .sum::<u64>(),
        ctx.uploads.load(Ordering::Relaxed),
    );
    println!(
        "faults: clients: {} requests, {} retried ({} connection errors, {} x 503 (slowest {:.2} s), {} x 5xx, {} timeouts); \
         {} webhook deliveries for {} webhook-paid orders; {} orders refused out of stock; {} terminated api connections; \
         {} fulfilled orders' keys read back through the API",
        stats.requests.load(Ordering::Relaxed),
        stats.retries.load(Ordering::Relaxed),
        stats.connection_errors.load(Ordering::Relaxed),
        stats.unavailable.load(Ordering::Relaxed),
        slowest_503,
        stats.server_errors.load(Ordering::Relaxed),
        stats.timeouts.load(Ordering::Relaxed),
        ctx.webhook_sends.load(Ordering::Relaxed),
        ledger.iter().filter(|o| o.webhook.is_some()).count(),
        ctx.out_of_stock.load(Ordering::Relaxed),
        record.terminated_connections,
        verdict.api_verified,
    );
    println!(
        "faults: machine: {} cpus; load average (1, 5, 15 min) {load_at_start} when the load started, {load_at_end} when it ended",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "faults: work: {} orders backordered at some point; {} jobs, done by the fast lane {}, in another job's batch {}, by the queue's workers {}; {} run more than once",
        verdict.ever_backordered,
        verdict.jobs,
        verdict.done_by.0,
        verdict.done_by.1,
        verdict.done_by.2,
        verdict.jobs_rerun
    );
    for v in &violations {
        println!("faults: VIOLATION: {v}");
    }
    println!(
        "faults: {} kills, {} db restart, {} api restart; orders: {} paid, {} fulfilled, {} backordered, {} canceled; duplicates: {}; lost: {}",
        record.kills,
        record.db_restarts,
        record.api_restarts,
        verdict.paid,
        verdict.fulfilled,
        verdict.backordered,
        verdict.canceled,
        verdict.duplicates,
        verdict.lost
    );
    nemesis.shutdown().await;
    db.close().await;
    Ok(
        if violations.is_empty() && verdict.duplicates == 0 && verdict.lost == 0 {
            0
        } else {
            1
        },
    )
}
