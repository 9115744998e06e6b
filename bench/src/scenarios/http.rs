//! `http`: HTTP read and write throughput of the api, compared in the same run with what
//! this machine allows: `wrk` on GET /healthz (the HTTP stack with no database), the
//! bench's own generator on /healthz (its ceiling), `pgbench -S` (a primary-key read), a
//! one-insert pgbench script (one INSERT and its commit) and the same insert with a NOTIFY
//! in its transaction (what a pay's commit is: its job is announced to the fast lane). Then, on a shop built over
//! HTTP with one worker running: POST /orders, GET /orders/:id on PENDING orders (a plain
//! read), the same read with a JWT of an OpenID issuer instead of an autokey token
//! (`crate::issuer`: ES256, its key fetched once and cached), create + pay pairs (the worker
//! fulfilling behind) and GET /orders/:id on FULFILLED orders (keys decrypted, the read
//! audit-logged).

use std::{process::Stdio, sync::Arc, time::Duration};

use uuid::Uuid;

use crate::{common::*, front::*, issuer::Issuer, scenarios::limit::pgbench_path};

pub struct Cfg {
    pub seconds: u64,
    pub concurrency: Vec<usize>,
    pub pools: usize,
    pub keys_per_pool: usize,
    pub buyers: usize,
    pub pgbench_scale: u32,
}

const ONE_INSERT: &str = "-- One order-like row and its commit (synchronous_commit as configured).
INSERT INTO bench_insert (id, buyer_id, offer_id, amount_cents, currency, status)
VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 999, 'EUR', 'PENDING');
";

/// The same insert with a NOTIFY in its transaction, as a pay does (the fast lane's
/// announcement): PostgreSQL serializes the commits of notifying transactions (a global
/// lock held across the commit's WAL flush), so this is the ceiling of such transactions.
const ONE_INSERT_NOTIFY: &str = "-- One insert and a NOTIFY in one transaction.
BEGIN;
INSERT INTO bench_insert (id, buyer_id, offer_id, amount_cents, currency, status)
VALUES (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 999, 'EUR', 'PENDING');
SELECT pg_notify('bench_lane', 'x');
COMMIT;
";

pub async fn run(env: &Env, cfg: &Cfg) -> Res<serde_json::Value> {
    // The api also takes JWTs of a local issuer (OIDC_ISSUERS), for the JWT read phase.
    let issuer = Issuer::start().await?;
    let mut env = env.clone();
    env.api_env.extend(issuer.api_env());
    let env = &env;
    let front = Arc::new(Front::start(env, "http", cfg.buyers).await?);
    let r = body(env, cfg, &front, &issuer).await;
    if let Ok(f) = Arc::try_unwrap(front) {
        f.close().await;
    }
    r
}

async fn body(env: &Env, cfg: &Cfg, front: &Arc<Front>, issuer: &Issuer) -> Res<serde_json::Value> {
    let shop = front.shop(cfg.pools, cfg.keys_per_pool).await?;
    eprintln!(
        "http: {} keys uploaded over HTTP in {:.1} s",
        shop.keys, shop.upload_secs
    );
    let mut worker = start_worker(env, &front.db, &front.secrets, "http-worker")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let phase = Duration::from_secs(cfg.seconds);
    let pgbench = pgbench_path()?;

    let mut rows = Vec::new();
    let mut out = Vec::new();
    let mut next = 0usize;
    for &c in &cfg.concurrency {
        // The machine's limits, same run.
        let wrk = wrk_healthz(front, c, cfg.seconds).await;
        let f = front.clone();
        let m = CpuMeter::start(&front.db.pool, front.api.pid(), Some(worker.pid())).await;
        let gen_healthz = closed_loop(c, Until::For(phase), move |_| {
            let f = f.clone();
            async move {
                let r = f
                    .client
                    .get(format!("{}/healthz", f.base))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let ok = r.status().is_success();
                let _ = r.bytes().await;
                if ok { Ok(None) } else { Err("healthz".into()) }
            }
        })
        .await;
        let healthz_cpu = m.per_op(gen_healthz.ok);
        let (pg_select, pg_insert, pg_notify) = pgbench_limits(env, &pgbench, c, cfg).await?;
        eprintln!(
            "http c={c}: limits: wrk /healthz {}, generator /healthz {:.0}, pgbench -S {pg_select:.0}, one insert {pg_insert:.0}, insert + NOTIFY {pg_notify:.0}",
            wrk.as_ref()
                .map(|v| f0(*v))
                .unwrap_or_else(|e| e.to_string()),
            gen_healthz.per_s()
        );

        // POST /orders.
        let offers: Arc<[Uuid]> = shop.offers.clone().into();
        let (f, o, base) = (front.clone(), offers.clone(), next);
        let wpid = Some(worker.pid());
        let m = CpuMeter::start(&front.db.pool, front.api.pid(), wpid).await;
        let creates = closed_loop(c, Until::For(phase), move |i| {
            let (f, o) = (f.clone(), o.clone());
            async move {
                let i = base + i;
                let id = f.create_order(&f.who(i), o[i % o.len()]).await?;
                Ok(Some(id))
            }
        })
        .await;
        let creates_cpu = m.per_op(creates.ok);
        creates.report_error("POST /orders");
        next += creates.ids.len() + creates.errors as usize + c;

        // GET /orders/:id of those PENDING orders.
        let m = CpuMeter::start(&front.db.pool, front.api.pid(), wpid).await;
        let get_pending = get_orders(front, &creates.ids, base, c, phase).await;
        let get_pending_cpu = m.per_op(get_pending.ok);
        get_pending.report_error("GET /orders/:id (PENDING)");

        // The same read by a storefront signed in with a JWT (its own PENDING orders, as
        // many as the autokey tokens' above): what verifying a cached JWT costs.
        let jwt_who = Who {
            token: issuer.token("bench-storefront", "storefront")?.into(),
            customer: None,
        };
        let (f, o, jwt_base, w) = (front.clone(), offers.clone(), next, jwt_who.clone());
        let jwt_creates = closed_loop(c, Until::Count(creates.ids.len().max(c)), move |i| {
            let (f, o, w) = (f.clone(), o.clone(), w.clone());
            async move {
                let i = jwt_base + i;
                let who = Who {
                    customer: Some(Uuid::from_u128(0xb0_0000 + (i % 10_000) as u128)),
                    ..w
                };
                Ok(Some(f.create_order(&who, o[i % o.len()]).await?))
            }
        })
        .await;
        jwt_creates.report_error("POST /orders (JWT)");
        next += jwt_creates.ids.len() + jwt_creates.errors as usize + c;
        let m = CpuMeter::start(&front.db.pool, front.api.pid(), wpid).await;
        let get_jwt = get_orders_as(front, &jwt_creates.ids, &jwt_who, c, phase).await;
        let get_jwt_cpu = m.per_op(get_jwt.ok);
        get_jwt.report_error("GET /orders/:id (PENDING, JWT)");

        // create + pay pairs, the worker fulfilling behind.
        let (f, o, pair_base) = (front.clone(), offers.clone(), next);
        let m = CpuMeter::start(&front.db.pool, front.api.pid(), wpid).await;
        let pairs = closed_loop(c, Until::For(phase), move |i| {
            let (f, o) = (f.clone(), o.clone());
            async move {
                let i = pair_base + i;
                let who = f.who(i);
                let id = f.create_order(&who, o[i % o.len()]).await?;
                f.pay(&who, id).await?;
                Ok(Some(id))
            }
        })
        .await;
        // The worker's share of the pairs' fulfillment may finish after the phase: it is
        // counted up to here.
        let pairs_cpu = m.per_op(pairs.ok);
        pairs.report_error("create + pay");
        next += pairs.ids.len() + pairs.errors as usize + c;
        let backlog_at_end = front
            .status_counts()
            .await?
            .get("PAID")
            .copied()
            .unwrap_or(0);
        // Let the worker finish, then read the FULFILLED orders.
        let caught_up = wait_no_paid(front, Duration::from_secs(120)).await?;
        worker.check_alive(env)?;
        let m = CpuMeter::start(&front.db.pool, front.api.pid(), wpid).await;
        let get_fulfilled = get_orders(front, &pairs.ids, pair_base, c, phase).await;
        let get_fulfilled_cpu = m.per_op(get_fulfilled.ok);
        get_fulfilled.report_error("GET /orders/:id (FULFILLED)");

        let wrk_rps = wrk.as_ref().copied().unwrap_or(f64::NAN);
        let wrk_error = wrk.as_ref().err().map(|e| e.to_string());
        let mut level = Vec::new();
        let none = serde_json::Value::Null;
        let mut add = |what: &str,
                       rps: f64,
                       p50: f64,
                       p99: f64,
                       errors: u64,
                       vs: f64,
                       vs_what: &str,
                       target: Option<f64>,
                       cpu: &serde_json::Value| {
            let cpu_ms = |k: &str| cpu[k].as_f64().map(f2).unwrap_or_else(|| "-".into());
            rows.push(vec![
                c.to_string(),
                what.to_string(),
                f0(rps),
                if p50.is_nan() { "-".into() } else { f2(p50) },
                if p99.is_nan() { "-".into() } else { f2(p99) },
                errors.to_string(),
                if vs.is_nan() {
                    "-".into()
                } else {
                    format!("{} {vs_what}", f2(rps / vs))
                },
                f2(rps / wrk_rps),
                match target {
                    Some(t) => format!("{} (>= {t:.0})", if rps >= t { "met" } else { "NOT met" }),
                    None => "-".into(),
                },
                if cpu.is_null() {
                    "-".into()
                } else {
                    format!(
                        "{} = {} + {} + {} + {}",
                        cpu_ms("total"),
                        cpu_ms("api"),
                        cpu_ms("postgres"),
                        cpu_ms("generator"),
                        cpu_ms("worker")
                    )
                },
            ]);
            level.push(serde_json::json!({
                "what": what, "per_s": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors,
                "ratio_to_limit": rps / vs, "limit": vs_what, "ratio_to_wrk_healthz": rps / wrk_rps,
                "target_per_s": target, "target_met": target.map(|t| rps >= t),
                "cpu_ms_per_op": cpu,
            }));
        };
        add(
            "limit: wrk GET /healthz",
            wrk_rps,
            f64::NAN,
            f64::NAN,
            0,
            f64::NAN,
            "",
            None,
            &none,
        );
        add(
            "limit: generator GET /healthz",
            gen_healthz.per_s(),
            gen_healthz.p(50.0),
            gen_healthz.p(99.0),
            gen_healthz.errors,
            f64::NAN,
            "",
            None,
            &healthz_cpu,
        );
        add(
            "limit: pgbench -S (tps)",
            pg_select,
            f64::NAN,
            f64::NAN,
            0,
            f64::NAN,
            "",
            None,
            &none,
        );
        add(
            "limit: pgbench one insert (tps)",
            pg_insert,
            f64::NAN,
            f64::NAN,
            0,
            f64::NAN,
            "",
            None,
            &none,
        );
        add(
            "limit: pgbench insert + NOTIFY (tps)",
            pg_notify,
            f64::NAN,
            f64::NAN,
            0,
            f64::NAN,
            "",
            None,
            &none,
        );
        add(
            "POST /orders",
            creates.per_s(),
            creates.p(50.0),
            creates.p(99.0),
            creates.errors,
            pg_insert,
            "of one insert",
            Some(4000.0),
            &creates_cpu,
        );
        add(
            "GET /orders/:id (PENDING)",
            get_pending.per_s(),
            get_pending.p(50.0),
            get_pending.p(99.0),
            get_pending.errors,
            pg_select,
            "of pgbench -S",
            Some(10_000.0),
            &get_pending_cpu,
        );
        add(
            "GET /orders/:id (PENDING, storefront JWT ES256)",
            get_jwt.per_s(),
            get_jwt.p(50.0),
            get_jwt.p(99.0),
            get_jwt.errors,
            get_pending.per_s(),
            "of autokey tokens",
            // At most 20% more time per read: at least 1/1.2 of the autokey tokens' rate.
            Some(get_pending.per_s() / 1.2),
            &get_jwt_cpu,
        );
        add(
            "create + pay pairs (worker behind)",
            pairs.per_s(),
            pairs.p(50.0),
            pairs.p(99.0),
            pairs.errors,
            pg_insert,
            "of one insert",
            Some(2000.0),
            &pairs_cpu,
        );
        add(
            "  the same pairs",
            pairs.per_s(),
            f64::NAN,
            f64::NAN,
            0,
            pg_notify,
            "of insert + NOTIFY",
            None,
            &none,
        );
        add(
            "GET /orders/:id (FULFILLED, audited)",
            get_fulfilled.per_s(),
            get_fulfilled.p(50.0),
            get_fulfilled.p(99.0),
            get_fulfilled.errors,
            pg_select,
            "of pgbench -S",
            None,
            &get_fulfilled_cpu,
        );
        out.push(serde_json::json!({
            "concurrency": c, "seconds": cfg.seconds, "results": level,
            "paid_backlog_after_pairs": backlog_at_end, "worker_caught_up_after_s": caught_up,
            "wrk_error": wrk_error,
        }));
    }
    let (_, api_hwm) = rss_mib(front.api.pid()).unwrap_or_default();
    worker.kill().await;
    print_table(
        "http: throughput over keep-alive HTTP/1.1 against this run's limits (c = connections; ms at the client)",
        &[
            "c",
            "what",
            "req/s",
            "p50",
            "p99",
            "errors",
            "ratio to limit",
            "/ wrk healthz",
            "target",
            "CPU ms/op = api + pg + generator + worker",
        ],
        &rows,
    );
    let results = serde_json::json!({
        "levels": out, "pools": cfg.pools, "api_peak_rss_mib": api_hwm,
        "pgbench_scale": cfg.pgbench_scale,
        "api_settings_changed": API_BENCH_LIMITS.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
    });
    record(env, &front.db.pool, "http", results.clone()).await?;
    Ok(results)
}

/// GET /orders/:id over `ids` (in turn, each by the token that created it) for `phase`.
async fn get_orders(
    front: &Arc<Front>,
    ids: &[(usize, Uuid)],
    base: usize,
    c: usize,
    phase: Duration,
) -> Outcome {
    if ids.is_empty() {
        return Outcome {
            first_error: Some("no orders to read".into()),
            secs: 1.0,
            ..Default::default()
        };
    }
    let ids: Arc<[(usize, Uuid)]> = ids.into();
    let f = front.clone();
    closed_loop(c, Until::For(phase), move |i| {
        let (f, ids) = (f.clone(), ids.clone());
        async move {
            // A stride through the list, so that concurrent reads hit different orders.
            let (n, id) = ids[(i * 7919) % ids.len()];
            // Operation n of the loop that created it was order base + n, by who(base + n).
            f.get_order(&f.who(base + n), id).await?;
            Ok(None)
        }
    })
    .await
}

/// GET /orders/:id over `ids`, all by `who`, for `phase`.
async fn get_orders_as(
    front: &Arc<Front>,
    ids: &[(usize, Uuid)],
    who: &Who,
    c: usize,
    phase: Duration,
) -> Outcome {
    if ids.is_empty() {
        return Outcome {
            first_error: Some("no orders to read".into()),
            secs: 1.0,
            ..Default::default()
        };
    }
    let ids: Arc<[(usize, Uuid)]> = ids.into();
    let (f, who) = (front.clone(), who.clone());
    closed_loop(c, Until::For(phase), move |i| {
        let (f, ids, who) = (f.clone(), ids.clone(), who.clone());
        async move {
            let (_, id) = ids[(i * 7919) % ids.len()];
            f.get_order(&who, id).await?;
            Ok(None)
        }
    })
    .await
}

async fn wait_no_paid(front: &Front, limit: Duration) -> Res<f64> {
    let start = std::time::Instant::now();
    loop {
        let paid = {
            let mut conn = front.db.pool.acquire().await?;
            autokey_shared::store::orders::waiting_counts(&mut conn)
                .await?
                .0
        };
        if paid == 0 {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > limit {
            return Err(err(format!("{paid} orders still PAID after {limit:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `wrk` (2 threads, `c` connections, keep-alive) on GET /healthz: requests/s.
async fn wrk_healthz(front: &Front, c: usize, seconds: u64) -> Res<f64> {
    let out = tokio::process::Command::new("wrk")
        .args([
            "-t",
            "2",
            "-c",
            &c.to_string(),
            "-d",
            &format!("{seconds}s"),
        ])
        .arg(format!("{}/healthz", front.base))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| err(format!("wrk: {e} (install it: apt-get install wrk)")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        return Err(err(format!("wrk got errors: {text}")));
    }
    text.lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            err(format!(
                "wrk printed no rate: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })
}

/// pgbench -S and a one-insert script, `c` clients, -M prepared, on a database of their
/// own on the same server: (select tps, insert tps).
async fn pgbench_limits(
    env: &Env,
    pgbench: &std::path::Path,
    c: usize,
    cfg: &Cfg,
) -> Res<(f64, f64, f64)> {
    let db = BenchDb::create(env, 2).await?;
    let r = async {
        let init = tokio::process::Command::new(pgbench)
            .args(["-i", "-q", "-s", &cfg.pgbench_scale.to_string()])
            .arg(&db.url)
            .kill_on_drop(true)
            .output()
            .await?;
        if !init.status.success() {
            return Err(err(format!(
                "pgbench -i: {}",
                String::from_utf8_lossy(&init.stderr)
            )));
        }
        let select = pgbench_tps(env, pgbench, &db, &["-S"], c, cfg.seconds, "select").await?;
        sqlx::query(
            "CREATE TABLE bench_insert (id uuid PRIMARY KEY, buyer_id uuid NOT NULL, offer_id uuid NOT NULL,
                 amount_cents bigint NOT NULL, currency text NOT NULL, status text NOT NULL,
                 created_at timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&db.pool)
        .await?;
        let script = env.tmp_dir().join("http-one-insert.sql");
        std::fs::write(&script, ONE_INSERT)?;
        let insert = pgbench_tps(
            env,
            pgbench,
            &db,
            &["-f", &script.to_string_lossy()],
            c,
            cfg.seconds,
            "insert",
        )
        .await?;
        let script = env.tmp_dir().join("http-one-insert-notify.sql");
        std::fs::write(&script, ONE_INSERT_NOTIFY)?;
        let notify = pgbench_tps(
            env,
            pgbench,
            &db,
            &["-f", &script.to_string_lossy()],
            c,
            cfg.seconds,
            "insert-notify",
        )
        .await?;
        Ok((select, insert, notify))
    }
    .await;
    db.drop_now().await;
    r
}

async fn pgbench_tps(
    env: &Env,
    pgbench: &std::path::Path,
    db: &BenchDb,
    args: &[&str],
    c: usize,
    seconds: u64,
    label: &str,
) -> Res<f64> {
    let out = tokio::process::Command::new(pgbench)
        .args(["-n", "-M", "prepared", "-c", &c.to_string(), "-j", "2"])
        .args(["-T", &seconds.to_string()])
        .args(args)
        .arg(&db.url)
        .kill_on_drop(true)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::fs::write(
        env.tmp_dir().join(format!("http-pgbench-{label}-c{c}.log")),
        format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)),
    )?;
    stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| {
            err(format!(
                "pgbench {label} c={c} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })
}
