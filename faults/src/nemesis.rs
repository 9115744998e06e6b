//! The faults, and the processes they hit: the api and the worker processes are owned
//! here. While the load runs: a random worker is SIGKILLed every 1-3 s and replaced; once
//! each, the api's database connections are terminated, the database is stopped (503
//! probes while it is down) and started again, and the api is replaced by a rolling
//! restart. Anything a process does by itself (exit, fail to reconnect) is a violation.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use sqlx::PgPool;

use crate::{
    Res, api,
    load::Ctx,
    pg::Cluster,
    procs::{Launcher, Proc, free_port, wait_ready},
};

/// What the run did and saw; printed at the end.
#[derive(Default)]
pub struct Record {
    pub kills: u32,
    pub db_restarts: u32,
    pub api_restarts: u32,
    pub terminated_connections: u64,
    pub violations: Vec<String>,
    pub notes: Vec<String>,
}

pub struct Nemesis {
    pub launcher: Arc<Launcher>,
    pub cluster: Cluster,
    /// The run's database, as the superuser (pg_stat_activity, apalis.workers).
    pub db: PgPool,
    pub workers: Vec<Proc>,
    next_worker: u32,
    pub api: Proc,
    next_api: u32,
    pub record: Record,
    rng: StdRng,
    pub faults: bool,
    pub db_stop_mode: String,
    /// How long the database stays down (probes run meanwhile).
    pub db_down: Duration,
    /// The slowest acceptable 503 while the database is down.
    pub max_unavailable: Duration,
}

impl Nemesis {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        launcher: Arc<Launcher>,
        cluster: Cluster,
        db: PgPool,
        api: Proc,
        workers: Vec<Proc>,
        faults: bool,
        seed: u64,
        db_stop_mode: String,
        max_unavailable: Duration,
    ) -> Self {
        let next_worker = workers.len() as u32 + 1;
        Self {
            launcher,
            cluster,
            db,
            workers,
            next_worker,
            api,
            next_api: 2,
            record: Record::default(),
            rng: StdRng::seed_from_u64(seed),
            faults,
            db_stop_mode,
            db_down: Duration::from_secs(3),
            max_unavailable,
        }
    }

    fn violation(&mut self, v: String) {
        eprintln!("faults: VIOLATION {v}");
        self.record.violations.push(v);
    }

    fn note(&mut self, n: String) {
        eprintln!("faults: {n}");
        self.record.notes.push(n);
    }

    pub fn start_worker(&mut self) -> Res<Proc> {
        let name = format!("faults-w{}", self.next_worker);
        self.next_worker += 1;
        self.launcher.start_worker(&name)
    }

    /// Runs until `progress` says the load is over (None), injecting faults on the way
    /// (when enabled); then injects any fault the load ended too early for.
    pub async fn run(&mut self, ctx: Arc<Ctx>, progress: impl Fn() -> Option<f64>) -> Res<()> {
        let mut next_kill = Instant::now() + self.kill_gap();
        let (mut terminated, mut restarted_db, mut restarted_api) = (false, false, false);
        while let Some(p) = progress() {
            self.reap(&ctx).await?;
            if self.faults {
                if !terminated && p >= 0.25 {
                    terminated = true;
                    self.terminate_api_connections(&ctx).await?;
                }
                if !restarted_db && p >= 0.5 {
                    restarted_db = true;
                    self.restart_database(&ctx).await?;
                    next_kill = Instant::now() + self.kill_gap();
                }
                if !restarted_api && p >= 0.75 {
                    restarted_api = true;
                    self.rolling_restart(&ctx).await?;
                }
                if Instant::now() >= next_kill {
                    self.kill_a_worker().await?;
                    next_kill = Instant::now() + self.kill_gap();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.faults {
            if !terminated {
                self.terminate_api_connections(&ctx).await?;
            }
            if !restarted_db {
                self.restart_database(&ctx).await?;
            }
            if !restarted_api {
                self.rolling_restart(&ctx).await?;
            }
        }
        self.reap(&ctx).await
    }

    fn kill_gap(&mut self) -> Duration {
        Duration::from_millis(self.rng.gen_range(1000..=3000))
    }

    /// Processes that exited without being told to are violations; a worker is replaced
    /// (so the run goes on), and so is the api.
    pub async fn reap(&mut self, ctx: &Ctx) -> Res<()> {
        for i in 0..self.workers.len() {
            if let Some(status) = self.workers[i].exited() {
                let name = self.workers[i].name.clone();
                self.violation(format!(
                    "worker {name} exited by itself ({status}); see {}",
                    self.launcher.log_path(&name).display()
                ));
                self.workers[i] = self.start_worker()?;
            }
        }
        if let Some(status) = self.api.exited() {
            let name = self.api.name.clone();
            self.violation(format!(
                "{name} exited by itself ({status}); see {}",
                self.launcher.log_path(&name).display()
            ));
            let (proc, base) = self.start_api().await?;
            self.api = proc;
            ctx.api.set_base(base);
        }
        Ok(())
    }

    async fn start_api(&mut self) -> Res<(Proc, String)> {
        let name = format!("api-{}", self.next_api);
        self.next_api += 1;
        let port = free_port()?;
        let mut proc = self.launcher.start_api(&name, port)?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        wait_ready(
            &http,
            &base,
            &mut proc,
            &self.launcher.log_path(&name),
            Duration::from_secs(30),
        )
        .await?;
        Ok((proc, base))
    }

    async fn kill_a_worker(&mut self) -> Res<()> {
        let i = self.rng.gen_range(0..self.workers.len());
        self.workers[i].sigkill().await;
        self.record.kills += 1;
        self.workers[i] = self.start_worker()?;
        Ok(())
    }

    /// `pg_terminate_backend` on every connection of the api (it connects as its own role).
    async fn terminate_api_connections(&mut self, ctx: &Ctx) -> Res<()> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE usename = 'autokey_api' AND pid <> pg_backend_pid()) t",
        )
        .fetch_one(&self.db)
        .await?;
        self.record.terminated_connections = n as u64;
        if n == 0 {
            self.violation("pg_terminate_backend found no api connection to terminate".into());
        }
        let started = Instant::now();
        let recovered = self.wait_api_ready(ctx, Duration::from_secs(30)).await;
        match recovered {
            true => self.note(format!(
                "terminated {n} api database connections; /readyz 200 again after {:.2} s",
                started.elapsed().as_secs_f64()
            )),
            false => self.violation(format!(
                "after {n} of its database connections were terminated, the api was not ready within 30 s"
            )),
        }
        Ok(())
    }

    async fn wait_api_ready(&self, ctx: &Ctx, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let (status, _, _) =
                api::probe(ctx.api.http(), &format!("{}/readyz", ctx.api.base()), None).await;
            if status == Some(200) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Stops the database, probes the api while it is down (503 `unavailable`, quickly),
    /// starts it again, and checks that the api and the workers that lived through it
    /// recover by themselves: /readyz is 200 again, and each worker's two queues
    /// heartbeat again. Worker kills pause meanwhile so that those workers stay.
    async fn restart_database(&mut self, ctx: &Ctx) -> Res<()> {
        let survivors: Vec<String> = self.workers.iter().map(|w| w.name.clone()).collect();
        let stopped_at = Instant::now();
        self.cluster.stop(&self.db_stop_mode).await?;
        let stop_secs = stopped_at.elapsed().as_secs_f64();

        // Probes while the database is down: a bearer-authenticated read (the token is
        // checked in the database), and readiness.
        let base = ctx.api.base();
        let targets: Vec<(String, Option<String>)> = vec![
            (format!("{base}/readyz"), None),
            (
                format!("{base}/orders/{}", uuid::Uuid::new_v4()),
                Some(ctx.api.storefront.clone()),
            ),
            (
                format!("{base}/key-pools/{}", ctx.pools[0].id),
                Some(ctx.api.seller.clone()),
            ),
        ];
        let mut probes = 0;
        let mut slowest = Duration::ZERO;
        let down_until = Instant::now() + self.db_down;
        loop {
            let round = futures::future::join_all(targets.iter().map(|(url, token)| {
                let http = ctx.api.http();
                async move { (url, api::probe(http, url, token.as_deref()).await) }
            }))
            .await;
            for (url, (status, body, took)) in round {
                probes += 1;
                slowest = slowest.max(took);
                let code = body["error"]["code"].as_str().unwrap_or("");
                if status != Some(503) || code != "unavailable" {
                    self.violation(format!(
                        "database down: GET {url} answered {status:?} {body} after {:.2} s (expected 503 unavailable)",
                        took.as_secs_f64()
                    ));
                } else if took > self.max_unavailable {
                    self.violation(format!(
                        "database down: GET {url} took {:.2} s to answer 503 (limit {:.0} s)",
                        took.as_secs_f64(),
                        self.max_unavailable.as_secs_f64()
                    ));
                }
            }
            if Instant::now() >= down_until {
                break;
            }
        }
        let started_at = Instant::now();
        self.cluster.start().await?;
        let start_secs = started_at.elapsed().as_secs_f64();
        let down_secs = stopped_at.elapsed().as_secs_f64();
        self.record.db_restarts += 1;
        // The database's own clock, for comparing heartbeats.
        let mut db_up_at = None;
        for _ in 0..100 {
            if let Ok(t) = sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>("SELECT now()")
                .fetch_one(&self.db)
                .await
            {
                db_up_at = Some(t);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let db_up_at = db_up_at.ok_or("the database did not answer after its restart")?;
        let up = Instant::now();
        let recovered = self.wait_api_ready(ctx, Duration::from_secs(30)).await;
        let recovery = up.elapsed().as_secs_f64();
        self.note(format!(
            "database stopped ({} mode, {stop_secs:.2} s) and started ({start_secs:.2} s): down {down_secs:.1} s; \
             {probes} probes answered 503 unavailable, slowest {:.2} s",
            self.db_stop_mode,
            slowest.as_secs_f64()
        ));
        if recovered {
            self.note(format!(
                "api ready again {recovery:.2} s after the database came back (same process)"
            ));
        } else {
            self.violation("the api was not ready within 30 s of the database coming back".into());
        }

        // Heartbeats every 2 s: after 8 s each queue of each surviving worker has beaten
        // several times, if it reconnected.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let mut reconnected = 0;
        for name in &survivors {
            let Some(w) = self.workers.iter_mut().find(|w| &w.name == name) else {
                continue;
            };
            if let Some(status) = w.exited() {
                self.violation(format!(
                    "worker {name} exited after the database restart ({status})"
                ));
                continue;
            }
            let (fulfill, replenish): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE id LIKE $1 || '-fulfill-%' AND last_seen > $2),
                        count(*) FILTER (WHERE id LIKE $1 || '-replenish-%' AND last_seen > $2)
                 FROM apalis.workers",
            )
            .bind(name)
            .bind(db_up_at)
            .fetch_one(&self.db)
            .await?;
            if fulfill == 0 || replenish == 0 {
                let which = match (fulfill, replenish) {
                    (0, 0) => "its fulfill and replenish queue workers have",
                    (0, _) => "its fulfill queue worker has",
                    _ => "its replenish queue worker has",
                };
                self.violation(format!(
                    "worker {name} (still running) did not reconnect: {which} not heartbeated in the 8 s since the database came back"
                ));
            } else {
                reconnected += 1;
            }
        }
        self.note(format!(
            "{reconnected} of {} workers that lived through the database restart heartbeat again",
            survivors.len()
        ));
        Ok(())
    }

    /// A second api, the clients moved to it, then SIGTERM to the first: it must finish
    /// what it is doing and exit 0.
    async fn rolling_restart(&mut self, ctx: &Ctx) -> Res<()> {
        let (new, base) = self.start_api().await?;
        let mut old = std::mem::replace(&mut self.api, new);
        ctx.api.set_base(base);
        let asked = Instant::now();
        old.sigterm();
        match old.wait_exit(Duration::from_secs(30)).await {
            Some(status) if status.success() => self.note(format!(
                "rolling restart: {} exited 0 {:.2} s after SIGTERM; clients moved to {}",
                old.name,
                asked.elapsed().as_secs_f64(),
                self.api.name
            )),
            Some(status) => {
                self.violation(format!("{} exited with {status} after SIGTERM", old.name))
            }
            None => {
                self.violation(format!("{} did not exit within 30 s of SIGTERM", old.name));
                old.sigkill().await;
            }
        }
        self.record.api_restarts += 1;
        Ok(())
    }

    /// Stops every process: SIGTERM, then SIGKILL what has not exited after 10 s.
    pub async fn shutdown(&mut self) {
        self.api.sigterm();
        for w in &self.workers {
            w.sigterm();
        }
        for p in self
            .workers
            .iter_mut()
            .chain(std::iter::once(&mut self.api))
        {
            if p.wait_exit(Duration::from_secs(10)).await.is_none() {
                p.sigkill().await;
            }
        }
    }
}
