//! `autokey-bench`: end-to-end benchmarks of autokey against a real PostgreSQL, with the
//! real release binaries as child processes. Never part of the test suite.

mod common;
mod front;
mod issuer;
mod scenarios;

use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

use common::{Env, Res};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// API-built backlog (orders created + paid over HTTP, no worker running), then 1
    /// worker: orders/s until none is PAID, over 10 pools and on one hot pool; each next
    /// to the same backlog SQL-seeded + ANALYZE.
    Drain,
    /// Orders created, paid and fetched (fulfill?wait) over HTTP at a constant 200/s and
    /// 1000/s while the worker fulfills: pay -> fulfilled p50/p99 from the database's
    /// timestamps and at the client.
    #[value(alias = "latency")]
    Steady,
    /// POST /orders, GET /orders/:id, create + pay pairs over HTTP against the same run's
    /// limits (wrk on /healthz, pgbench -S, a one-insert pgbench script).
    #[value(alias = "intake")]
    Http,
    /// Idle RSS of the api and the worker.
    Footprint,
    /// 1M keys streamed as text/plain to the upload route: keys/s and api peak RSS.
    Ingest,
    /// 1M keys uploaded over HTTP, then `autokey-api keys reencrypt` to a new encryption
    /// key while orders are created and paid at --rotation-order-rate: keys/s, its peak
    /// RSS, the orders' pay -> fulfilled latency meanwhile.
    #[value(alias = "reencrypt")]
    Rotation,
    /// SQL-seeded + ANALYZE: 20k PAID orders backlog burnt down by 1, 2, 4 worker processes.
    Fulfill,
    /// SQL-seeded + ANALYZE: pgbench of the minimal fulfillment SQL and a bare apalis
    /// no-op burn-down, as ratios to `fulfill`.
    Limit,
    /// Every scenario, in the order footprint, drain, steady, http, ingest, rotation,
    /// fulfill, limit.
    All,
}

#[derive(Parser, Debug)]
#[command(
    name = "autokey-bench",
    about = "autokey benchmarks through the HTTP API: backlog drain, steady-state latency, HTTP throughput vs the machine's limits, memory.",
    long_about = "autokey benchmarks. Every scenario creates its own database (autokey_bench_<random>) on the \
server, migrated by autokey_shared::db::migrate and left at autovacuum's defaults (the bench never \
runs ANALYZE or VACUUM on it), starts the real release binaries (target/release/autokey-api with \
SIMULATED_PAYMENTS=true and raised rate limits, autokey-worker) as child processes on 127.0.0.1, \
builds its state through the HTTP API (pools created, keys uploaded, offers drafted and \
published by a seller token; orders created and paid by storefront and buyer tokens from a \
keep-alive load generator of bounded concurrency), prints a table, appends a dated JSON line to \
bench-results/results.jsonl and drops its database. `fulfill` and `limit`, and the extra rows \
of `drain`, are SQL-seeded + ANALYZE: they show the same work with fresh statistics.\n\n\
Build the binaries first: cargo build --release --bins --locked (scripts/bench.sh does it all).\n\
For a quick run: --orders 2000 --steady-seconds 5 --http-seconds 3 --keys 100000.\n\
Child process logs go to bench-results/tmp/."
)]
struct Cli {
    /// Which scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// The PostgreSQL server (a URL to its maintenance database).
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
    )]
    server_url: String,
    /// Directory of the release binaries (default: <workspace>/target/release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Orders in the backlogs of `drain`, `fulfill` and `limit`.
    #[arg(long, default_value_t = 20_000)]
    orders: usize,
    /// Pools (one offer each) of `drain`'s spread backlog, `steady` and `http`.
    #[arg(long, default_value_t = 10)]
    pools: usize,
    /// Concurrent HTTP clients creating and paying `drain`'s backlog.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Buyer tokens of the load generator (every fourth order is placed by a buyer token,
    /// the others by a storefront token).
    #[arg(long, default_value_t = 100)]
    buyers: usize,
    /// Worker processes started on `drain`'s backlog.
    #[arg(long, default_value_t = 1)]
    drain_workers: usize,
    /// `drain` without its SQL-seeded + ANALYZE comparison rows.
    #[arg(long)]
    no_sql_seeded: bool,
    /// Seconds a burn-down (`drain`, `fulfill`) may take before the scenario fails.
    #[arg(long, default_value_t = 300)]
    drain_timeout_secs: u64,
    /// Worker process counts of `fulfill` (and client counts of `limit`), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Extra pgbench client counts of `limit`, comma-separated (8 per worker process is
    /// the job concurrency of `fulfill`).
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    extra_clients: Vec<usize>,
    /// Seconds per rate of `steady`.
    #[arg(long, alias = "latency-seconds", default_value_t = 60)]
    steady_seconds: u64,
    /// Arrival rates of `steady` (orders/s), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    rates: Vec<u64>,
    /// Arrivals of `steady` in flight at most (beyond, arrivals start late and are counted).
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    /// The `wait` (seconds) of `steady`'s POST /orders/:id/fulfill?wait=.
    #[arg(long, default_value_t = 10)]
    fulfill_wait: u64,
    /// Seconds per measurement of `http` (each limit and each route).
    #[arg(long, alias = "intake-seconds", default_value_t = 10)]
    http_seconds: u64,
    /// Connection counts of `http` (HTTP clients, wrk connections, pgbench clients),
    /// comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "32")]
    concurrency: Vec<usize>,
    /// Keys uploaded per pool by `http` (create + pay pairs need one each).
    #[arg(long, default_value_t = 6_000)]
    http_keys_per_pool: usize,
    /// pgbench scale of `http`'s `pgbench -S` limit (100k accounts per unit).
    #[arg(long, default_value_t = 10)]
    pgbench_scale: u32,
    /// Keys streamed by `ingest` and re-encrypted by `rotation`.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Orders created and paid per second while `rotation` runs.
    #[arg(long, default_value_t = 50)]
    rotation_order_rate: u64,
    /// An experiment: NAME=VALUE set on every database the bench creates (ALTER DATABASE
    /// .. SET), e.g. plan_cache_mode=force_generic_plan; repeatable. Recorded in the results.
    #[arg(long, value_parser = parse_setting)]
    database_setting: Vec<(String, String)>,
    /// An experiment: NAME=VALUE added to the environment of every api the bench starts,
    /// e.g. PAY_GROUP_MAX_BATCH=1 (pays not grouped); repeatable. Recorded in the results.
    #[arg(long, value_parser = parse_setting)]
    api_env: Vec<(String, String)>,
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s}"))
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ is inside the workspace")
        .to_path_buf();
    let env = Env {
        server_url: cli.server_url.clone(),
        bin_dir: cli
            .bin_dir
            .clone()
            .unwrap_or_else(|| root.join("target").join("release")),
        root,
        db_settings: cli.database_setting.clone(),
        api_env: cli.api_env.clone(),
    };
    let list = match cli.scenario {
        Scenario::All => vec![
            Scenario::Footprint,
            Scenario::Drain,
            Scenario::Steady,
            Scenario::Http,
            Scenario::Ingest,
            Scenario::Rotation,
            Scenario::Fulfill,
            Scenario::Limit,
        ],
        s => vec![s],
    };
    let mut failed = Vec::new();
    let mut fulfill_result = None;
    for s in list {
        eprintln!("==> scenario {s:?}");
        let r = run(&env, &cli, s, &mut fulfill_result).await;
        if let Err(e) = r {
            eprintln!("scenario {s:?} failed: {e}");
            failed.push(format!("{s:?}"));
        }
    }
    if !failed.is_empty() {
        eprintln!("failed scenarios: {}", failed.join(", "));
        std::process::exit(1);
    }
}

async fn run(
    env: &Env,
    cli: &Cli,
    s: Scenario,
    fulfill_result: &mut Option<serde_json::Value>,
) -> Res<()> {
    match s {
        Scenario::Drain => {
            let cfg = scenarios::drain::Cfg {
                orders: cli.orders,
                pools: cli.pools,
                clients: cli.clients,
                buyers: cli.buyers,
                workers: cli.drain_workers,
                sql_seeded: !cli.no_sql_seeded,
                timeout: Duration::from_secs(cli.drain_timeout_secs),
            };
            scenarios::drain::run(env, &cfg).await?;
        }
        Scenario::Steady => {
            let cfg = scenarios::steady::Cfg {
                rates: cli.rates.clone(),
                seconds: cli.steady_seconds,
                pools: cli.pools,
                buyers: cli.buyers,
                max_in_flight: cli.max_in_flight,
                wait: cli.fulfill_wait,
            };
            scenarios::steady::run(env, &cfg).await?;
        }
        Scenario::Http => {
            let cfg = scenarios::http::Cfg {
                seconds: cli.http_seconds,
                concurrency: cli.concurrency.clone(),
                pools: cli.pools,
                keys_per_pool: cli.http_keys_per_pool,
                buyers: cli.buyers,
                pgbench_scale: cli.pgbench_scale,
            };
            scenarios::http::run(env, &cfg).await?;
        }
        Scenario::Fulfill => {
            let cfg = scenarios::fulfill::Cfg {
                orders: cli.orders,
                workers: cli.workers.clone(),
                timeout: Duration::from_secs(cli.drain_timeout_secs),
            };
            *fulfill_result = Some(scenarios::fulfill::run(env, &cfg).await?);
        }
        Scenario::Limit => {
            let mut clients = cli.workers.clone();
            clients.extend(cli.extra_clients.iter().copied());
            scenarios::limit::run(
                env,
                cli.orders,
                &clients,
                &cli.workers,
                fulfill_result.clone(),
            )
            .await?;
        }
        Scenario::Ingest => scenarios::ingest::run(env, cli.keys).await?,
        Scenario::Rotation => {
            let cfg = scenarios::rotation::Cfg {
                keys: cli.keys as usize,
                rate: cli.rotation_order_rate,
                buyers: cli.buyers,
            };
            scenarios::rotation::run(env, &cfg).await?;
        }
        Scenario::Footprint => {
            scenarios::footprint::run(env).await?;
        }
        Scenario::All => unreachable!(),
    }
    Ok(())
}
