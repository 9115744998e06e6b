//! The audit log: who did what to which order, appended in the same transaction as the
//! act (never a key or a secret).

use sqlx::{Acquire, PgConnection};
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

/// One row of the audit trail as admins and sellers read it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRow {
    pub id: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub role: String,
    pub subject_id: Option<Uuid>,
    pub token_id: Option<Uuid>,
    pub action: String,
    pub object_ids: Vec<Uuid>,
    pub detail: serde_json::Value,
}

/// What a reader asks of the trail; every field narrows it. Rows come newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only rows about this seller's objects (a seller reading its own trail).
    pub seller: Option<Uuid>,
    /// The acting subject or token id.
    pub actor: Option<Uuid>,
    pub action: Option<String>,
    pub object: Option<Uuid>,
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// Rows older than this id (the previous page's last).
    pub before: Option<i64>,
}

/// A page of the trail, newest first. Each filter is a plain equality or containment on
/// an indexed column, walked backwards by id and bounded by `limit`. Planned with the
/// filters' values (a custom plan, though our connections keep generic plans,
/// `db::PLANNER`): which index serves the search depends on which filters are set.
pub async fn page(
    conn: &mut PgConnection,
    filter: &AuditFilter,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan")
        .execute(&mut *tx)
        .await?;
    let rows = sqlx::query_as(
        "SELECT id, at, actor_role AS role, actor_subject AS subject_id,
                actor_token_id AS token_id, action, object_ids, details AS detail
         FROM audit_log
         WHERE ($1::uuid IS NULL OR seller_id = $1)
           AND ($2::uuid IS NULL OR actor_subject = $2 OR actor_token_id = $2)
           AND ($3::text IS NULL OR action = $3)
           AND ($4::uuid IS NULL OR object_ids @> ARRAY[$4::uuid])
           AND ($5::timestamptz IS NULL OR at >= $5)
           AND ($6::timestamptz IS NULL OR at < $6)
           AND ($7::bigint IS NULL OR id < $7)
         ORDER BY id DESC LIMIT $8",
    )
    .bind(filter.seller)
    .bind(filter.actor)
    .bind(filter.action.as_deref())
    .bind(filter.object)
    .bind(filter.from)
    .bind(filter.to)
    .bind(filter.before)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}
