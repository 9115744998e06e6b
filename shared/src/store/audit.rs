//! The audit log: who did what to which order, appended in the same transaction as the
//! act (never a key or a secret).

use sqlx::PgConnection;
use uuid::Uuid;

use crate::model::Role;

/// Who acted: the token's role, its subject (seller or buyer id) and the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    pub role: Role,
    pub subject: Option<Uuid>,
    pub token_id: Option<Uuid>,
}

pub async fn append(
    conn: &mut PgConnection,
    actor: &Actor,
    action: &str,
    order_id: Option<Uuid>,
    details: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (actor_role, actor_subject, actor_token_id, action, order_id, details)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(actor.role)
    .bind(actor.subject)
    .bind(actor.token_id)
    .bind(action)
    .bind(order_id)
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}
