//! End-to-end test harness: every test gets its own database (cloned from a migrated
//! template), the API on a random port, and optionally worker tasks, all in-process.

pub mod db;

use std::{net::SocketAddr, sync::Arc};

use autokey_api::{AppState, Settings, fulfillment_wait::FulfillmentWaiter};
use autokey_shared::{
    tokens::{self, Role},
    vault::Vault,
};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

pub const WEBHOOK_SECRET: &[u8] = b"test-webhook-secret-0123456789ab";

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub pool: PgPool,
    pub db_name: String,
    pub client: reqwest::Client,
    pub vault: Arc<Vault>,
    shutdown: watch::Sender<bool>,
}

/// Options for [`spawn_app_with`].
#[derive(Clone)]
pub struct AppOptions {
    pub simulated_payments: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            simulated_payments: true,
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    let (db_name, pool) = db::fresh_database().await;
    let vault = Arc::new(Vault::random());
    let settings = Settings {
        simulated_payments: options.simulated_payments,
        webhook_secret: Some(secrecy::SecretBox::new(Box::new(WEBHOOK_SECRET.to_vec()))),
    };
    let state = AppState {
        waiter: FulfillmentWaiter::start(pool.clone()),
        pool: pool.clone(),
        vault: vault.clone(),
        settings: Arc::new(settings),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let (shutdown, mut rx) = watch::channel(false);
    tokio::spawn(autokey_api::serve(listener, state, async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }));
    TestApp {
        addr,
        base: format!("http://{addr}"),
        pool,
        db_name,
        client: reqwest::Client::new(),
        vault,
        shutdown,
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
