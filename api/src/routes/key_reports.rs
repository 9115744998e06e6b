//! Key reports: a buyer or storefront reports a delivered key that does not work; the
//! seller approves (the key becomes INVALID and the worker delivers one replacement from
//! the same pool to the same order, or it waits for stock) or rejects. A pool may approve
//! reports by itself, up to `autoReplaceLimit` per order.

use autokey_shared::{
    model::{OrderStatus, ReportStatus},
    store::{
        self, After,
        key_reports::{KeyReport, Reported},
        keys::NewKey,
    },
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
    key_input, pagination,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(report_key))
        .routes(routes!(list_key_reports))
        .routes(routes!(approve_key_report))
        .routes(routes!(reject_key_report))
        .routes(routes!(replace_manual_key))
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
    let reported = match store::key_reports::live_key_of_order(&mut tx, id, key_id).await? {
        Some(pool_id) => Reported::PoolKey { key_id, pool_id },
        None if store::key_reports::live_manual_key_of_order(&mut tx, id, key_id).await? => {
            Reported::ManualKey { key_id }
        }
        None => return Err(ApiError::NotFound("no such key in this order".into())),
    };
    if order.status != OrderStatus::Fulfilled || order.refunded_at.is_some() {
        return Err(ApiError::Conflict(
            "only keys of a fulfilled, unrefunded order can be reported".into(),
        ));
    }
    let mut report = store::key_reports::insert(&mut tx, id, reported, reason)
        .await
        .map_constraint(|c| {
            (c == "key_reports_one_live_per_key" || c == "key_reports_one_live_per_manual_key")
                .then(|| {
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
    // The pool's opt-in: approved at once while the order is under its limit. (A MANUAL
    // key's replacement is typed by its seller: its report waits for them.)
    let limit = match reported {
        Reported::PoolKey { pool_id, .. } => {
            store::pools::auto_replace_limit(&mut tx, pool_id).await?
        }
        Reported::ManualKey { .. } => 0,
    };
    if i64::from(limit) > store::key_reports::approved_for_order(&mut tx, id).await?
        && let Some(approved) = transitions::replacement::approve(&mut tx, &report).await?
    {
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
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(report)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListReports {
    status: Option<ReportStatus>,
    /// Page size, 1..=500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyReportList {
    items: Vec<KeyReport>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// Reports on the seller's keys (pool keys and keys delivered by hand), newest first, a
/// page at a time.
#[utoipa::path(get, path = "/seller/key-reports", tag = "key pools", security(("bearer" = [])),
    operation_id = "listKeyReports", params(ListReports),
    responses((status = 200, body = KeyReportList, description = "A page of reports on the seller's keys, newest first."),
        (status = 400, body = ErrorBody, description = "`validation_failed`: a bad status, limit or cursor."),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden`: not a seller token.")))]
async fn list_key_reports(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<ListReports>,
) -> ApiResult<Json<KeyReportList>> {
    let seller_id = auth.seller()?;
    let limit = pagination::limit(q.limit, 100, 500)?;
    let after = pagination::decode(q.cursor.as_deref())?;
    let mut conn = state.pool.acquire().await?;
    let mut items =
        store::key_reports::page_for_seller(&mut conn, seller_id, q.status, after, limit + 1)
            .await?;
    let next_cursor = pagination::cut(&mut items, limit, |r| After {
        created_at: r.created_at,
        id: r.id,
    });
    Ok(Json(KeyReportList { items, next_cursor }))
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
        (status = 409, body = ErrorBody, description = "`conflict`: the report was rejected or canceled, a refund took the key back, or the key was delivered by hand (its replacement is given at `/seller/key-reports/{id}/replace`).")))]
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
    if report.pool_id.is_none() && report.status == ReportStatus::Open {
        return Err(ApiError::Conflict(
            "this key was delivered by hand: give its replacement with POST \
             /seller/key-reports/{id}/replace"
                .into(),
        ));
    }
    let report = match report.status {
        ReportStatus::Approved => return Ok(Json(report)),
        status @ (ReportStatus::Rejected | ReportStatus::Canceled) => return Err(closed(status)),
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
        (status = 409, body = ErrorBody, description = "`conflict`: the report was approved or canceled.")))]
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
        status @ (ReportStatus::Approved | ReportStatus::Canceled) => return Err(closed(status)),
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"key": "NEW-KEY-0001"}))]
pub struct ManualReplacement {
    /// The replacement key, typed by the seller (the same rules as an uploaded key:
    /// trimmed, then 5 to 255 characters, no control character).
    #[schema(min_length = 5, max_length = 255)]
    key: String,
}

/// Approve a report on a key delivered by hand (a MANUAL order's) with its replacement:
/// the reported key is marked replaced and `key` is delivered to the same order, stored
/// sealed like every key. Giving a replacement again changes nothing.
#[utoipa::path(post, path = "/seller/key-reports/{id}/replace", tag = "key pools",
    security(("bearer" = [])), operation_id = "replaceManualKey", params(("id" = Uuid, Path)),
    request_body = ManualReplacement,
    responses((status = 200, body = KeyReport, description = "The report, approved, with its `replacementKeyId` (also when it already was)."),
        (status = 400, body = ErrorBody, description = "`validation_failed`: an invalid key, or one already delivered to an order."),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden`: not a seller token."),
        (status = 404, body = ErrorBody, description = "`not_found`: no such report on this seller's keys."),
        (status = 409, body = ErrorBody, description = "`conflict`: the report was rejected or canceled, or is about a pool key (approve it; the worker delivers its replacement).")))]
async fn replace_manual_key(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
    Json(body): Json<ManualReplacement>,
) -> ApiResult<Json<KeyReport>> {
    let seller_id = auth.seller()?;
    let mut tx = state.pool.begin().await?;
    let report = store::key_reports::lock_for_seller(&mut tx, id, seller_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let key = key_input::validate(&body.key)
        .map_err(|why| ApiError::validation(format!("key is invalid: {}", why.as_str())))?;
    if report.pool_id.is_some() {
        return Err(ApiError::Conflict(
            "this is a pool key: approve the report and the worker delivers its replacement".into(),
        ));
    }
    let report = match report.status {
        ReportStatus::Approved => return Ok(Json(report)),
        status @ (ReportStatus::Rejected | ReportStatus::Canceled) => return Err(closed(status)),
        ReportStatus::Open => {
            let key_id = Uuid::now_v7();
            let new_key = NewKey {
                id: key_id,
                fingerprint: state.vault.fingerprint(key),
                // Bound to the key's row and its order, like every key delivered by hand.
                sealed: state.vault.seal(key_id, report.order_id, key),
            };
            transitions::manual::replace(&mut tx, &report, &new_key)
                .await
                .map_constraint(|c| {
                    (c == "manual_keys_fingerprint_unique")
                        .then(|| ApiError::validation("this key was already delivered to an order"))
                })?
                .ok_or_else(|| ApiError::Conflict("the key was already replaced".into()))?
        }
    };
    store::audit::append(
        &mut tx,
        &auth.actor(),
        "key_report.replaced_by_hand",
        Some(report.order_id),
        serde_json::json!({ "reportId": id, "keyId": report.key_id,
                            "replacementKeyId": report.replacement_key_id }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(report))
}

/// The answer to a decision on a report that was already decided otherwise.
fn closed(status: ReportStatus) -> ApiError {
    ApiError::Conflict(
        match status {
            ReportStatus::Rejected => "the report was rejected",
            ReportStatus::Canceled => "the report was canceled: its order was refunded",
            _ => "the report was approved",
        }
        .into(),
    )
}
