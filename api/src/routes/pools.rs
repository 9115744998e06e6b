//! Key pools: a seller's containers of license keys, with their counts.

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::Auth,
    error::{ApiError, ErrorBody},
    extract::{Json, Path},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_pool, list_pools))
        .routes(routes!(get_pool))
}

/// A key pool. The counts come from counters kept transactionally by the database, so
/// `totalKeys` = `availableKeys` + `reservedKeys` + `deliveredKeys` + `invalidKeys`, always.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    pub id: Uuid,
    pub seller_id: Uuid,
    pub name: String,
    pub low_stock_threshold: i32,
    pub total_keys: i64,
    pub available_keys: i64,
    pub reserved_keys: i64,
    pub delivered_keys: i64,
    pub invalid_keys: i64,
    pub created_at: DateTime<Utc>,
}

macro_rules! pool_columns {
    () => {
        "id, seller_id, name, low_stock_threshold, total_keys, available_keys, reserved_keys, \
         delivered_keys, invalid_keys, created_at"
    };
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewPool {
    #[schema(max_length = 200)]
    name: Option<String>,
    #[schema(minimum = 0)]
    low_stock_threshold: Option<i32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolList {
    items: Vec<Pool>,
}

/// The pool `pool_id` of `seller_id`; someone else's pool is as missing as a missing one.
pub async fn find_pool(
    conn: &mut PgConnection,
    seller_id: Uuid,
    pool_id: Uuid,
) -> Result<Pool, ApiError> {
    sqlx::query_as(concat!(
        "SELECT ",
        pool_columns!(),
        " FROM key_pools WHERE id = $1 AND seller_id = $2"
    ))
    .bind(pool_id)
    .bind(seller_id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(ApiError::not_found)
}

/// Creates a key pool.
#[utoipa::path(post, path = "/key-pools", tag = "key pools", security(("bearer" = [])),
    request_body = NewPool,
    responses(
        (status = 201, body = Pool),
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
    let name = body.name.unwrap_or_default().trim().to_owned();
    if name.chars().count() > 200 {
        return Err(ApiError::validation("name must be at most 200 characters"));
    }
    let pool: Pool = sqlx::query_as(concat!(
        "INSERT INTO key_pools (id, seller_id, name, low_stock_threshold)
         VALUES ($1, $2, $3, $4) RETURNING ",
        pool_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(seller_id)
    .bind(name)
    .bind(body.low_stock_threshold.unwrap_or(0))
    .fetch_one(&state.pool)
    .await?;
    Ok((StatusCode::CREATED, Json(pool)))
}

/// The caller's key pools, oldest first.
#[utoipa::path(get, path = "/key-pools", tag = "key pools", security(("bearer" = [])),
    responses(
        (status = 200, body = PoolList),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller token", body = ErrorBody),
    ))]
async fn list_pools(auth: Auth, State(state): State<AppState>) -> Result<Json<PoolList>, ApiError> {
    let seller_id = auth.seller()?;
    let items = sqlx::query_as(concat!(
        "SELECT ",
        pool_columns!(),
        " FROM key_pools WHERE seller_id = $1 ORDER BY created_at, id"
    ))
    .bind(seller_id)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(PoolList { items }))
}

/// One of the caller's key pools with its counts.
#[utoipa::path(get, path = "/key-pools/{poolId}", tag = "key pools", security(("bearer" = [])),
    params(("poolId" = Uuid, Path)),
    responses(
        (status = 200, body = Pool),
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
