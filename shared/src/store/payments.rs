//! Payment events received from the provider, keyed by the webhook id: a replay of an
//! event finds its id taken and changes nothing.

use sqlx::PgConnection;
use uuid::Uuid;

/// What a payment event carries.
#[derive(Debug, Clone)]
pub struct PaymentEvent<'a> {
    pub event_id: &'a str,
    pub order_id: Uuid,
    pub payment_id: &'a str,
    pub amount_cents: i64,
    pub currency: &'a str,
    pub body: &'a serde_json::Value,
}

/// Records a newly received event (outcome `received`). False when the event id was seen
/// before: of concurrent deliveries of one event, one inserts and the others wait for it,
/// then find it taken.
pub async fn record(conn: &mut PgConnection, e: &PaymentEvent<'_>) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO payment_events (event_id, order_id, payment_id, amount_cents, currency, outcome, body)
         VALUES ($1, $2, $3, $4, $5, 'received', $6) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(e.event_id)
    .bind(e.order_id)
    .bind(e.payment_id)
    .bind(e.amount_cents)
    .bind(e.currency)
    .bind(e.body)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_outcome(
    conn: &mut PgConnection,
    event_id: &str,
    outcome: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE payment_events SET outcome = $2 WHERE event_id = $1")
        .bind(event_id)
        .bind(outcome)
        .execute(conn)
        .await?;
    Ok(())
}
