//! Administration (role admin, API.md "Administration"): every seller's pools, keys
//! (metadata) and orders (never plaintext keys), invalidation, token revocation, dead jobs
//! and key rotation. Every change an admin makes is audit-logged with the admin's token.

use autokey_shared::{
    jobs::{ReencryptKeys, queue},
    rotation::{self, Progress},
    store::{
        After, audit,
        keys::KeyMeta,
        orders,
        pools::{self, Pool},
        sellers::{self, SellerSummary},
        tokens,
    },
};
use axum::{extract::State, http::StatusCode};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::keys::{KeyPage, ListKeysParams, invalidate_in_pool, key_page};
use crate::{
    auth::Auth,
    error::{ApiError, ErrorBody},
    extract::{Json, Path, Query},
    orders::view::Order,
    pagination::{self, PageParams},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_sellers))
        .routes(routes!(admin_get_pool))
        .routes(routes!(admin_list_keys))
        .routes(routes!(admin_invalidate_key))
        .routes(routes!(admin_get_order))
        .routes(routes!(revoke_token))
        .routes(routes!(list_dead_jobs))
        .routes(routes!(retry_dead_jobs))
        .routes(routes!(start_reencryption, get_reencryption))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SellerPage {
    items: Vec<SellerSummary>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// Every seller, oldest first, with its pools' key counts.
#[utoipa::path(get, path = "/admin/sellers", tag = "administration", operation_id = "listSellers",
    security(("bearer" = [])), params(PageParams),
    responses(
        (status = 200, body = SellerPage, description = "A page of sellers with pool counts."),
        (status = 400, description = "bad limit or cursor", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not an admin token", body = ErrorBody),
    ))]
async fn list_sellers(
    auth: Auth,
    State(state): State<AppState>,
    Query(page): Query<PageParams>,
) -> Result<Json<SellerPage>, ApiError> {
    auth.admin()?;
    let (limit, after) = page.checked()?;
    let mut conn = state.pool.acquire().await?;
    let mut items = sellers::page(&mut conn, after, limit + 1).await?;
    let next_cursor = pagination::cut(&mut items, limit, |s| After {
        created_at: s.created_at,
        id: s.id,
    });
    Ok(Json(SellerPage { items, next_cursor }))
}

async fn any_pool(conn: &mut sqlx::PgConnection, pool_id: Uuid) -> Result<Pool, ApiError> {
    pools::find(conn, pool_id)
        .await?
        .ok_or_else(ApiError::not_found)
}

/// Any seller's pool with its counts.
#[utoipa::path(get, path = "/admin/key-pools/{poolId}", tag = "administration",
    operation_id = "adminGetPool", security(("bearer" = [])), params(("poolId" = Uuid, Path)),
    responses(
        (status = 200, body = Pool, description = "The pool."),
        (status = 400, description = "malformed id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not an admin token", body = ErrorBody),
        (status = 404, description = "no such pool", body = ErrorBody),
    ))]
async fn admin_get_pool(
    auth: Auth,
    State(state): State<AppState>,
    Path(pool_id): Path<Uuid>,
) -> Result<Json<Pool>, ApiError> {
    auth.admin()?;
    Ok(Json(
        any_pool(&mut *state.pool.acquire().await?, pool_id).await?,
    ))
}

/// Any pool's keys, as metadata (never a key, its ciphertext or its fingerprint).
#[utoipa::path(get, path = "/admin/key-pools/{poolId}/keys", tag = "administration",
    operation_id = "adminListKeys", security(("bearer" = [])),
    params(("poolId" = Uuid, Path), ListKeysParams),
    responses(
        (status = 200, body = KeyPage, description = "A page of the pool's keys, oldest first."),
        (status = 400, description = "bad status, limit, cursor or id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not an admin token", body = ErrorBody),
        (status = 404, description = "no such pool", body = ErrorBody),
    ))]
async fn admin_list_keys(
    auth: Auth,
    State(state): State<AppState>,
    Path(pool_id): Path<Uuid>,
    Query(params): Query<ListKeysParams>,
) -> Result<Json<KeyPage>, ApiError> {
    auth.admin()?;
    let mut conn = state.pool.acquire().await?;
    any_pool(&mut conn, pool_id).await?;
    Ok(Json(key_page(&mut conn, pool_id, &params).await?))
}

/// Invalidates an unsold key of any pool (as the seller's own route does).
#[utoipa::path(delete, path = "/admin/key-pools/{poolId}/keys/{keyId}", tag = "administration",
    operation_id = "adminInvalidateKey", security(("bearer" = [])),
    params(("poolId" = Uuid, Path), ("keyId" = Uuid, Path)),
    responses(
        (status = 200, body = KeyMeta, description = "The key, INVALID."),
        (status = 400, description = "malformed id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not an admin token", body = ErrorBody),
        (status = 404, description = "no such key in that pool", body = ErrorBody),
        (status = 409, description = "the key is delivered or reserved", body = ErrorBody),
    ))]
async fn admin_invalidate_key(
    auth: Auth,
    State(state): State<AppState>,
    Path((pool_id, key_id)): Path<(Uuid, Uuid)>,
) -> Result<Json<KeyMeta>, ApiError> {
    auth.admin()?;
    let mut tx = state.pool.begin().await?;
    let pool = any_pool(&mut tx, pool_id).await?;
    let key = invalidate_in_pool(&mut tx, &auth.actor(), pool.seller_id, pool_id, key_id).await?;
    tx.commit().await?;
    Ok(Json(key))
}

/// Any order, without its keys.
#[utoipa::path(get, path = "/admin/orders/{id}", tag = "administration",
    operation_id = "adminGetOrder", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Order, description = "The order (never its plaintext keys)."),
        (status = 400, description = "malformed id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not an admin token", body = ErrorBody),
        (status = 404, description = "no such order", body = ErrorBody),
    ))]
async fn admin_get_order(
    auth: Auth,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    auth.admin()?;
    let order = orders::find(&mut *state.pool.acquire().await?, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(Order::from_row(order, None)))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokedToken {
    id: Uuid,
    revoked: bool,
}

/// Revokes a token by its id; every api process refuses it on its next request.
#[utoipa::path(post, path = "/admin/tokens/{id}/revoke", tag = "administration",
    operation_id = "revokeToken", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = RevokedToken, description = "Revoked."),
        (status = 400, description = "malformed id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not an admin token", body = ErrorBody),
        (status = 404, description = "no live token with that id", body = ErrorBody),
    ))]
async fn revoke_token(
    auth: Auth,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<RevokedToken>, ApiError> {
    auth.admin()?;
    let mut tx = state.pool.begin().await?;
    if !tokens::revoke_token(&mut tx, id).await? {
        return Err(ApiError::NotFound("no live token with this id".into()));
    }
    let detail = serde_json::json!({"tokenId": id});
    audit::append(&mut tx, &auth.actor(), "token.revoked", None, detail).await?;
    tx.commit().await?;
    Ok(Json(RevokedToken { id, revoked: true }))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadJobs {
    #[schema(value_type = Vec<Object>)]
    items: Vec<queue::DeadJob>,
}

/// Jobs out of attempts or aborted (newest first, at most 500): what
/// `autokey-worker retry-dead` would revive.
#[utoipa::path(get, path = "/admin/jobs/dead", tag = "administration",
    operation_id = "listDeadJobs", security(("bearer" = [])),
    responses(
        (status = 200, body = DeadJobs, description = "Dead jobs: id, queue, status, attempts, lastError, payload (ids only), runAt."),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not an admin token", body = ErrorBody),
    ))]
async fn list_dead_jobs(
    auth: Auth,
    State(state): State<AppState>,
) -> Result<Json<DeadJobs>, ApiError> {
    auth.admin()?;
    let items = queue::dead(&mut *state.pool.acquire().await?, 500).await?;
    Ok(Json(DeadJobs { items }))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retried {
    retried: u64,
}

/// Makes every dead job runnable again, as `autokey-worker retry-dead` does.
#[utoipa::path(post, path = "/admin/jobs/dead/retry", tag = "administration",
    operation_id = "retryDeadJobs", security(("bearer" = [])),
    responses(
        (status = 200, body = Retried, description = "How many dead jobs were made runnable."),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not an admin token", body = ErrorBody),
    ))]
async fn retry_dead_jobs(
    auth: Auth,
    State(state): State<AppState>,
) -> Result<Json<Retried>, ApiError> {
    auth.admin()?;
    let mut tx = state.pool.begin().await?;
    let retried = queue::retry_dead(&mut tx).await?;
    let detail = serde_json::json!({"retried": retried});
    audit::append(&mut tx, &auth.actor(), "jobs.dead_retried", None, detail).await?;
    tx.commit().await?;
    Ok(Json(Retried { retried }))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// The encryption key id new seals use.
    current_key_id: String,
    /// What is still sealed under each other key id (keys and webhook secrets); an id at
    /// 0 may leave ENCRYPTION_KEYS_RETIRED.
    remaining_by_key_id: std::collections::BTreeMap<String, i64>,
    /// Whether a re-encryption job is waiting or running.
    running: bool,
}

async fn rotation_state(state: &AppState) -> Result<Rotation, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let Progress {
        current_key_id,
        remaining_by_key_id,
    } = rotation::progress(&mut conn, state.vault.current_key_id()).await?;
    let running = queue::live_of::<ReencryptKeys>(&mut conn).await? > 0;
    Ok(Rotation {
        current_key_id,
        remaining_by_key_id,
        running,
    })
}

/// Enqueues a job that moves every stored key and secret to the current encryption key
/// (run by a worker that has ENCRYPTION_KEY; resumable; safe while orders flow).
#[utoipa::path(post, path = "/admin/keys/reencrypt", tag = "administration",
    operation_id = "startReencryption", security(("bearer" = [])),
    responses(
        (status = 202, body = Rotation, description = "Queued (or already running); follow progress with GET."),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not an admin token", body = ErrorBody),
    ))]
async fn start_reencryption(
    auth: Auth,
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<Rotation>), ApiError> {
    auth.admin()?;
    let mut tx = state.pool.begin().await?;
    // One request at a time enqueues: a second one sees the first's job.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('autokey.reencrypt'))")
        .execute(&mut *tx)
        .await?;
    if queue::live_of::<ReencryptKeys>(&mut tx).await? == 0 {
        let job = ReencryptKeys {
            target_key_id: state.vault.current_key_id().to_owned(),
        };
        queue::enqueue(&mut tx, &job).await?;
        let detail = serde_json::json!({"currentKeyId": job.target_key_id});
        audit::append(
            &mut tx,
            &auth.actor(),
            "keys.reencrypt_requested",
            None,
            detail,
        )
        .await?;
    }
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(rotation_state(&state).await?)))
}

/// How far re-encryption is: what is left under each retired key id.
#[utoipa::path(get, path = "/admin/keys/reencrypt", tag = "administration",
    operation_id = "getReencryption", security(("bearer" = [])),
    responses(
        (status = 200, body = Rotation, description = "Progress."),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not an admin token", body = ErrorBody),
    ))]
async fn get_reencryption(
    auth: Auth,
    State(state): State<AppState>,
) -> Result<Json<Rotation>, ApiError> {
    auth.admin()?;
    Ok(Json(rotation_state(&state).await?))
}
