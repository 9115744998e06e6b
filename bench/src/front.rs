//! Through the front door: a fresh database, the real api (simulated payments on), tokens,
//! and a shop built with HTTP requests only (pools created, keys uploaded as text/plain,
//! offers drafted and published), plus a keep-alive load generator of bounded concurrency.
//! Nothing here touches the tables directly except `create_token` (what `autokey-api
//! token create` does) and read-only counts; no ANALYZE or VACUUM is ever run.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use autokey_shared::{model::Role, store::tokens};
use uuid::Uuid;

use crate::common::*;

/// A caller of the order routes: a storefront (naming its customer) or a buyer (itself).
#[derive(Clone, Debug)]
pub struct Who {
    pub token: Arc<str>,
    /// Some for a storefront: the customer named in `buyerId`.
    pub customer: Option<Uuid>,
}

/// A fresh database with the api running on it.
pub struct Front {
    pub db: BenchDb,
    pub secrets: Secrets,
    pub api: Proc,
    pub base: String,
    pub client: reqwest::Client,
    pub seller: String,
    pub storefront: Arc<str>,
    pub buyers: Vec<Arc<str>>,
}

/// The catalogue built by [`Front::shop`].
pub struct ApiShop {
    #[allow(dead_code)]
    pub pools: Vec<Uuid>,
    pub offers: Vec<Uuid>,
    pub keys: usize,
    pub upload_secs: f64,
}

/// A keep-alive HTTP/1.1 client (one connection per concurrent request, reused).
pub fn client() -> Res<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?)
}

impl Front {
    /// Creates the database (migrated by `autokey_shared::db::migrate`), starts the api
    /// and mints one seller, one storefront and `buyers` buyer tokens.
    pub async fn start(env: &Env, label: &str, buyers: usize) -> Res<Front> {
        let client = client()?;
        let db = BenchDb::create(env, 4).await?;
        match Self::start_on(env, db, client, label, buyers).await {
            Ok(f) => Ok(f),
            Err((db, e)) => {
                db.drop_now().await;
                Err(e)
            }
        }
    }

    async fn start_on(
        env: &Env,
        db: BenchDb,
        client: reqwest::Client,
        label: &str,
        buyers: usize,
    ) -> Result<Front, (BenchDb, Box<dyn std::error::Error + Send + Sync>)> {
        let r = async {
            let mut conn = db.pool.acquire().await?;
            let seller = tokens::create_token(&mut conn, Role::Seller, None)
                .await?
                .token;
            let storefront: Arc<str> = tokens::create_token(&mut conn, Role::Storefront, None)
                .await?
                .token
                .into();
            let mut bs = Vec::with_capacity(buyers);
            for _ in 0..buyers {
                bs.push(
                    tokens::create_token(&mut conn, Role::Buyer, None)
                        .await?
                        .token
                        .into(),
                );
            }
            drop(conn);
            let secrets = Secrets::generate();
            let port = free_port()?;
            let api = start_api(env, &db, &secrets, port, &format!("{label}-api")).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((
                seller, storefront, bs, secrets, api, port,
            ))
        }
        .await;
        match r {
            Ok((seller, storefront, buyers, secrets, api, port)) => Ok(Front {
                db,
                secrets,
                api,
                base: format!("http://127.0.0.1:{port}"),
                client,
                seller,
                storefront,
                buyers,
            }),
            Err(e) => Err((db, e)),
        }
    }

    pub async fn close(self) {
        self.api.kill().await;
        self.db.drop_now().await;
    }

    /// The caller of order `i`: every fourth order is placed by one of the buyer tokens
    /// (in turn), the others by the storefront for one of 10,000 customers.
    pub fn who(&self, i: usize) -> Who {
        if !self.buyers.is_empty() && i.is_multiple_of(4) {
            Who {
                token: self.buyers[(i / 4) % self.buyers.len()].clone(),
                customer: None,
            }
        } else {
            Who {
                token: self.storefront.clone(),
                customer: Some(Uuid::from_u128(0xb0_0000 + (i % 10_000) as u128)),
            }
        }
    }

    /// `pools` pools, each with `keys_per_pool` keys uploaded through the upload route
    /// (text/plain) and one AUTO_KEY offer drafted and published, all over HTTP.
    pub async fn shop(&self, pools: usize, keys_per_pool: usize) -> Res<ApiShop> {
        let run = &Uuid::new_v4().simple().to_string()[..10];
        let mut pool_ids = Vec::with_capacity(pools);
        let mut offer_ids = Vec::with_capacity(pools);
        let mut upload_secs = 0.0;
        for p in 0..pools {
            let pool: serde_json::Value = self
                .seller_call(
                    self.client
                        .post(format!("{}/key-pools", self.base))
                        .json(&serde_json::json!({ "name": format!("bench pool {p}") })),
                    201,
                )
                .await?;
            let pool_id: Uuid = id_of(&pool)?;
            let mut body = String::with_capacity(keys_per_pool * 32);
            for i in 0..keys_per_pool {
                use std::fmt::Write;
                let _ = writeln!(body, "BENCH-{run}-{p:03}-{i:08}-XXXXX");
            }
            let t = Instant::now();
            let report: serde_json::Value = self
                .seller_call(
                    self.client
                        .post(format!("{}/key-pools/{pool_id}/keys/upload", self.base))
                        .header("content-type", "text/plain")
                        .body(body),
                    200,
                )
                .await?;
            upload_secs += t.elapsed().as_secs_f64();
            if report["added"].as_u64() != Some(keys_per_pool as u64) {
                return Err(err(format!("upload to pool {p}: {report}")));
            }
            let draft: serde_json::Value = self
                .seller_call(
                    self.client
                        .post(format!("{}/offers/draft", self.base))
                        .json(&serde_json::json!({
                            "title": format!("Bench game {p}"), "priceCents": PRICE_CENTS,
                            "currency": "EUR", "deliveryType": "AUTO_KEY", "keyPoolId": pool_id,
                        })),
                    201,
                )
                .await?;
            let offer_id = id_of(&draft)?;
            let _: serde_json::Value = self
                .seller_call(
                    self.client
                        .post(format!("{}/offers/publish", self.base))
                        .json(&serde_json::json!({ "offerId": offer_id })),
                    200,
                )
                .await?;
            pool_ids.push(pool_id);
            offer_ids.push(offer_id);
        }
        Ok(ApiShop {
            pools: pool_ids,
            offers: offer_ids,
            keys: pools * keys_per_pool,
            upload_secs,
        })
    }

    async fn seller_call(
        &self,
        req: reqwest::RequestBuilder,
        expect: u16,
    ) -> Res<serde_json::Value> {
        let r = req.bearer_auth(&self.seller).send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        if status != expect {
            return Err(err(format!("seller call: {status} {text}")));
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// POST /orders (quantity 1); the new order's id.
    pub async fn create_order(&self, who: &Who, offer: Uuid) -> Result<Uuid, String> {
        let body = match who.customer {
            Some(c) => serde_json::json!({ "offerId": offer, "buyerId": c }),
            None => serde_json::json!({ "offerId": offer }),
        };
        let r = self
            .client
            .post(format!("{}/orders", self.base))
            .bearer_auth(&who.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("POST /orders: {e}"))?;
        let status = r.status().as_u16();
        let bytes = r.bytes().await.map_err(|e| format!("POST /orders: {e}"))?;
        if status != 201 {
            return Err(format!(
                "POST /orders: {status} {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("POST /orders: {e}"))?;
        id_of(&v).map_err(|e| e.to_string())
    }

    /// POST /orders/:id/pay (the simulated payment).
    pub async fn pay(&self, who: &Who, id: Uuid) -> Result<(), String> {
        self.expect(
            self.client
                .post(format!("{}/orders/{id}/pay", self.base))
                .bearer_auth(&who.token),
            "pay",
            &[200],
        )
        .await
        .map(|_| ())
    }

    /// POST /orders/:id/fulfill?wait=`wait`; the status (200 FULFILLED, 202 still PAID).
    pub async fn fulfill(&self, who: &Who, id: Uuid, wait: u64) -> Result<u16, String> {
        self.expect(
            self.client
                .post(format!("{}/orders/{id}/fulfill?wait={wait}", self.base))
                .bearer_auth(&who.token),
            "fulfill",
            &[200, 202],
        )
        .await
    }

    /// GET /orders/:id.
    pub async fn get_order(&self, who: &Who, id: Uuid) -> Result<(), String> {
        self.expect(
            self.client
                .get(format!("{}/orders/{id}", self.base))
                .bearer_auth(&who.token),
            "GET /orders/:id",
            &[200],
        )
        .await
        .map(|_| ())
    }

    async fn expect(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
        ok: &[u16],
    ) -> Result<u16, String> {
        let r = req.send().await.map_err(|e| format!("{what}: {e}"))?;
        let status = r.status().as_u16();
        let bytes = r.bytes().await.map_err(|e| format!("{what}: {e}"))?;
        if !ok.contains(&status) {
            return Err(format!(
                "{what}: {status} {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        Ok(status)
    }

    /// Orders of each status.
    pub async fn status_counts(&self) -> Res<std::collections::BTreeMap<String, i64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status")
                .fetch_all(&self.db.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// What autovacuum has done to the growing tables so far (the bench never analyzes).
    pub async fn table_stats(&self) -> Res<serde_json::Value> {
        let rows: Vec<(String, i64, i64, i64, Option<String>)> = sqlx::query_as(
            "SELECT schemaname || '.' || relname, n_live_tup, autoanalyze_count, analyze_count,
                    to_char(last_autoanalyze, 'HH24:MI:SS')
             FROM pg_stat_user_tables
             WHERE relname IN ('orders', 'jobs', 'keys', 'order_deliveries', 'audit_log')
             ORDER BY 1",
        )
        .fetch_all(&self.db.pool)
        .await?;
        Ok(serde_json::Value::Array(
            rows.into_iter()
                .map(|(t, live, auto, manual, last)| {
                    serde_json::json!({ "table": t, "live_rows": live, "autoanalyze_count": auto,
                                        "manual_analyze_count": manual, "last_autoanalyze": last })
                })
                .collect(),
        ))
    }
}

fn id_of(v: &serde_json::Value) -> Res<Uuid> {
    v["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err(format!("no id in {v}")))
}

// ---------------------------------------------------------------- load generator

/// When a closed loop stops.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// After this many operations (numbered 0..n).
    Count(usize),
    /// After this long (operations started before the end finish).
    For(Duration),
}

/// What a closed loop did.
#[derive(Default, Debug)]
pub struct Outcome {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Latency of each successful operation, ms, sorted.
    pub lat_ms: Vec<f64>,
    /// What successful operations returned (operation number, order id), in no
    /// particular order.
    pub ids: Vec<(usize, Uuid)>,
    pub secs: f64,
}

impl Outcome {
    pub fn order_ids(&self) -> Vec<Uuid> {
        self.ids.iter().map(|(_, id)| *id).collect()
    }
    pub fn per_s(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    pub fn p(&self, q: f64) -> f64 {
        percentile(&self.lat_ms, q)
    }
    pub fn report_error(&self, what: &str) {
        if let Some(e) = &self.first_error {
            eprintln!("{what}: {} errors; first: {e}", self.errors);
        }
    }
}

/// `concurrency` tasks, each sending its next operation as soon as its last one is
/// answered (a closed loop over keep-alive connections), until `until`. `op(i)` is
/// operation number i.
pub async fn closed_loop<F, Fut>(concurrency: usize, until: Until, op: F) -> Outcome
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Uuid>, String>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                match until {
                    Until::Count(n) if i >= n => break,
                    Until::For(d) if start.elapsed() >= d => break,
                    _ => {}
                }
                let t0 = Instant::now();
                match op(i).await {
                    Ok(id) => {
                        out.ok += 1;
                        out.lat_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                        out.ids.extend(id.map(|id| (i, id)));
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(e);
                    }
                }
            }
            out
        }));
    }
    let mut all = Outcome::default();
    for t in tasks {
        if let Ok(o) = t.await {
            all.ok += o.ok;
            all.errors += o.errors;
            all.lat_ms.extend(o.lat_ms);
            all.ids.extend(o.ids);
            if all.first_error.is_none() {
                all.first_error = o.first_error;
            }
        }
    }
    all.secs = start.elapsed().as_secs_f64();
    all.lat_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    all
}

/// Creates and pays `n` orders over `offers` (order i on offer i mod len) with
/// `concurrency` clients: POST /orders then POST /orders/:id/pay, by the storefront and
/// buyer tokens in turn. Latencies are of the pair.
pub async fn create_and_pay(
    front: &Arc<Front>,
    offers: &[Uuid],
    concurrency: usize,
    until: Until,
) -> Outcome {
    let offers: Arc<[Uuid]> = offers.into();
    let f = front.clone();
    closed_loop(concurrency, until, move |i| {
        let (f, offers) = (f.clone(), offers.clone());
        async move {
            let who = f.who(i);
            let id = f.create_order(&who, offers[i % offers.len()]).await?;
            f.pay(&who, id).await?;
            Ok(Some(id))
        }
    })
    .await
}
