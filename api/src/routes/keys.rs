//! A pool's keys as metadata (never the key, its ciphertext or its fingerprint):
//! a paginated list, and invalidation of an unsold key.

use autokey_shared::model::key_status;
use axum::extract::State;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::pools::find_pool;
use crate::{
    auth::Auth,
    error::{ApiError, ErrorBody},
    extract::{Json, Path, Query},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys))
        .routes(routes!(invalidate_key))
}

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum KeyStatus {
    Available,
    Reserved,
    Delivered,
    Invalid,
}

impl KeyStatus {
    fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Available => key_status::AVAILABLE,
            KeyStatus::Reserved => key_status::RESERVED,
            KeyStatus::Delivered => key_status::DELIVERED,
            KeyStatus::Invalid => key_status::INVALID,
        }
    }

    fn parse(s: &str) -> Result<Self, ApiError> {
        Ok(match s {
            key_status::AVAILABLE => KeyStatus::Available,
            key_status::RESERVED => KeyStatus::Reserved,
            key_status::DELIVERED => KeyStatus::Delivered,
            key_status::INVALID => KeyStatus::Invalid,
            other => {
                return Err(ApiError::Internal(
                    format!("unknown key status {other:?} in the database").into(),
                ));
            }
        })
    }
}

/// What may be shown of a key.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyMeta {
    id: Uuid,
    status: KeyStatus,
    created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reserved_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invalidated_at: Option<DateTime<Utc>>,
    /// The order the key is reserved for or was delivered to.
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<Uuid>,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    status: String,
    created_at: DateTime<Utc>,
    reserved_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
    invalidated_at: Option<DateTime<Utc>>,
    order_id: Option<Uuid>,
}

impl TryFrom<KeyRow> for KeyMeta {
    type Error = ApiError;
    fn try_from(r: KeyRow) -> Result<Self, ApiError> {
        Ok(KeyMeta {
            id: r.id,
            status: KeyStatus::parse(&r.status)?,
            created_at: r.created_at,
            reserved_at: r.reserved_at,
            delivered_at: r.delivered_at,
            invalidated_at: r.invalidated_at,
            order_id: r.order_id,
        })
    }
}

macro_rules! meta_columns {
    () => {
        "id, status, created_at, reserved_at, delivered_at, invalidated_at, order_id"
    };
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListKeysParams {
    /// Only keys in this status.
    status: Option<KeyStatus>,
    /// Page size, 1..=500 (default 50).
    limit: Option<u32>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyPage {
    items: Vec<KeyMeta>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// Position after a key in (created_at, id) order; opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    created_at: DateTime<Utc>,
    id: Uuid,
}

impl Cursor {
    fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}.{}",
            self.created_at.timestamp_micros(),
            self.id
        ))
    }

    fn decode(s: &str) -> Option<Self> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let (micros, id) = raw.split_once('.')?;
        Some(Cursor {
            created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: id.parse().ok()?,
        })
    }
}

/// The pool's keys, oldest first, as metadata.
#[utoipa::path(get, path = "/key-pools/{poolId}/keys", tag = "key pools", security(("bearer" = [])),
    params(("poolId" = Uuid, Path), ListKeysParams),
    responses(
        (status = 200, body = KeyPage),
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
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::validation(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let after = match params.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(Cursor::decode(c).ok_or_else(|| ApiError::validation("invalid cursor"))?),
    };
    let mut conn = state.pool.acquire().await?;
    find_pool(&mut conn, seller_id, pool_id).await?;
    let mut rows = page(&mut conn, pool_id, params.status, after, limit).await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| {
            Cursor {
                created_at: r.created_at,
                id: r.id,
            }
            .encode()
        })
    } else {
        None
    };
    let items = rows
        .into_iter()
        .map(KeyMeta::try_from)
        .collect::<Result<_, _>>()?;
    Ok(Json(KeyPage { items, next_cursor }))
}

/// Up to `limit + 1` keys after `after` (the extra one tells whether a next page exists).
/// The cursor-less first page is a separate statement so the keyset condition is always
/// a plain index range on keys_pool_list_idx, never an OR the planner cannot use.
async fn page(
    conn: &mut PgConnection,
    pool_id: Uuid,
    status: Option<KeyStatus>,
    after: Option<Cursor>,
    limit: u32,
) -> Result<Vec<KeyRow>, sqlx::Error> {
    let status = status.map(KeyStatus::as_str);
    let fetch = i64::from(limit) + 1;
    match after {
        None => {
            sqlx::query_as(concat!(
                "SELECT ",
                meta_columns!(),
                " FROM keys WHERE pool_id = $1 AND ($2::text IS NULL OR status = $2)
                 ORDER BY created_at, id LIMIT $3"
            ))
            .bind(pool_id)
            .bind(status)
            .bind(fetch)
            .fetch_all(conn)
            .await
        }
        Some(c) => {
            sqlx::query_as(concat!(
                "SELECT ",
                meta_columns!(),
                " FROM keys WHERE pool_id = $1 AND ($2::text IS NULL OR status = $2)
                   AND (created_at, id) > ($3, $4)
                 ORDER BY created_at, id LIMIT $5"
            ))
            .bind(pool_id)
            .bind(status)
            .bind(c.created_at)
            .bind(c.id)
            .bind(fetch)
            .fetch_all(conn)
            .await
        }
    }
}

/// Marks an unsold key INVALID so it is never sold. Already INVALID: returned unchanged.
/// DELIVERED (sold) or RESERVED (promised to a paid order): 409.
#[utoipa::path(delete, path = "/key-pools/{poolId}/keys/{keyId}", tag = "key pools",
    security(("bearer" = [])),
    params(("poolId" = Uuid, Path), ("keyId" = Uuid, Path)),
    responses(
        (status = 200, body = KeyMeta),
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
    let row = lock_key(&mut tx, seller_id, pool_id, key_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let row = match row.status.as_str() {
        key_status::AVAILABLE => mark_invalid(&mut tx, key_id).await?,
        key_status::INVALID => row,
        key_status::DELIVERED => {
            return Err(ApiError::Conflict(
                "this key was delivered and cannot be invalidated".into(),
            ));
        }
        _ => {
            return Err(ApiError::Conflict(
                "this key is reserved for a paid order and cannot be invalidated".into(),
            ));
        }
    };
    tx.commit().await?;
    Ok(Json(row.try_into()?))
}

/// The key, locked, if it is in pool `pool_id` of `seller_id`.
async fn lock_key(
    conn: &mut PgConnection,
    seller_id: Uuid,
    pool_id: Uuid,
    key_id: Uuid,
) -> Result<Option<KeyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT k.id, k.status, k.created_at, k.reserved_at, k.delivered_at, k.invalidated_at,
                k.order_id
         FROM keys k JOIN key_pools p ON p.id = k.pool_id
         WHERE k.id = $1 AND k.pool_id = $2 AND p.seller_id = $3
         FOR UPDATE OF k",
    )
    .bind(key_id)
    .bind(pool_id)
    .bind(seller_id)
    .fetch_optional(conn)
    .await
}

async fn mark_invalid(conn: &mut PgConnection, key_id: Uuid) -> Result<KeyRow, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE keys SET status = 'INVALID', invalidated_at = now() WHERE id = $1 RETURNING ",
        meta_columns!()
    ))
    .bind(key_id)
    .fetch_one(conn)
    .await
}
