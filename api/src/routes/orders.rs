//! Orders API: create (idempotent), read (keys for the buyer, audit-logged), list, cancel,
//! and fulfill (long-poll for the worker).

use autokey_shared::jobs::{self, FulfillOrder, ReplenishPool};
use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::Auth,
    error::{ApiError, ApiResult, ErrorBody},
    extract::{Json, Path, Query},
    orders::{
        self, OrderRow, cursor, delivered_keys, idempotency,
        view::{Order, OrderPage},
    },
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_order, list_orders))
        .routes(routes!(get_order))
        .routes(routes!(cancel_order))
        .routes(routes!(fulfill_order))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateOrder {
    offer_id: Uuid,
    /// 1..100, default 1.
    quantity: Option<i32>,
    /// Required for storefront tokens (their own id for the customer); a buyer may only
    /// give its own id.
    buyer_id: Option<Uuid>,
}

/// Place an order (PENDING).
#[utoipa::path(post, path = "/orders", tag = "orders", security(("bearer" = [])),
    request_body = CreateOrder,
    params(("Idempotency-Key" = Option<String>, Header, description = "<= 255 chars; same key + same body = same order")),
    responses(
        (status = 201, body = Order, description = "created (or replayed for a repeated Idempotency-Key)"),
        (status = 400, body = ErrorBody, description = "validation_failed, offer_unavailable, out_of_stock"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "idempotency_mismatch"),
    ))]
async fn create_order(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    Json(body): Json<CreateOrder>,
) -> ApiResult<(StatusCode, Json<Order>)> {
    let buyer_id = auth.buyer_side()?.buyer_id(body.buyer_id)?;
    let quantity = body.quantity.unwrap_or(1);
    if !(1..=100).contains(&quantity) {
        return Err(ApiError::validation("quantity must be between 1 and 100"));
    }
    let key = idempotency::parse(headers.get(idempotency::HEADER))?;
    let scope = idempotency::scope(&auth);
    let hash = idempotency::request_hash(body.offer_id, quantity, buyer_id);

    // Without an Idempotency-Key there is one write: no transaction (the stock check is
    // advisory either way; a paid order beyond stock waits as a backorder).
    let Some(key) = key else {
        let mut conn = state.pool.acquire().await?;
        let order = place(&mut conn, buyer_id, body.offer_id, quantity).await?;
        return Ok((StatusCode::CREATED, Json(Order::from_row(order, None))));
    };
    let mut tx = state.pool.begin().await?;
    if let Some(existing) = idempotency::replay(&mut tx, &scope, &key, &hash).await? {
        return replayed(&mut tx, existing).await;
    }
    let order = place(&mut tx, buyer_id, body.offer_id, quantity).await?;
    if !idempotency::record(&mut tx, &scope, &key, &hash, order.id).await? {
        // A concurrent request with this key won; answer with its order.
        tx.rollback().await?;
        let mut conn = state.pool.acquire().await?;
        let existing = idempotency::replay(&mut conn, &scope, &key, &hash)
            .await?
            .ok_or_else(|| ApiError::Internal("idempotency record vanished".into()))?;
        return replayed(&mut conn, existing).await;
    }
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(Order::from_row(order, None))))
}

/// Checks the offer and its stock, then inserts the PENDING order.
async fn place(
    conn: &mut sqlx::PgConnection,
    buyer_id: Uuid,
    offer_id: Uuid,
    quantity: i32,
) -> ApiResult<OrderRow> {
    let offer = orders::offer_for_order(conn, offer_id)
        .await?
        .filter(|o| o.status == "active")
        .ok_or(ApiError::OfferUnavailable)?;
    if offer.sellable < i64::from(quantity) {
        return Err(ApiError::OutOfStock);
    }
    Ok(orders::insert(
        conn,
        &orders::NewOrder {
            buyer_id,
            offer,
            quantity,
        },
    )
    .await?)
}

async fn replayed(
    conn: &mut sqlx::PgConnection,
    order_id: Uuid,
) -> ApiResult<(StatusCode, Json<Order>)> {
    let order = orders::find(conn, order_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok((StatusCode::CREATED, Json(Order::from_row(order, None))))
}

/// The order as the caller may see it: with plaintext keys when FULFILLED (audit-logged).
pub async fn present(
    state: &AppState,
    auth: &Auth,
    order: OrderRow,
    route: &str,
) -> ApiResult<Order> {
    if order.status != "FULFILLED" {
        return Ok(Order::from_row(order, None));
    }
    let mut tx = state.pool.begin().await?;
    let keys = delivered_keys::load(&mut tx, &state.vault, order.id).await?;
    let ids: Vec<Uuid> = keys.iter().map(|k| k.id).collect();
    orders::audit(
        &mut tx,
        auth,
        "order.keys_read",
        Some(order.id),
        serde_json::json!({ "route": route, "keyIds": ids }),
    )
    .await?;
    tx.commit().await?;
    Ok(Order::from_row(order, Some(keys)))
}

async fn visible_order(state: &AppState, auth: &Auth, id: Uuid) -> ApiResult<OrderRow> {
    let side = auth.buyer_side()?;
    let mut conn = state.pool.acquire().await?;
    orders::visible_or_404(orders::find(&mut conn, id).await?, |o| {
        side.may_see(o.buyer_id)
    })
}

/// Read an order; keys are included when FULFILLED.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Order), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_order(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Order>> {
    let order = visible_order(&state, &auth, id).await?;
    Ok(Json(
        present(&state, &auth, order, "GET /orders/:id").await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListOrders {
    /// PENDING | PAID | FULFILLED | CANCELED
    status: Option<String>,
    /// 1..200, default 50.
    limit: Option<i64>,
    cursor: Option<String>,
    /// Required for storefront tokens.
    buyer_id: Option<Uuid>,
}

/// List orders, newest first (buyer: own; storefront: `buyerId` required). No keys.
#[utoipa::path(get, path = "/orders", tag = "orders", security(("bearer" = [])), params(ListOrders),
    responses((status = 200, body = OrderPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn list_orders(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<ListOrders>,
) -> ApiResult<Json<OrderPage>> {
    let buyer_id = auth.buyer_side()?.buyer_id(q.buyer_id)?;
    if let Some(s) = &q.status {
        if !autokey_shared::model::order_status::ALL.contains(&s.as_str()) {
            return Err(ApiError::validation(
                "status must be PENDING, PAID, FULFILLED or CANCELED",
            ));
        }
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::validation("limit must be between 1 and 200"));
    }
    let after = q.cursor.as_deref().map(cursor::decode).transpose()?;
    let mut conn = state.pool.acquire().await?;
    let mut rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM orders WHERE buyer_id = $1 AND ($2::text IS NULL OR status = $2)
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
         ORDER BY created_at DESC, id DESC LIMIT $5",
        orders::ORDER_COLUMNS
    )))
    .bind(buyer_id)
    .bind(&q.status)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit + 1)
    .fetch_all(&mut *conn)
    .await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| cursor::encode(r.created_at, r.id))
    } else {
        None
    };
    Ok(Json(OrderPage {
        items: rows.into_iter().map(|r| Order::from_row(r, None)).collect(),
        next_cursor,
    }))
}

/// Cancel a PENDING or PAID (not yet delivered) order; its reserved keys return to the pool.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Order), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "conflict: already FULFILLED")))]
async fn cancel_order(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Order>> {
    let side = auth.buyer_side()?;
    let mut tx = state.pool.begin().await?;
    let order = orders::visible_or_404(orders::lock(&mut tx, id).await?, |o| {
        side.may_see(o.buyer_id)
    })?;
    match order.status.as_str() {
        "FULFILLED" => {
            return Err(ApiError::Conflict(
                "a fulfilled order cannot be canceled".into(),
            ));
        }
        "CANCELED" => return Ok(Json(Order::from_row(order, None))),
        _ => {}
    }
    let released = orders::cancel(&mut tx, &order).await?;
    if released > 0 {
        if let Some(pool_id) = order.pool_id {
            // The freed keys may complete other waiting orders.
            jobs::enqueue(&mut tx, &ReplenishPool { pool_id }).await?;
        }
    }
    orders::audit(
        &mut tx,
        &auth,
        "order.canceled",
        Some(id),
        serde_json::json!({ "releasedKeys": released }),
    )
    .await?;
    let order = orders::find(&mut tx, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    tx.commit().await?;
    Ok(Json(Order::from_row(order, None)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FulfillParams {
    /// Seconds to wait for the worker: 0..30, default 5.
    wait: Option<u64>,
}

/// Get the keys of a paid order, waiting up to `wait` seconds for the worker.
#[utoipa::path(post, path = "/orders/{id}/fulfill", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path), FulfillParams),
    responses(
        (status = 200, body = Order, description = "FULFILLED, with keys (the same keys on every call)"),
        (status = 202, body = Order, description = "still PAID (e.g. backordered)"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not_paid (PENDING) or conflict (CANCELED)")))]
async fn fulfill_order(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
    Query(params): Query<FulfillParams>,
) -> ApiResult<(StatusCode, Json<Order>)> {
    let wait = params.wait.unwrap_or(5);
    if wait > 30 {
        return Err(ApiError::validation(
            "wait must be between 0 and 30 seconds",
        ));
    }
    // Subscribe before reading, so a fulfillment between the read and the wait is seen.
    let rx = state.waiter.subscribe();
    let order = visible_order(&state, &auth, id).await?;
    match order.status.as_str() {
        "PENDING" => return Err(ApiError::NotPaid),
        "CANCELED" => return Err(ApiError::Conflict("the order is canceled".into())),
        "FULFILLED" => {
            return Ok((
                StatusCode::OK,
                Json(present(&state, &auth, order, "POST /orders/:id/fulfill").await?),
            ));
        }
        _ => {}
    }
    {
        let mut conn = state.pool.acquire().await?;
        jobs::enqueue(&mut conn, &FulfillOrder { order_id: id }).await?;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
    let pool = state.pool.clone();
    let done = crate::fulfillment_wait::wait_for(rx, id, deadline, || {
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await?;
            Ok(orders::find(&mut conn, id)
                .await?
                .filter(|o| o.status != "PAID"))
        }
    })
    .await?;
    match done {
        Some(order) if order.status == "FULFILLED" => Ok((
            StatusCode::OK,
            Json(present(&state, &auth, order, "POST /orders/:id/fulfill").await?),
        )),
        Some(order) => Err(ApiError::Conflict(format!(
            "the order is {}",
            order.status.to_lowercase()
        ))),
        None => {
            let mut conn = state.pool.acquire().await?;
            let order = orders::find(&mut conn, id)
                .await?
                .ok_or_else(ApiError::not_found)?;
            Ok((StatusCode::ACCEPTED, Json(Order::from_row(order, None))))
        }
    }
}
