//! The audit trail (append-only; see migration audit_trail): admins read all of it,
//! filtered; a seller reads the rows about its own pools, keys and orders.

use autokey_shared::store::audit::{self, AuditFilter, AuditRow};
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::Auth,
    error::{ApiError, ErrorBody},
    extract::{Json, Query},
    pagination,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_audit))
        .routes(routes!(list_own_audit))
}

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// The acting subject (seller, buyer or storefront id) or token id.
    actor: Option<Uuid>,
    /// An action, e.g. `order.keys_read`, `keys.uploaded`, `key.invalidated`,
    /// `token.created`, `token.revoked`, `keys.reencrypted`.
    #[param(max_length = 100)]
    action: Option<String>,
    /// Rows about this object (order, pool, key, offer or token id).
    object_id: Option<Uuid>,
    /// Rows at or after this instant (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Rows before this instant (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// Page size, 1..=500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OwnAuditParams {
    /// Page size, 1..=500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// One audit row: who (role, subject, token), what, about which objects, when. Never a
/// key or a secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    id: i64,
    at: DateTime<Utc>,
    role: String,
    subject_id: Option<Uuid>,
    token_id: Option<Uuid>,
    action: String,
    object_ids: Vec<Uuid>,
    #[schema(value_type = Object)]
    detail: serde_json::Value,
}

impl From<AuditRow> for AuditEntry {
    fn from(r: AuditRow) -> Self {
        Self {
            id: r.id,
            at: r.at,
            role: r.role,
            subject_id: r.subject_id,
            token_id: r.token_id,
            action: r.action,
            object_ids: r.object_ids,
            detail: r.detail,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    items: Vec<AuditEntry>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    next_cursor: Option<String>,
}

/// Audit rows page by id, newest first. The cursor has the shape of every other list's
/// (pagination.rs: the row's time and its id, the bigint carried in a UUID's bits), so a
/// client handles all cursors alike.
fn decode_cursor(cursor: Option<&str>) -> Result<Option<i64>, ApiError> {
    Ok(pagination::decode(cursor)?
        .map(|after| i64::try_from(after.id.as_u128()).unwrap_or(i64::MAX)))
}

fn encode_cursor(row: &AuditRow) -> String {
    pagination::encode(autokey_shared::store::After {
        created_at: row.at,
        id: Uuid::from_u128(row.id as u128),
    })
}

async fn page(
    state: &AppState,
    mut filter: AuditFilter,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<AuditPage, ApiError> {
    let limit = pagination::limit(limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    filter.before = decode_cursor(cursor)?;
    let mut rows = audit::page(&mut *state.pool.acquire().await?, &filter, limit + 1).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(encode_cursor)
    } else {
        None
    };
    Ok(AuditPage {
        items: rows.into_iter().map(AuditEntry::from).collect(),
        next_cursor,
    })
}

/// The whole audit trail, newest first, filtered.
#[utoipa::path(get, path = "/admin/audit", tag = "administration", operation_id = "listAudit",
    security(("bearer" = [])), params(AuditParams),
    responses(
        (status = 200, body = AuditPage, description = "A page of audit rows, newest first."),
        (status = 400, description = "bad filter, limit or cursor", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not an admin token", body = ErrorBody),
    ))]
async fn list_audit(
    auth: Auth,
    State(state): State<AppState>,
    Query(p): Query<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    auth.admin()?;
    if p.action.as_ref().is_some_and(|a| a.len() > 100) {
        return Err(ApiError::validation("action is at most 100 characters"));
    }
    let filter = AuditFilter {
        actor: p.actor,
        action: p.action,
        object: p.object_id,
        from: p.from,
        to: p.to,
        ..AuditFilter::default()
    };
    Ok(Json(
        page(&state, filter, p.limit, p.cursor.as_deref()).await?,
    ))
}

/// The audit rows about this seller's pools, keys and orders, newest first.
#[utoipa::path(get, path = "/audit", tag = "key pools", operation_id = "listOwnAudit",
    security(("bearer" = [])), params(OwnAuditParams),
    responses(
        (status = 200, body = AuditPage, description = "A page of audit rows, newest first."),
        (status = 400, description = "bad limit or cursor", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller token", body = ErrorBody),
    ))]
async fn list_own_audit(
    auth: Auth,
    State(state): State<AppState>,
    Query(p): Query<OwnAuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let seller = auth.seller()?;
    let filter = AuditFilter {
        seller: Some(seller),
        ..AuditFilter::default()
    };
    Ok(Json(
        page(&state, filter, p.limit, p.cursor.as_deref()).await?,
    ))
}
