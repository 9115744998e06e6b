//! Marking an order paid: PENDING -> PAID and its fulfillment job, in one transaction,
//! whichever way the payment arrived (simulated `pay` or the provider's webhook).

use autokey_shared::jobs::{self, FulfillOrder};
use sqlx::PgConnection;
use uuid::Uuid;

/// Moves a PENDING order to PAID and enqueues its fulfillment on the same transaction.
/// Returns false (and changes nothing) when the order is not PENDING.
pub async fn mark_paid(
    conn: &mut PgConnection,
    order_id: Uuid,
    payment_id: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let paid = sqlx::query(
        "UPDATE orders SET status = 'PAID', paid_at = now(), payment_id = $2 WHERE id = $1 AND status = 'PENDING'",
    )
    .bind(order_id)
    .bind(payment_id)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if paid {
        jobs::enqueue(conn, &FulfillOrder { order_id }).await?;
    }
    Ok(paid)
}
