//! End-to-end test harness: every test gets its own database (cloned from a migrated
//! template), the API on a random port, and optionally worker tasks, all in-process.

pub mod db;

use std::{net::SocketAddr, sync::Arc};

use autokey_api::{AppState, Settings, auth::cache::TokenCache};
use autokey_shared::{model::Role, store::tokens, vault::Vault};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

pub const WEBHOOK_SECRET: &[u8] = b"test-webhook-secret-0123456789ab";
pub const METRICS_TOKEN: &str = "test-metrics-token-0123456789";

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    /// The test's own connections (assertions, fixtures).
    pub pool: PgPool,
    /// The api's connections, with the session limits of its settings.
    pub api_pool: PgPool,
    pub db_name: String,
    pub client: reqwest::Client,
    pub vault: Arc<Vault>,
    /// The api's token cache (to wait until its revocation listener is connected).
    pub tokens: TokenCache,
    options: AppOptions,
    shutdown: watch::Sender<bool>,
}

/// Options for [`spawn_app_with`].
#[derive(Clone)]
pub struct AppOptions {
    pub simulated_payments: bool,
    /// Generous by default, so that only the tests about limits meet them.
    pub limits: autokey_api::settings::Limits,
    /// Loopback receivers in tests need it; the SSRF tests turn it off.
    pub webhook_allow_private_urls: bool,
    /// Sign-in with an OpenID provider (tests/tests/oidc.rs).
    pub oidc: Option<autokey_api::auth::oidc::settings::OidcConfig>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            simulated_payments: true,
            limits: autokey_api::settings::Limits::generous(),
            webhook_allow_private_urls: true,
            oidc: None,
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    spawn_app_sealing_with(options, Arc::new(Vault::random())).await
}

/// An app whose api seals and opens keys with `vault` (rotation tests build their own).
pub async fn spawn_app_sealing_with(options: AppOptions, vault: Arc<Vault>) -> TestApp {
    let (db_name, pool) = db::fresh_database().await;
    let api_pool = db::api_pool_for(&db_name, options.limits.session()).await;
    let state = app_state(api_pool.clone(), vault.clone(), &options);
    let tokens = state.tokens.clone();
    let (addr, shutdown) = serve(state).await;
    TestApp {
        api_pool,
        addr,
        base: format!("http://{addr}"),
        pool,
        db_name,
        client: test_client(),
        vault,
        tokens,
        options,
        shutdown,
    }
}

fn app_state(pool: PgPool, vault: Arc<Vault>, options: &AppOptions) -> AppState {
    let settings = Settings {
        simulated_payments: options.simulated_payments,
        webhook_allow_private_urls: options.webhook_allow_private_urls,
        webhook_secret: Some(secrecy::SecretBox::new(Box::new(WEBHOOK_SECRET.to_vec()))),
        metrics_token: Some(secrecy::SecretBox::new(Box::new(METRICS_TOKEN.to_owned()))),
        oidc: options.oidc.clone(),
        limits: options.limits.clone(),
    };
    AppState::new(pool, vault, settings)
}

async fn serve(state: AppState) -> (SocketAddr, watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let (shutdown, mut rx) = watch::channel(false);
    tokio::spawn(autokey_api::serve(listener, state, async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }));
    (addr, shutdown)
}

impl TestApp {
    /// Another api process on the same database: its own pool, token cache and listeners.
    pub async fn another_api(&self) -> TestApp {
        self.another_api_sealing_with(self.vault.clone()).await
    }

    /// Another api process on the same database configured with `vault` (a process
    /// restarted after an encryption key change).
    pub async fn another_api_sealing_with(&self, vault: Arc<Vault>) -> TestApp {
        let pool = db::pool_for(&self.db_name, 4).await;
        let api_pool = db::api_pool_for(&self.db_name, self.options.limits.session()).await;
        let state = app_state(api_pool.clone(), vault.clone(), &self.options);
        let tokens = state.tokens.clone();
        let (addr, shutdown) = serve(state).await;
        TestApp {
            api_pool,
            addr,
            base: format!("http://{addr}"),
            pool,
            db_name: self.db_name.clone(),
            client: test_client(),
            vault,
            tokens,
            options: self.options.clone(),
            shutdown,
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// A response's status and JSON body (Null when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// The `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl TestApp {
    /// Mints a token; sellers and buyers get a fresh subject id unless one is given.
    pub async fn token(&self, role: Role, subject: Option<Uuid>) -> (String, Option<Uuid>) {
        let mut conn = self.pool.acquire().await.unwrap();
        let t = tokens::create_token(&mut conn, role, subject)
            .await
            .unwrap();
        (t.token, t.subject)
    }

    /// Revokes a token as `autokey-api token revoke` does, and waits until this api
    /// process has heard the announcement (it arrives asynchronously, within a millisecond;
    /// the CLI's own exit takes longer — see the cli test for a revocation by the real
    /// command reaching every process before its next request).
    pub async fn revoke(&self, token_id: Uuid) {
        let before = self.tokens.invalidations();
        let mut conn = self.pool.acquire().await.unwrap();
        assert!(tokens::revoke_token(&mut conn, token_id).await.unwrap());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.tokens.is_live() && self.tokens.invalidations() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the revocation was never heard"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Waits until the api serves authentications from memory (its revocation listener
    /// is connected).
    pub async fn until_token_cache_is_live(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.tokens.is_live() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the token cache never went live"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub async fn seller(&self) -> (String, Uuid) {
        let (t, s) = self.token(Role::Seller, None).await;
        (t, s.unwrap())
    }

    pub async fn buyer(&self) -> (String, Uuid) {
        let (t, s) = self.token(Role::Buyer, None).await;
        (t, s.unwrap())
    }

    pub async fn storefront(&self) -> String {
        self.token(Role::Storefront, None).await.0
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::reply(req.send().await.expect("request")).await
    }

    pub async fn reply(resp: reqwest::Response) -> Reply {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            body,
            headers,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Sends a raw body with the given content type.
    pub async fn post_raw(
        &self,
        path: &str,
        token: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let resp = self
            .client
            .post(format!("{}{}", self.base, path))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        Self::reply(resp).await
    }
}

pub mod fixtures;
pub mod oidc;
pub mod tools;

/// The tests' HTTP client: a request that gets no answer within two minutes fails its
/// test instead of hanging the suite.
fn test_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .expect("an HTTP client")
}

/// A worker running in-process against the test's database.
pub struct WorkerHandle {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl WorkerHandle {
    /// Graceful stop: stop taking jobs, let running ones finish. A worker that has not
    /// stopped after a minute fails the test (instead of hanging the suite).
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(std::time::Duration::from_secs(60), &mut self.task).await {
            Ok(joined) => joined.map_err(|e| e.to_string())?,
            Err(_) => {
                self.task.abort();
                Err("the worker did not stop within 60 s of being asked".into())
            }
        }
    }

    /// Kills the worker mid-flight, like SIGKILL: its connections drop, its jobs stay
    /// claimed until others notice the silence.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// Worker settings scaled down for tests: fast heartbeats, polls and retries.
pub fn test_worker_config() -> autokey_worker::WorkerConfig {
    autokey_worker::WorkerConfig {
        concurrency: 4,
        name: "test-worker".into(),
        heartbeat: std::time::Duration::from_millis(500),
        missed_heartbeats: 2,
        poll_interval: std::time::Duration::from_millis(100),
        retry_base: std::time::Duration::from_millis(200),
        lock_timeout: std::time::Duration::from_secs(5),
        job_retention: std::time::Duration::from_secs(3600),
        maintenance_interval: std::time::Duration::from_secs(1),
        manual_hold: std::time::Duration::from_secs(24 * 3600),
        batch_extra_orders: 63,
        fast_lane: true,
        webhooks: autokey_worker::webhooks::WebhookConfig {
            retry_base: std::time::Duration::from_millis(100),
            give_up_after: 5,
            allow_private: true,
            ..Default::default()
        },
        vault: None,
    }
}

impl TestApp {
    pub fn start_worker(&self) -> WorkerHandle {
        self.start_worker_with(test_worker_config())
    }

    pub fn start_worker_with(&self, mut config: autokey_worker::WorkerConfig) -> WorkerHandle {
        // The api's vault: the worker opens webhook secrets with it.
        config.vault.get_or_insert_with(|| self.vault.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let db_name = self.db_name.clone();
        let task = tokio::spawn(async move {
            // Its own pool, as a separate worker process has.
            let pool = db::pool_for(&db_name, config.concurrency as u32 + 4).await;
            autokey_worker::run(pool, config, async move {
                let _ = rx.await;
            })
            .await
            .map_err(|e| e.to_string())
        });
        WorkerHandle {
            stop: Some(tx),
            task,
        }
    }

    /// Polls the database (test-side only) until `order_id` has `status`, or panics.
    pub async fn wait_for_status(&self, order_id: Uuid, status: &str, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let s: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
                .bind(order_id)
                .fetch_one(&self.pool)
                .await
                .unwrap();
            if s == status {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {order_id} is {s}, expected {status}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// Waits until the fulfillment job of `order_id` has `status` (the worker acknowledges a
    /// job just after the order's own transaction commits).
    pub async fn wait_for_job(&self, order_id: Uuid, status: &str, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut conn = self.pool.acquire().await.unwrap();
            let s = autokey_shared::jobs::queue::fulfillment_status(&mut conn, order_id)
                .await
                .unwrap();
            if s.as_deref() == Some(status) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job of {order_id} is {s:?}, expected {status}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Signs and posts a payment webhook.
    pub async fn webhook(&self, id: &str, timestamp: i64, body: &str, secret: &[u8]) -> Reply {
        let sig = autokey_shared::webhook_signature::sign(secret, id, timestamp, body.as_bytes());
        let resp = self
            .client
            .post(format!("{}/webhooks/payments", self.base))
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", sig)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        Self::reply(resp).await
    }
}
