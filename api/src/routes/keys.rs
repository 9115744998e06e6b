//! A pool's keys as metadata (never the key, its ciphertext or its fingerprint):
//! a paginated list, and invalidation of an unsold key.

use autokey_shared::{
    model::KeyStatus,
    store::{
        After,
        audit::{self, Actor},
        keys::{self, KeyMeta},
    },
    transitions,
};
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::pools::find_pool;
use crate::{
    auth::Auth,
    error::{ApiError, ErrorBody},
    extract::{Json, Path, Query},
    pagination,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys))
        .routes(routes!(invalidate_key))
}

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListKeysParams {
    /// Only keys in this status.
    pub status: Option<KeyStatus>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyPage {
    pub items: Vec<KeyMeta>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The pool's keys, oldest first, as metadata.
#[utoipa::path(get, path = "/key-pools/{poolId}/keys", tag = "key pools", security(("bearer" = [])),
    params(("poolId" = Uuid, Path), ListKeysParams),
    responses(
        (status = 200, body = KeyPage, description = "A page of the pool's keys (metadata only), oldest first.",
            links(("invalidateKey" = (operation_id = "invalidateKey", parameters(
                ("poolId" = "$request.path.poolId"), ("keyId" = "$response.body#/items/0/id")))))),
        (status = 400, description = "bad status, limit, cursor or id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller token", body = ErrorBody),
        (status = 404, description = "no such pool of this seller", body = ErrorBody),
    ))]
async fn list_keys(
    auth: Auth,
    State(state): State<AppState>,
    Path(pool_id): Path<Uuid>,
    Query(params): Query<ListKeysParams>,
) -> Result<Json<KeyPage>, ApiError> {
    let seller_id = auth.seller()?;
    let mut conn = state.pool.acquire().await?;
    find_pool(&mut conn, seller_id, pool_id).await?;
    Ok(Json(key_page(&mut conn, pool_id, &params).await?))
}

/// A page of pool `pool_id`'s keys (the caller has checked who may see them).
pub(crate) async fn key_page(
    conn: &mut sqlx::PgConnection,
    pool_id: Uuid,
    params: &ListKeysParams,
) -> Result<KeyPage, ApiError> {
    let limit = pagination::limit(params.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = pagination::decode(params.cursor.as_deref())?;
    let mut items = keys::page(conn, pool_id, params.status, after, limit + 1).await?;
    let next_cursor = pagination::cut(&mut items, limit, |k| After {
        created_at: k.created_at,
        id: k.id,
    });
    Ok(KeyPage { items, next_cursor })
}

/// Marks an unsold key INVALID so it is never sold. Already INVALID: returned unchanged.
/// DELIVERED (sold) or RESERVED (promised to a paid order): 409.
#[utoipa::path(delete, path = "/key-pools/{poolId}/keys/{keyId}", tag = "key pools",
    security(("bearer" = [])),
    params(("poolId" = Uuid, Path), ("keyId" = Uuid, Path)),
    responses(
        (status = 200, body = KeyMeta, description = "The key, INVALID."),
        (status = 400, description = "malformed id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller token", body = ErrorBody),
        (status = 404, description = "no such key in a pool of this seller", body = ErrorBody),
        (status = 409, description = "the key is delivered or reserved", body = ErrorBody),
    ))]
async fn invalidate_key(
    auth: Auth,
    State(state): State<AppState>,
    Path((pool_id, key_id)): Path<(Uuid, Uuid)>,
) -> Result<Json<KeyMeta>, ApiError> {
    let seller_id = auth.seller()?;
    let mut tx = state.pool.begin().await?;
    let key = invalidate_in_pool(&mut tx, &auth.actor(), seller_id, pool_id, key_id).await?;
    tx.commit().await?;
    Ok(Json(key))
}

/// Invalidates key `key_id` of `seller_id`'s pool `pool_id` (404 when it is not there) and
/// records who did it; the caller commits. Shared by the seller's and the admin's route.
pub(crate) async fn invalidate_in_pool(
    tx: &mut sqlx::PgConnection,
    actor: &Actor,
    seller_id: Uuid,
    pool_id: Uuid,
    key_id: Uuid,
) -> Result<KeyMeta, ApiError> {
    let key = keys::lock_in_sellers_pool(&mut *tx, seller_id, pool_id, key_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    match key.status {
        KeyStatus::Available => {
            let key = transitions::invalidate(&mut *tx, key_id).await?;
            audit::append(
                &mut *tx,
                actor,
                "key.invalidated",
                None,
                serde_json::json!({"poolId": pool_id, "keyIds": [key_id]}),
            )
            .await?;
            Ok(key)
        }
        KeyStatus::Invalid => Ok(key),
        KeyStatus::Delivered => Err(ApiError::Conflict(
            "this key was delivered and cannot be invalidated".into(),
        )),
        KeyStatus::Reserved => Err(ApiError::Conflict(
            "this key is reserved for a paid order and cannot be invalidated".into(),
        )),
    }
}
