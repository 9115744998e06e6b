//! `autokey-bench`: end-to-end benchmarks of autokey against a real PostgreSQL, with the
//! real release binaries as child processes. Never part of the test suite.

mod common;
mod scenarios;

use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

use common::{Env, Res};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 20k PAID orders backlog burnt down by 1, 2, 4 worker processes: orders/s.
    Fulfill,
    /// pgbench of the minimal fulfillment SQL and a bare apalis no-op burn-down, as ratios.
    Limit,
    /// pay-commit -> FULFILLED notification latency at a steady 200/s and 1000/s.
    Latency,
    /// POST /orders + POST /orders/:id/pay over HTTP at concurrency 8/32/64; GET polling.
    Intake,
    /// 1M keys streamed as text/plain to the upload route: keys/s and api peak RSS.
    Ingest,
    /// Idle RSS of the api and the worker.
    Footprint,
    /// Every scenario, in the order fulfill, footprint, latency, limit, ingest, intake.
    All,
}

#[derive(Parser, Debug)]
#[command(
    name = "autokey-bench",
    about = "autokey benchmarks: fulfillment throughput vs the database's limit, latency, intake, ingest, footprint.",
    long_about = "autokey benchmarks. Every scenario creates its own database (autokey_bench_<random>) on the \
server, seeds it with bulk SQL, runs the real release binaries (target/release/autokey-api and \
autokey-worker) as child processes on 127.0.0.1, prints a table, appends a dated JSON line to \
bench-results/results.jsonl and drops its database.\n\n\
Build the binaries first: cargo build --release --bins --locked (scripts/bench.sh does it all).\n\
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
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    server_url: String,
    /// Directory of the release binaries (default: <workspace>/target/release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Orders in the fulfill / limit backlogs.
    #[arg(long, default_value_t = 20_000)]
    orders: usize,
    /// Worker process counts of `fulfill` (and client counts of `limit`), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Extra pgbench client counts of `limit`, comma-separated (8 per worker process is
    /// the job concurrency of `fulfill`).
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    extra_clients: Vec<usize>,
    /// Seconds per rate of `latency`.
    #[arg(long, default_value_t = 20)]
    latency_seconds: u64,
    /// Pay rates of `latency` (orders/s), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    rates: Vec<u64>,
    /// Seconds per concurrency level of `intake`.
    #[arg(long, default_value_t = 10)]
    intake_seconds: u64,
    /// Concurrency levels of `intake`, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,32,64")]
    concurrency: Vec<usize>,
    /// Keys streamed by `ingest`.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
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
    };
    let list = match cli.scenario {
        Scenario::All => vec![
            Scenario::Fulfill,
            Scenario::Footprint,
            Scenario::Latency,
            Scenario::Limit,
            Scenario::Ingest,
            Scenario::Intake,
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
        Scenario::Fulfill => {
            let cfg = scenarios::fulfill::Cfg {
                orders: cli.orders,
                workers: cli.workers.clone(),
                timeout: Duration::from_secs(180),
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
        Scenario::Latency => {
            scenarios::latency::run(env, &cli.rates, Duration::from_secs(cli.latency_seconds))
                .await?;
        }
        Scenario::Intake => {
            scenarios::intake::run(
                env,
                &cli.concurrency,
                Duration::from_secs(cli.intake_seconds),
            )
            .await?;
        }
        Scenario::Ingest => scenarios::ingest::run(env, cli.keys).await?,
        Scenario::Footprint => {
            scenarios::footprint::run(env).await?;
        }
        Scenario::All => unreachable!(),
    }
    Ok(())
}
