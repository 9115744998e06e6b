//! Outgoing webhooks: sends each endpoint's pending deliveries in event order, signed per
//! Standard Webhooks (`webhook-id` = the event id, so receivers can deduplicate). One
//! sender per endpoint at a time (a lease in the database); a failed delivery makes the
//! endpoint wait (exponential backoff over hours) before anything after it is sent, and
//! after repeated failures the endpoint is disabled. Runs beside fulfillment on its own
//! connections: a slow receiver never delays a key.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use autokey_shared::{
    jobs::backoff,
    outbound,
    store::webhooks::{self, DUE_CHANNEL, Due, Leased, SECRET_LABEL},
    vault::{Sealed, Vault},
    webhook_signature,
};
use sqlx::{PgPool, postgres::PgListener};
use tokio::task::JoinSet;

/// How the sender behaves; `Default` is production's.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Endpoints sent to at once.
    pub concurrency: usize,
    /// First retry delay of a failing endpoint; later ones double, up to an hour.
    pub retry_base: Duration,
    /// Consecutive failed deliveries after which an endpoint is disabled.
    pub give_up_after: i32,
    /// Whether private and loopback addresses may be sent to (WEBHOOK_ALLOW_PRIVATE_URLS).
    pub allow_private: bool,
    /// How long one request may take.
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            retry_base: Duration::from_secs(5),
            // 5 s doubling to an hour: about eight hours of attempts.
            give_up_after: 15,
            allow_private: false,
            timeout: Duration::from_secs(10),
        }
    }
}

/// How long a sender holds an endpoint before another may take it over.
const LEASE: Duration = Duration::from_secs(60);
/// Deliveries sent per lease before the endpoint is given back.
const BATCH: i64 = 100;

/// Sends until `stop` resolves.
pub async fn run(
    pool: PgPool,
    vault: Arc<Vault>,
    config: WebhookConfig,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut listener = match PgListener::connect_with(&pool).await {
        Ok(mut l) => l.listen(DUE_CHANNEL).await.map(|_| l).ok(),
        Err(_) => None,
    };
    let config = Arc::new(config);
    let mut sending = JoinSet::new();
    // Senders stop between deliveries once the process is stopping: a slow receiver
    // (up to `timeout` a request, 100 due deliveries a lease) must not hold up a shutdown.
    let (stopping, stop_seen) = tokio::sync::watch::channel(false);
    loop {
        // Fill the free slots with endpoints that have work.
        while sending.len() < config.concurrency.max(1) {
            match lease_one(&pool).await {
                Ok(Some(endpoint)) => {
                    let (pool, vault, config) = (pool.clone(), vault.clone(), config.clone());
                    let stop_seen = stop_seen.clone();
                    sending.spawn(async move {
                        send_endpoint(&pool, &vault, &config, endpoint, &stop_seen).await
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook sender cannot read its deliveries");
                    break;
                }
            }
        }
        let wake = async {
            match listener.as_mut() {
                Some(l) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), l.recv()).await;
                }
                None => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        };
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = sending.join_next(), if !sending.is_empty() => {}
            _ = wake => {}
        }
    }
    // Requests under way finish (each within `timeout`); the rest wait for the next
    // start; their leases are released.
    let _ = stopping.send(true);
    while sending.join_next().await.is_some() {}
}

async fn lease_one(pool: &PgPool) -> Result<Option<Leased>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    webhooks::lease(&mut conn, LEASE).await
}

/// Sends the leased endpoint's due deliveries in order, stopping at the first failure or
/// when the process is stopping (`stop_seen`).
async fn send_endpoint(
    pool: &PgPool,
    vault: &Vault,
    config: &WebhookConfig,
    endpoint: Leased,
    stop_seen: &tokio::sync::watch::Receiver<bool>,
) {
    let result = async {
        let secret = open_secret(vault, &endpoint)?;
        let due = {
            let mut conn = pool.acquire().await?;
            webhooks::due(&mut conn, endpoint.id, BATCH).await?
        };
        let client = client_for(&endpoint.url, config).await;
        for delivery in due {
            if *stop_seen.borrow() {
                break;
            }
            let outcome = match &client {
                Ok(client) => send(client, &endpoint.url, &secret, &delivery).await,
                Err(refused) => Err((None, refused.clone())),
            };
            let mut conn = pool.acquire().await?;
            match outcome {
                Ok(status) => {
                    webhooks::delivered(&mut conn, endpoint.id, delivery.id, status).await?;
                    autokey_shared::metrics::webhook_delivery("delivered");
                    tracing::debug!(endpoint_id = %endpoint.id, event_id = %delivery.event_id, "webhook delivered");
                }
                Err((status, error)) => {
                    let attempt = (endpoint.consecutive_failures + 1).max(delivery.attempts + 1);
                    let retry_in =
                        backoff(attempt as usize, config.retry_base, Duration::from_secs(3600));
                    let disabled = webhooks::failed(
                        &mut conn,
                        endpoint.id,
                        delivery.id,
                        status,
                        &error,
                        retry_in,
                        config.give_up_after,
                    )
                    .await?;
                    autokey_shared::metrics::webhook_delivery("failed");
                    if disabled {
                        autokey_shared::metrics::webhook_endpoint_disabled();
                        // No URL: it may hold a secret path.
                        tracing::error!(endpoint_id = %endpoint.id, %error,
                            "webhook endpoint disabled after repeated failed deliveries");
                    } else {
                        tracing::warn!(endpoint_id = %endpoint.id, event_id = %delivery.event_id,
                            %error, ?retry_in, "webhook delivery failed; retry scheduled");
                    }
                    return Ok(());
                }
            }
        }
        let mut conn = pool.acquire().await?;
        webhooks::release(&mut conn, endpoint.id).await?;
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    if let Err(e) = result {
        // The lease runs out and another attempt follows.
        tracing::warn!(endpoint_id = %endpoint.id, error = %e, "webhook sender failed");
    }
}

fn open_secret(
    vault: &Vault,
    endpoint: &Leased,
) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    let nonce: [u8; 12] = endpoint
        .secret_nonce
        .clone()
        .try_into()
        .map_err(|_| "malformed secret nonce")?;
    let sealed = Sealed {
        ciphertext: endpoint.secret_ciphertext.clone(),
        nonce,
        enc_key_id: endpoint.secret_key_id.clone(),
    };
    Ok(vault.open_secret(SECRET_LABEL, endpoint.id, &sealed)?)
}

/// A client bound to the URL's host's addresses, checked public (unless allowed), so
/// the request goes where the check looked; no redirects are followed.
async fn client_for(url: &str, config: &WebhookConfig) -> Result<reqwest::Client, String> {
    let parsed = outbound::check_url(url, config.allow_private).map_err(|e| e.to_string())?;
    let host = parsed.host_str().ok_or("the URL has no host")?.to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    if !config.allow_private && addrs.iter().any(|a| !outbound::is_public(a.ip())) {
        return Err(format!("{host} resolves to a non-public address"));
    }
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.timeout)
        .user_agent("autokey-webhooks/1")
        .resolve_to_addrs(&host, &addrs)
        .build()
        .map_err(|e| e.to_string())
}

/// One signed POST; Ok with the status when it is 2xx.
async fn send(
    client: &reqwest::Client,
    url: &str,
    secret: &[u8],
    delivery: &Due,
) -> Result<u16, (Option<u16>, String)> {
    let body = serde_json::json!({
        "id": delivery.event_id,
        "type": delivery.event_type,
        "createdAt": delivery.event_created_at,
        "data": delivery.event_data,
    })
    .to_string();
    let id = delivery.event_id.to_string();
    let timestamp = chrono::Utc::now().timestamp();
    let signature = webhook_signature::sign(secret, &id, timestamp, body.as_bytes());
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| (None, without_url(e).to_string()))?;
    let status = response.status().as_u16();
    if response.status().is_success() {
        Ok(status)
    } else {
        Err((Some(status), format!("the endpoint answered {status}")))
    }
}

/// reqwest's errors carry the URL, which may hold a secret path; the log needs no URL.
fn without_url(e: reqwest::Error) -> reqwest::Error {
    e.without_url()
}
