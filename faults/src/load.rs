//! The load: a seller's pools and offers, storefront clients that order, pay (simulated or
//! by signed webhooks, some sent several times) and cancel, and a restocker that uploads
//! keys while all of this goes on. Every client writes down what it did and what it was
//! told, for the checks at the end.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::api::{Api, Auth, GaveUp};

pub const PRICE_CENTS: i64 = 1250;

pub struct PoolInfo {
    pub id: Uuid,
    pub offer: Uuid,
    /// Nearly empty: orders outrun its keys, so backorders happen.
    pub scarce: bool,
}

/// One order as its client knows it.
#[derive(Debug, Clone)]
pub struct OrderRec {
    pub id: Uuid,
    pub pool: usize,
    pub quantity: i64,
    pub webhook: Option<WebhookRec>,
    /// The cancel request answered 200 CANCELED.
    pub canceled: bool,
    /// Keys a `fulfill` call answered with (they must never change).
    pub seen_keys: Option<Vec<(Uuid, String)>>,
}

#[derive(Debug, Clone)]
pub struct WebhookRec {
    pub event_id: String,
    pub payment_id: String,
    /// How many of the sends were answered `applied` (at most one may be).
    pub applied_answers: u32,
}

pub struct Ctx {
    pub api: Api,
    pub pools: Vec<PoolInfo>,
    /// Keys each pool's uploads stored, as their reports said.
    pub uploaded: Vec<AtomicU64>,
    /// Every uploaded key -> its pool.
    pub keys: Mutex<HashMap<String, usize>>,
    key_seq: AtomicU64,
    pub tag: String,
    pub stop: AtomicBool,
    pub order_budget: Option<u64>,
    pub placed: AtomicU64,
    pub paid: AtomicU64,
    pub canceled: AtomicU64,
    pub out_of_stock: AtomicU64,
    pub webhook_sends: AtomicU64,
    pub uploads: AtomicU64,
    pub started: Instant,
}

impl Ctx {
    pub fn new(api: Api, pools: Vec<PoolInfo>, tag: String, order_budget: Option<u64>) -> Self {
        let uploaded = pools.iter().map(|_| AtomicU64::new(0)).collect();
        Self {
            api,
            pools,
            uploaded,
            keys: Mutex::new(HashMap::new()),
            key_seq: AtomicU64::new(0),
            tag,
            stop: AtomicBool::new(false),
            order_budget,
            placed: AtomicU64::new(0),
            paid: AtomicU64::new(0),
            canceled: AtomicU64::new(0),
            out_of_stock: AtomicU64::new(0),
            webhook_sends: AtomicU64::new(0),
            uploads: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn budget_left(&self) -> bool {
        self.order_budget
            .is_none_or(|max| self.placed.load(Ordering::Relaxed) < max)
    }

    pub fn rich(&self) -> Vec<usize> {
        (0..self.pools.len())
            .filter(|&i| !self.pools[i].scarce)
            .collect()
    }

    pub fn scarce(&self) -> Vec<usize> {
        (0..self.pools.len())
            .filter(|&i| self.pools[i].scarce)
            .collect()
    }
}

/// Creates the seller's pools and their published AUTO_KEY offers through the API.
pub async fn create_shop(api: &Api, rich: usize, scarce: usize) -> Result<Vec<PoolInfo>, String> {
    let mut pools = Vec::new();
    for i in 0..rich + scarce {
        let is_scarce = i >= rich;
        let name = format!("faults {} {i}", if is_scarce { "scarce" } else { "rich" });
        let r = api
            .post_json("/key-pools", Auth::Seller, &json!({ "name": name }))
            .await
            .map_err(|e| e.to_string())?;
        if r.status != 201 {
            return Err(format!("POST /key-pools: {} {}", r.status, r.body));
        }
        let pool_id = uuid_of(&r.body["id"])?;
        let r = api
            .post_json(
                "/offers/draft",
                Auth::Seller,
                &json!({"title": name, "priceCents": PRICE_CENTS, "currency": "EUR",
                        "deliveryType": "AUTO_KEY", "keyPoolId": pool_id}),
            )
            .await
            .map_err(|e| e.to_string())?;
        if r.status != 201 {
            return Err(format!("POST /offers/draft: {} {}", r.status, r.body));
        }
        let offer = uuid_of(&r.body["id"])?;
        let r = api
            .post_json(
                "/offers/publish",
                Auth::Seller,
                &json!({ "offerId": offer }),
            )
            .await
            .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("POST /offers/publish: {} {}", r.status, r.body));
        }
        pools.push(PoolInfo {
            id: pool_id,
            offer,
            scarce: is_scarce,
        });
    }
    Ok(pools)
}

fn uuid_of(v: &Value) -> Result<Uuid, String> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("expected a uuid, got {v}"))
}

/// Uploads `n` fresh keys (text/plain) to pool `p`, retrying through faults. A retry after
/// a partial commit finds the committed keys `already_exists`: stored = added + duplicates.
pub async fn upload(ctx: &Ctx, p: usize, n: usize) -> Result<(), GaveUp> {
    if n == 0 {
        return Ok(());
    }
    let first = ctx.key_seq.fetch_add(n as u64, Ordering::Relaxed);
    let keys: Vec<String> = (first..first + n as u64)
        .map(|i| format!("FLT-{}-{p:02}-{i:09}", ctx.tag))
        .collect();
    let mut body = keys.join("\n");
    body.push('\n');
    let path = format!("/key-pools/{}/keys/upload", ctx.pools[p].id);
    let r = ctx
        .api
        .call(Method::POST, &path, Auth::Seller, |rb| {
            rb.header("content-type", "text/plain").body(body.clone())
        })
        .await?;
    if r.status != 200 {
        ctx.api
            .anomaly(format!("upload of {n} keys: {} {}", r.status, r.body));
        return Ok(());
    }
    let added = r.body["added"].as_u64().unwrap_or(0);
    let dups = r.body["duplicatesCount"].as_u64().unwrap_or(0);
    let invalid = r.body["invalidCount"].as_u64().unwrap_or(0);
    if added + dups != n as u64 || invalid != 0 {
        ctx.api.anomaly(format!(
            "upload of {n} fresh keys reported {added} added, {dups} duplicates, {invalid} invalid"
        ));
    }
    if r.attempts == 1 && dups != 0 {
        ctx.api.anomaly(format!(
            "upload of {n} never-seen keys, answered at the first attempt, reported {dups} duplicates"
        ));
    }
    ctx.uploaded[p].fetch_add(added + dups, Ordering::Relaxed);
    ctx.uploads.fetch_add(1, Ordering::Relaxed);
    let mut map = ctx.keys.lock().unwrap();
    for k in keys {
        map.insert(k, p);
    }
    Ok(())
}

/// Places an order (PENDING) with an Idempotency-Key, so a retry never makes two.
/// None: refused (out of stock) or the order budget is spent.
async fn create_order(ctx: &Ctx, p: usize, quantity: i64) -> Result<Option<OrderRec>, GaveUp> {
    if let Some(max) = ctx.order_budget {
        if ctx.placed.fetch_add(1, Ordering::Relaxed) >= max {
            ctx.placed.fetch_sub(1, Ordering::Relaxed);
            return Ok(None);
        }
    } else {
        ctx.placed.fetch_add(1, Ordering::Relaxed);
    }
    let key = Uuid::new_v4().to_string();
    let body = serde_json::to_vec(&json!({
        "offerId": ctx.pools[p].offer,
        "quantity": quantity,
        "buyerId": Uuid::new_v4(),
    }))
    .expect("JSON");
    let r = ctx
        .api
        .call(Method::POST, "/orders", Auth::Storefront, |rb| {
            rb.header("content-type", "application/json")
                .header("Idempotency-Key", &key)
                .body(body.clone())
        })
        .await?;
    match r.status {
        200 | 201 => {
            let id = match uuid_of(&r.body["id"]) {
                Ok(id) => id,
                Err(e) => {
                    ctx.api.anomaly(format!("POST /orders: {e}"));
                    ctx.placed.fetch_sub(1, Ordering::Relaxed);
                    return Ok(None);
                }
            };
            if r.body["status"] != "PENDING" || r.body["quantity"].as_i64() != Some(quantity) {
                ctx.api.anomaly(format!(
                    "POST /orders answered an unexpected order: {}",
                    r.body
                ));
            }
            Ok(Some(OrderRec {
                id,
                pool: p,
                quantity,
                webhook: None,
                canceled: false,
                seen_keys: None,
            }))
        }
        400 if r.code() == "out_of_stock" => {
            ctx.out_of_stock.fetch_add(1, Ordering::Relaxed);
            ctx.placed.fetch_sub(1, Ordering::Relaxed);
            Ok(None)
        }
        s => {
            ctx.api.anomaly(format!("POST /orders: {s} {}", r.body));
            ctx.placed.fetch_sub(1, Ordering::Relaxed);
            Ok(None)
        }
    }
}

/// Pays an order: a third by the provider's signed webhook, delivered one to three times
/// (sometimes all at once), the rest by the simulated `pay`.
async fn pay(ctx: &Ctx, rng: &mut StdRng, rec: &mut OrderRec) -> Result<(), GaveUp> {
    if rng.gen_ratio(1, 3) {
        let event_id = format!("evt_{}", Uuid::new_v4().simple());
        let payment_id = format!("pay_{}", Uuid::new_v4().simple());
        let body = json!({
            "type": "payment.succeeded",
            "data": {"orderId": rec.id, "paymentId": payment_id,
                     "amountCents": PRICE_CENTS * rec.quantity, "currency": "EUR"},
        })
        .to_string();
        let sends: u32 = rng.gen_range(1..=3);
        let answers = if sends > 1 && rng.gen_bool(0.5) {
            let all =
                futures::future::join_all((0..sends).map(|_| ctx.api.webhook(&event_id, &body)))
                    .await;
            all.into_iter().collect::<Result<Vec<_>, _>>()?
        } else {
            let mut v = Vec::new();
            for _ in 0..sends {
                v.push(ctx.api.webhook(&event_id, &body).await?);
            }
            v
        };
        ctx.webhook_sends.fetch_add(sends as u64, Ordering::Relaxed);
        let mut applied = 0;
        for a in &answers {
            match (a.status, a.body["outcome"].as_str()) {
                (200, Some("applied")) => applied += 1,
                (200, Some("duplicate")) => {}
                (s, _) => ctx.api.anomaly(format!(
                    "webhook {event_id} for order {}: {s} {}",
                    rec.id, a.body
                )),
            }
        }
        rec.webhook = Some(WebhookRec {
            event_id,
            payment_id,
            applied_answers: applied,
        });
    } else {
        let r = ctx
            .api
            .call(
                Method::POST,
                &format!("/orders/{}/pay", rec.id),
                Auth::Storefront,
                |rb| rb,
            )
            .await?;
        let status = r.body["status"].as_str().unwrap_or("");
        if r.status != 200 || !(status == "PAID" || status == "FULFILLED") {
            ctx.api
                .anomaly(format!("pay {}: {} {}", rec.id, r.status, r.body));
        }
    }
    ctx.paid.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Cancels a PAID order that the workers may be fulfilling at this very moment: either it
/// is canceled (200) or it was fulfilled first (409).
async fn cancel(ctx: &Ctx, rec: &mut OrderRec) -> Result<(), GaveUp> {
    let r = ctx
        .api
        .call(
            Method::POST,
            &format!("/orders/{}/cancel", rec.id),
            Auth::Storefront,
            |rb| rb,
        )
        .await?;
    match (r.status, r.body["status"].as_str()) {
        (200, Some("CANCELED")) => {
            rec.canceled = true;
            ctx.canceled.fetch_add(1, Ordering::Relaxed);
        }
        (409, _) if r.code() == "conflict" => {}
        (s, _) => ctx
            .api
            .anomaly(format!("cancel {}: {s} {}", rec.id, r.body)),
    }
    Ok(())
}

/// A storefront waiting for the keys (`fulfill?wait=2`); the keys it gets must be the
/// ones the order has at the end.
async fn fetch_keys(ctx: &Ctx, rec: &mut OrderRec) -> Result<(), GaveUp> {
    let r = ctx
        .api
        .call(
            Method::POST,
            &format!("/orders/{}/fulfill?wait=2", rec.id),
            Auth::Storefront,
            |rb| rb,
        )
        .await?;
    match r.status {
        200 => rec.seen_keys = Some(keys_of(&r.body)),
        202 => {}
        s => ctx
            .api
            .anomaly(format!("fulfill {}: {s} {}", rec.id, r.body)),
    }
    Ok(())
}

pub fn keys_of(order: &Value) -> Vec<(Uuid, String)> {
    order["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| {
                    Some((
                        k["id"].as_str()?.parse().ok()?,
                        k["key"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A storefront ordering from the well-stocked pools, one order at a time.
pub async fn rich_client(ctx: Arc<Ctx>, seed: u64) -> Result<Vec<OrderRec>, GaveUp> {
    let mut rng = StdRng::seed_from_u64(seed);
    let rich = ctx.rich();
    let mut out = Vec::new();
    while !ctx.stopping() && ctx.budget_left() {
        let p = *rich.choose(&mut rng).expect("rich pools");
        let q = rng.gen_range(1..=3);
        let Some(mut rec) = create_order(&ctx, p, q).await? else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        pay(&ctx, &mut rng, &mut rec).await?;
        let r: f64 = rng.r#gen();
        if r < 0.06 {
            cancel(&ctx, &mut rec).await?;
        } else if r < 0.08 {
            fetch_keys(&ctx, &mut rec).await?;
        }
        out.push(rec);
    }
    Ok(out)
}

/// A storefront whose customers buy from the nearly empty pools in bursts: several orders
/// placed, then all paid, so that more is paid for than there are keys (backorders); now
/// and then one of them is canceled while it waits.
pub async fn scarce_client(ctx: Arc<Ctx>, seed: u64) -> Result<Vec<OrderRec>, GaveUp> {
    let mut rng = StdRng::seed_from_u64(seed);
    let scarce = ctx.scarce();
    let mut out = Vec::new();
    while !ctx.stopping() && ctx.budget_left() {
        let p = *scarce.choose(&mut rng).expect("scarce pools");
        let mut burst = Vec::new();
        for _ in 0..rng.gen_range(2..=5) {
            let q = rng.gen_range(1..=3);
            if let Some(rec) = create_order(&ctx, p, q).await? {
                burst.push(rec);
            }
        }
        for rec in burst.iter_mut() {
            pay(&ctx, &mut rng, rec).await?;
        }
        if !burst.is_empty() && rng.gen_bool(0.3) {
            let i = rng.gen_range(0..burst.len());
            cancel(&ctx, &mut burst[i]).await?;
        }
        out.extend(burst);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..400))).await;
    }
    Ok(out)
}

/// Keeps the rich pools stocked (a chunk whenever one runs low) and drips a few keys into
/// a nearly empty pool every few seconds, which lets waiting backorders complete.
pub async fn restocker(
    ctx: Arc<Ctx>,
    seed: u64,
    low_water: i64,
    chunk: usize,
) -> Result<(), GaveUp> {
    let mut rng = StdRng::seed_from_u64(seed);
    let scarce = ctx.scarce();
    let rich = ctx.rich();
    let mut next_drip = Instant::now() + Duration::from_secs(2);
    while !ctx.stopping() {
        for &p in &rich {
            let r = ctx
                .api
                .get(&format!("/key-pools/{}", ctx.pools[p].id), Auth::Seller)
                .await?;
            if r.body["availableKeys"].as_i64().unwrap_or(0) < low_water {
                upload(&ctx, p, chunk).await?;
            }
        }
        if Instant::now() >= next_drip {
            let p = *scarce.choose(&mut rng).expect("scarce pools");
            upload(&ctx, p, rng.gen_range(3..=12)).await?;
            next_drip = Instant::now() + Duration::from_millis(rng.gen_range(1500..3500));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
