//! Key reports: a buyer or storefront reports a delivered key that does not work; the
//! seller approves (the key becomes INVALID and the worker delivers one replacement from
//! the same pool to the same order, or it waits for stock) or rejects. A pool may approve
//! reports by itself, up to `autoReplaceLimit` per order.

use autokey_shared::{
    model::{OrderStatus, ReportStatus},
    store::{self, key_reports::KeyReport},
    transitions,
};
use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::Auth,
    error::{ApiError, ApiResult, ConstraintExt, ErrorBody},
    extract::{Json, Path, Query},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(report_key))
        .routes(routes!(list_key_reports))
        .routes(routes!(approve_key_report))
        .routes(routes!(reject_key_report))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "the key is already redeemed"}))]
pub struct NewReport {
    /// What is wrong with the key (1 to 1000 characters).
    #[schema(min_length = 1, max_length = 1000)]
    reason: String,
}

/// Report a delivered key that does not work.
#[utoipa::path(post, path = "/orders/{id}/keys/{keyId}/report", tag = "orders",
    security(("bearer" = [])), operation_id = "reportKey",
    params(("id" = Uuid, Path), ("keyId" = Uuid, Path)), request_body = NewReport,
    responses((status = 201, body = KeyReport, description = "The report (`approved` at once when the pool replaces automatically and the order is under its limit)."),
        (status = 400, body = ErrorBody, description = "`validation_failed`: a missing, empty or too long `reason`."),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden`: not a buyer or storefront token."),
        (status = 404, body = ErrorBody, description = "`not_found`: no such order of this buyer or storefront, or no such key in its hands."),
        (status = 409, body = ErrorBody, description = "`conflict`: the order is not FULFILLED or was refunded, or the key already has an open or approved report.")))]
async fn report_key(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, key_id)): Path<(Uuid, Uuid)>,
    Json(body): Json<NewReport>,
) -> ApiResult<(StatusCode, Json<KeyReport>)> {
    let viewer = auth.buyer_side()?.viewer();
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 1000 {
        return Err(ApiError::validation("reason must be 1 to 1000 characters"));
    }
    let mut tx = state.pool.begin().await?;
    let order = store::orders::lock_visible(&mut tx, id, viewer)
        .await?
        .ok_or_else(|| ApiError::NotFound("order not found".into()))?;
    let pool_id = store::key_reports::live_key_of_order(&mut tx, id, key_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such key in this order".into()))?;
    if order.status != OrderStatus::Fulfilled || order.refunded_at.is_some() {
        return Err(ApiError::Conflict(
            "only keys of a fulfilled, unrefunded order can be reported".into(),
        ));
    }
    let mut report = store::key_reports::insert(&mut tx, id, key_id, pool_id, reason)
        .await
        .map_constraint(|c| {
            (c == "key_reports_one_live_per_key").then(|| {
                ApiError::Conflict("this key already has an open or approved report".into())
            })
        })?;
    store::audit::append(
        &mut tx,
        &auth.actor(),
        "key.reported",
        Some(id),
        serde_json::json!({ "reportId": report.id, "keyId": key_id }),
    )
    .await?;
    // The pool's opt-in: approved at once while the order is under its limit.
    let limit = store::pools::auto_replace_limit(&mut tx, pool_id).await?;
    if i64::from(limit) > store::key_reports::approved_for_order(&mut tx, id).await? {
        if let Some(approved) = transitions::replacement::approve(&mut tx, &report).await? {
            store::audit::append(
                &mut tx,
                &auth.actor(),
                "key_report.auto_approved",
                Some(id),
                serde_json::json!({ "reportId": report.id, "keyId": key_id }),
            )
            .await?;
            report = approved;
        }
    }
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(report)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListReports {
    status: Option<ReportStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyReportList {
    /// The 200 newest reports.
    items: Vec<KeyReport>,
}

/// Reports on keys of the seller's pools, newest first.
#[utoipa::path(get, path = "/seller/key-reports", tag = "key pools", security(("bearer" = [])),
    operation_id = "listKeyReports", params(ListReports),
    responses((status = 200, body = KeyReportList, description = "The 200 newest reports on the seller's keys."),
        (status = 400, body = ErrorBody, description = "`validation_failed`: a bad status."),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden`: not a seller token.")))]
async fn list_key_reports(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<ListReports>,
) -> ApiResult<Json<KeyReportList>> {
    let seller_id = auth.seller()?;
    let mut conn = state.pool.acquire().await?;
    let items = store::key_reports::for_seller(&mut conn, seller_id, q.status, 200).await?;
    Ok(Json(KeyReportList { items }))
}

/// Approve a report: the key becomes INVALID and the worker delivers one replacement from
/// the same pool to the same order (or it waits for stock). Approving again changes
/// nothing.
#[utoipa::path(post, path = "/seller/key-reports/{id}/approve", tag = "key pools",
    security(("bearer" = [])), operation_id = "approveKeyReport", params(("id" = Uuid, Path)),
    responses((status = 200, body = KeyReport, description = "The report, approved (also when it already was)."),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden`: not a seller token."),
        (status = 404, body = ErrorBody, description = "`not_found`: no such report on this seller's keys."),
        (status = 409, body = ErrorBody, description = "`conflict`: the report was rejected, or a refund took the key back.")))]
async fn approve_key_report(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<KeyReport>> {
    let seller_id = auth.seller()?;
    let mut tx = state.pool.begin().await?;
    let report = store::key_reports::lock_for_seller(&mut tx, id, seller_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let report = match report.status {
        ReportStatus::Approved => return Ok(Json(report)),
        ReportStatus::Rejected => {
            return Err(ApiError::Conflict("the report was rejected".into()));
        }
        ReportStatus::Open => transitions::replacement::approve(&mut tx, &report)
            .await?
            .ok_or_else(|| {
                ApiError::Conflict("the key is no longer delivered to its order".into())
            })?,
    };
    store::audit::append(
        &mut tx,
        &auth.actor(),
        "key_report.approved",
        Some(report.order_id),
        serde_json::json!({ "reportId": id, "keyId": report.key_id }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(report))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rejection {
    /// Why (up to 1000 characters).
    #[schema(max_length = 1000)]
    note: Option<String>,
}

/// Reject a report; the key stays with its order. Rejecting again changes nothing.
#[utoipa::path(post, path = "/seller/key-reports/{id}/reject", tag = "key pools",
    security(("bearer" = [])), operation_id = "rejectKeyReport", params(("id" = Uuid, Path)),
    request_body = Rejection,
    responses((status = 200, body = KeyReport, description = "The report, rejected (also when it already was)."),
        (status = 400, body = ErrorBody, description = "`validation_failed`: a bad body or id."),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden`: not a seller token."),
        (status = 404, body = ErrorBody, description = "`not_found`: no such report on this seller's keys."),
        (status = 409, body = ErrorBody, description = "`conflict`: the report was approved.")))]
async fn reject_key_report(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
    Json(body): Json<Rejection>,
) -> ApiResult<Json<KeyReport>> {
    let seller_id = auth.seller()?;
    if body
        .note
        .as_deref()
        .is_some_and(|n| n.chars().count() > 1000)
    {
        return Err(ApiError::validation("note must be at most 1000 characters"));
    }
    let mut tx = state.pool.begin().await?;
    let report = store::key_reports::lock_for_seller(&mut tx, id, seller_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let report = match report.status {
        ReportStatus::Rejected => return Ok(Json(report)),
        ReportStatus::Approved => {
            return Err(ApiError::Conflict("the report was approved".into()));
        }
        ReportStatus::Open => store::key_reports::reject(&mut tx, id, body.note.as_deref()).await?,
    };
    store::audit::append(
        &mut tx,
        &auth.actor(),
        "key_report.rejected",
        Some(report.order_id),
        serde_json::json!({ "reportId": id, "keyId": report.key_id }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(report))
}
