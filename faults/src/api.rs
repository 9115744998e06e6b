//! The HTTP side: a client that retries what a real storefront would retry (connection
//! errors, 502/503, 429) against whichever api process is current, and records what a
//! client should never see (500s, requests with no answer, slow 503s).

use std::{
    sync::{
        Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use rand::Rng;
use reqwest::{Method, RequestBuilder};
use serde_json::Value;
use sha2::Sha256;

/// How long one request may take before it counts as "the api hung".
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub connection_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub unavailable: AtomicU64,
    /// The slowest 503 answer, in microseconds.
    pub slowest_unavailable_us: AtomicU64,
    pub server_errors: AtomicU64,
    pub rate_limited: AtomicU64,
}

pub struct Api {
    http: reqwest::Client,
    base: RwLock<String>,
    pub storefront: String,
    pub seller: String,
    webhook_secret: Vec<u8>,
    pub stats: Stats,
    /// Things a client should never see; each one is a violation.
    pub anomalies: Mutex<Vec<String>>,
    /// Requests give up (and the run fails) after this instant.
    pub give_up_at: Instant,
}

pub struct Resp {
    pub status: u16,
    pub body: Value,
    /// How many times the request was sent (1 when the first answer was final).
    pub attempts: u32,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// The request could not be completed before the run's deadline.
#[derive(Debug)]
pub struct GaveUp(pub String);

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GaveUp {}

pub enum Auth {
    Storefront,
    Seller,
    None,
}

impl Api {
    pub fn new(
        base: String,
        storefront: String,
        seller: String,
        webhook_secret: Vec<u8>,
        give_up_at: Instant,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        Self {
            http,
            base: RwLock::new(base),
            storefront,
            seller,
            webhook_secret,
            stats: Stats::default(),
            anomalies: Mutex::new(Vec::new()),
            give_up_at,
        }
    }

    pub fn base(&self) -> String {
        self.base.read().unwrap().clone()
    }

    /// Points every later request at another api process (the rolling restart).
    pub fn set_base(&self, base: String) {
        *self.base.write().unwrap() = base;
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn anomaly(&self, what: String) {
        let mut a = self.anomalies.lock().unwrap();
        if a.len() < 1000 {
            a.push(what);
        }
    }

    pub async fn get(&self, path: &str, auth: Auth) -> Result<Resp, GaveUp> {
        self.call(Method::GET, path, auth, |rb| rb).await
    }

    pub async fn post_json(&self, path: &str, auth: Auth, body: &Value) -> Result<Resp, GaveUp> {
        let body = serde_json::to_vec(body).expect("JSON");
        self.call(Method::POST, path, auth, move |rb| {
            rb.header("content-type", "application/json")
                .body(body.clone())
        })
        .await
    }

    /// Sends a request until it gets a final answer: connection errors, timeouts, 502, 503
    /// and 429 are retried with backoff (a 500 too, but it is recorded as an anomaly).
    /// `build` adds headers and body to each attempt (a webhook is signed anew each time).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Auth,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Resp, GaveUp> {
        let mut attempts = 0u32;
        let mut backoff = Duration::from_millis(20);
        loop {
            if Instant::now() > self.give_up_at {
                return Err(GaveUp(format!(
                    "{method} {path}: no final answer before the run's deadline ({attempts} attempts)"
                )));
            }
            attempts += 1;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            if attempts > 1 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            let url = format!("{}{}", self.base(), path);
            let mut rb = self.http.request(method.clone(), &url);
            rb = match auth {
                Auth::Storefront => rb.bearer_auth(&self.storefront),
                Auth::Seller => rb.bearer_auth(&self.seller),
                Auth::None => rb,
            };
            let started = Instant::now();
            let result = build(rb).send().await;
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    if e.is_timeout() && !e.is_connect() {
                        self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                        self.anomaly(format!(
                            "{method} {path}: no answer within {REQUEST_TIMEOUT:?} (the api hung)"
                        ));
                    } else {
                        self.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    backoff = pause(backoff).await;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let body = match resp.bytes().await {
                Ok(b) => serde_json::from_slice(&b)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into_owned())),
                Err(_) => {
                    // The connection dropped mid-body (an api going away): try again.
                    self.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                    backoff = pause(backoff).await;
                    continue;
                }
            };
            let elapsed = started.elapsed();
            match status {
                503 => {
                    self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .slowest_unavailable_us
                        .fetch_max(elapsed.as_micros() as u64, Ordering::Relaxed);
                    if body["error"]["code"] != "unavailable" {
                        self.anomaly(format!(
                            "{method} {path}: 503 without code unavailable: {body}"
                        ));
                    }
                    backoff = pause(backoff).await;
                }
                502 => backoff = pause(backoff).await,
                429 => {
                    self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    backoff = pause(backoff).await;
                }
                500..=599 => {
                    self.stats.server_errors.fetch_add(1, Ordering::Relaxed);
                    self.anomaly(format!("{method} {path}: {status} {body}"));
                    backoff = pause(backoff).await;
                }
                _ => {
                    return Ok(Resp {
                        status,
                        body,
                        attempts,
                    });
                }
            }
        }
    }

    /// A Standard Webhooks delivery of `body` with id `event_id`, signed at send time.
    pub async fn webhook(&self, event_id: &str, body: &str) -> Result<Resp, GaveUp> {
        let body = body.to_owned();
        self.call(Method::POST, "/webhooks/payments", Auth::None, |rb| {
            let ts = chrono::Utc::now().timestamp();
            let sig = sign(&self.webhook_secret, event_id, ts, body.as_bytes());
            rb.header("content-type", "application/json")
                .header("webhook-id", event_id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sig)
                .body(body.clone())
        })
        .await
    }
}

async fn pause(backoff: Duration) -> Duration {
    let jitter = rand::thread_rng().gen_range(0.5..1.5);
    tokio::time::sleep(backoff.mul_f64(jitter)).await;
    (backoff * 2).min(Duration::from_millis(500))
}

/// `v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`.
pub fn sign(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// One request, no retry, with its duration: what a probe needs.
pub async fn probe(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> (Option<u16>, Value, Duration) {
    let started = Instant::now();
    let mut rb = http.get(url).timeout(REQUEST_TIMEOUT);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    match rb.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            (Some(status), body, started.elapsed())
        }
        Err(_) => (None, Value::Null, started.elapsed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_standard_webhooks() {
        // HMAC-SHA256 over "{id}.{timestamp}.{body}", computed independently.
        assert_eq!(
            sign(
                b"0123456789abcdef0123456789abcdef",
                "msg_1",
                1000,
                br#"{"a":1}"#
            ),
            "v1,0QgjnexIZbd1fJE4RSo4hQe92oQ6x8oDrEeFu6/Dbb4="
        );
    }
}
