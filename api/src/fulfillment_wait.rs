//! Long-polling support for `POST /orders/:id/fulfill?wait=`: one LISTEN connection per
//! process relays the worker's "order fulfilled" notifications to waiting requests.

use std::time::Duration;

use autokey_shared::model::ORDER_FULFILLED_CHANNEL;
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::broadcast;
use uuid::Uuid;

#[derive(Clone)]
pub struct FulfillmentWaiter {
    tx: broadcast::Sender<Uuid>,
}

impl FulfillmentWaiter {
    /// Starts the relay task; it reconnects by itself when the connection drops.
    pub fn start(pool: PgPool) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let relay = tx.clone();
        tokio::spawn(async move {
            loop {
                if let Err(err) = relay_notifications(&pool, &relay).await {
                    tracing::warn!(error = %err, "fulfillment listener lost its connection; reconnecting");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Self { tx }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.tx.subscribe()
    }
}

async fn relay_notifications(
    pool: &PgPool,
    tx: &broadcast::Sender<Uuid>,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(ORDER_FULFILLED_CHANNEL).await?;
    loop {
        let note = listener.recv().await?;
        // The worker announces many orders per NOTIFY, after its commits.
        for id in autokey_shared::announce::ids(note.payload()) {
            if let Ok(id) = id.parse::<Uuid>() {
                let _ = tx.send(id);
            }
        }
    }
}

/// Waits until `order_id` is announced or `deadline` passes. `check` re-reads the order
/// and says whether waiting is over; it runs on every announcement of this order and,
/// as a safety net for notifications lost during a reconnect, once a second.
pub async fn wait_for<F, Fut, T>(
    rx: &mut broadcast::Receiver<Uuid>,
    order_id: Uuid,
    deadline: tokio::time::Instant,
    mut check: F,
) -> Result<Option<T>, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, sqlx::Error>>,
{
    loop {
        if let Some(done) = check().await? {
            return Ok(Some(done));
        }
        let tick = tokio::time::Instant::now() + Duration::from_secs(1);
        let until = tick.min(deadline);
        loop {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Ok(id)) if id == order_id => break,
                Ok(Ok(_)) => continue,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                Ok(Err(broadcast::error::RecvError::Closed)) => break,
                Err(_) => break,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return check().await;
        }
    }
}
