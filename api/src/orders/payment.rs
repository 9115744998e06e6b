//! Marking an order paid: PENDING -> PAID and its fulfillment job, in one transaction,
//! whichever way the payment arrived (simulated `pay` or the provider's webhook).

use autokey_shared::jobs::{self, FulfillOrder};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// Moves a PENDING order to PAID and enqueues its fulfillment on the same transaction.
/// Returns the new `paid_at`, or None (and changes nothing) when the order is not PENDING.
pub async fn mark_paid(
    conn: &mut PgConnection,
    order_id: Uuid,
    payment_id: Option<&str>,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let paid_at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "UPDATE orders SET status = 'PAID', paid_at = now(), payment_id = $2
         WHERE id = $1 AND status = 'PENDING' RETURNING paid_at",
    )
    .bind(order_id)
    .bind(payment_id)
    .fetch_optional(&mut *conn)
    .await?;
    if paid_at.is_some() {
        jobs::enqueue(conn, &FulfillOrder { order_id }).await?;
    }
    Ok(paid_at)
}
