//! Key pools: a seller's containers of license keys, with their counts.

pub use autokey_shared::store::pools::Pool;

use autokey_shared::{
    store::{self, After},
    text,
};
use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::Auth,
    error::{ApiError, ConstraintExt, ErrorBody},
    extract::{Json, Path, Query, int},
    pagination::{self, PageParams},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_pool, list_pools))
        .routes(routes!(get_pool, update_pool))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(example = json!({"name": "Space Game", "lowStockThreshold": 10}))]
pub struct NewPool {
    #[schema(schema_with = crate::openapi::text::pool_name)]
    name: Option<String>,
    /// Below this many sellable keys the pool is low on stock (default 0).
    #[schema(minimum = 0)]
    #[serde(default, deserialize_with = "int::optional")]
    low_stock_threshold: Option<i32>,
    /// Reports on this pool's keys approved automatically, up to this many per order
    /// (default 0: the seller decides each).
    #[schema(minimum = 0, maximum = 100)]
    #[serde(default, deserialize_with = "int::optional")]
    auto_replace_limit: Option<i32>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolList {
    items: Vec<Pool>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// The pool `pool_id` of `seller_id`; someone else's pool is as missing as a missing one.
pub async fn find_pool(
    conn: &mut PgConnection,
    seller_id: Uuid,
    pool_id: Uuid,
) -> Result<Pool, ApiError> {
    store::pools::find_for_seller(conn, seller_id, pool_id)
        .await?
        .ok_or_else(ApiError::not_found)
}

/// Creates a key pool.
#[utoipa::path(post, path = "/key-pools", tag = "key pools", security(("bearer" = [])),
    request_body = NewPool,
    responses(
        (status = 201, body = Pool, description = "The pool, empty.", links(
            ("getPool" = (operation_id = "getPool", parameters(("poolId" = "$response.body#/id")))),
            ("uploadKeys" = (operation_id = "uploadKeys", parameters(("poolId" = "$response.body#/id")))),
            ("listKeys" = (operation_id = "listKeys", parameters(("poolId" = "$response.body#/id")))),
        )),
        (status = 400, description = "invalid body", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller token", body = ErrorBody),
    ))]
async fn create_pool(
    auth: Auth,
    State(state): State<AppState>,
    Json(body): Json<NewPool>,
) -> Result<(StatusCode, Json<Pool>), ApiError> {
    let seller_id = auth.seller()?;
    let name = text::field("name", body.name.as_deref().unwrap_or(""), 200, true)
        .map_err(|e| ApiError::validation(e.to_string()))?;
    let auto_replace = checked_auto_replace(body.auto_replace_limit)?.unwrap_or(0);
    let mut tx = state.pool.begin().await?;
    let threshold = body.low_stock_threshold.unwrap_or(0);
    let mut pool = store::pools::create(&mut tx, seller_id, &name, threshold)
        .await
        .map_constraint(threshold_constraint)?;
    if auto_replace > 0 {
        pool = store::pools::set_auto_replace_limit(&mut tx, pool.id, auto_replace).await?;
    }
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(pool)))
}

/// The caller's key pools, oldest first, a page at a time.
#[utoipa::path(get, path = "/key-pools", tag = "key pools", security(("bearer" = [])),
    params(PageParams),
    responses(
        (status = 200, body = PoolList, description = "A page of the caller's pools, oldest first."),
        (status = 400, description = "`validation_failed`: a bad limit or cursor.", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller token", body = ErrorBody),
    ))]
async fn list_pools(
    auth: Auth,
    State(state): State<AppState>,
    Query(page): Query<PageParams>,
) -> Result<Json<PoolList>, ApiError> {
    let seller_id = auth.seller()?;
    let (limit, after) = page.checked()?;
    let mut conn = state.pool.acquire().await?;
    let mut items = store::pools::page_for_seller(&mut conn, seller_id, after, limit + 1).await?;
    let next_cursor = pagination::cut(&mut items, limit, |p| After {
        created_at: p.created_at,
        id: p.id,
    });
    Ok(Json(PoolList { items, next_cursor }))
}

/// One of the caller's key pools with its counts.
#[utoipa::path(get, path = "/key-pools/{poolId}", tag = "key pools", security(("bearer" = [])),
    params(("poolId" = Uuid, Path)),
    responses(
        (status = 200, body = Pool, description = "The pool with its counts."),
        (status = 400, description = "malformed id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller token", body = ErrorBody),
        (status = 404, description = "no such pool of this seller", body = ErrorBody),
    ))]
async fn get_pool(
    auth: Auth,
    State(state): State<AppState>,
    Path(pool_id): Path<Uuid>,
) -> Result<Json<Pool>, ApiError> {
    let seller_id = auth.seller()?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(find_pool(&mut conn, seller_id, pool_id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(example = json!({"autoReplaceLimit": 1}))]
pub struct PoolUpdate {
    #[schema(schema_with = crate::openapi::text::pool_name)]
    name: Option<String>,
    /// Below this many sellable keys the pool is low on stock. A new threshold is
    /// compared at the pool's next change of stock.
    #[schema(minimum = 0)]
    #[serde(default, deserialize_with = "int::optional")]
    low_stock_threshold: Option<i32>,
    /// Reports on this pool's keys approved automatically, up to this many per order;
    /// reports already filed keep their status.
    #[schema(minimum = 0, maximum = 100)]
    #[serde(default, deserialize_with = "int::optional")]
    auto_replace_limit: Option<i32>,
}

/// Changes one of the caller's key pools: its name, low-stock threshold or automatic
/// replacement limit (fields left out stay as they are).
#[utoipa::path(patch, path = "/key-pools/{poolId}", tag = "key pools", security(("bearer" = [])),
    operation_id = "updatePool", params(("poolId" = Uuid, Path)), request_body = PoolUpdate,
    responses(
        (status = 200, body = Pool, description = "The pool as it now is."),
        (status = 400, description = "`validation_failed`: a bad name, threshold or limit.", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller token", body = ErrorBody),
        (status = 404, description = "no such pool of this seller", body = ErrorBody),
    ))]
async fn update_pool(
    auth: Auth,
    State(state): State<AppState>,
    Path(pool_id): Path<Uuid>,
    Json(body): Json<PoolUpdate>,
) -> Result<Json<Pool>, ApiError> {
    let seller_id = auth.seller()?;
    let name = body
        .name
        .as_deref()
        .map(|n| text::field("name", n, 200, true))
        .transpose()
        .map_err(|e| ApiError::validation(e.to_string()))?;
    let changes = store::pools::PoolChanges {
        name,
        low_stock_threshold: body.low_stock_threshold,
        auto_replace_limit: checked_auto_replace(body.auto_replace_limit)?,
    };
    let mut tx = state.pool.begin().await?;
    let pool = store::pools::update_for_seller(&mut tx, seller_id, pool_id, &changes)
        .await
        .map_constraint(threshold_constraint)?
        .ok_or_else(ApiError::not_found)?;
    store::audit::append(
        &mut tx,
        &auth.actor(),
        "pool.updated",
        None,
        serde_json::json!({
            "poolId": pool_id,
            "nameChanged": changes.name.is_some(),
            "lowStockThreshold": changes.low_stock_threshold,
            "autoReplaceLimit": changes.auto_replace_limit,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(pool))
}

/// `autoReplaceLimit`, checked against its bounds.
fn checked_auto_replace(limit: Option<i32>) -> Result<Option<i32>, ApiError> {
    match limit {
        Some(n) if !(0..=100).contains(&n) => Err(ApiError::validation(
            "autoReplaceLimit must be between 0 and 100",
        )),
        _ => Ok(limit),
    }
}

/// The answer to a negative threshold, which the database refuses.
fn threshold_constraint(name: &str) -> Option<ApiError> {
    (name == "key_pools_threshold_check")
        .then(|| ApiError::validation("lowStockThreshold must be 0 or more"))
}
