//! Orders API: create (idempotent), read (keys for the buyer, audit-logged), list, cancel,
//! and fulfill (long-poll for the worker).

use autokey_shared::{
    jobs::{FulfillOrder, queue},
    model::{DeliveryType, OfferStatus, OrderStatus},
    store::{
        self,
        orders::{NewOrder, OrderRequest, OrderRow},
    },
    transitions,
};
use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

/// How long `fulfill?wait=` waits for a paid order before making sure it has a job.
const NUDGE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

use crate::{
    auth::{Auth, BuyerSide},
    error::{ApiError, ApiResult, ConstraintExt, ErrorBody},
    extract::{Json, Path, Query, int},
    orders::{
        idempotency, open_keys,
        view::{Order, OrderPage},
    },
    pagination,
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
#[schema(example = json!({"offerId": "0193a5e4-7b1c-7d2e-9f00-1a2b3c4d5e70", "quantity": 1,
    "buyerId": "6f1c2b9e-3d4a-4e5f-8a7b-9c0d1e2f3a4b"}))]
pub struct CreateOrder {
    offer_id: Uuid,
    /// Units, each one key (default 1).
    #[schema(minimum = 1, maximum = 100, default = 1)]
    #[serde(default, deserialize_with = "int::optional")]
    quantity: Option<i32>,
    /// Required for storefront tokens (their own id for the customer); a buyer may only
    /// give its own id.
    buyer_id: Option<Uuid>,
}

/// Place an order (PENDING).
#[utoipa::path(post, path = "/orders", tag = "orders", security(("bearer" = [])),
    request_body = CreateOrder,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[\\x21-\\x7e]([\\x20-\\x7e\\t]*[\\x21-\\x7e])?$",
        description = "Visible ASCII, 1 to 255 characters, per caller: the same key with the same body gives the same order; with another body, 409 `idempotency_mismatch`.")),
    responses(
        (status = 201, body = Order, description = "The order, PENDING (or the order an earlier request with this Idempotency-Key created).",
            links(
            ("getOrder" = (operation_id = "getOrder", parameters(("id" = "$response.body#/id")))),
            ("payOrder" = (operation_id = "payOrder", parameters(("id" = "$response.body#/id")))),
            ("fulfillOrder" = (operation_id = "fulfillOrder", parameters(("id" = "$response.body#/id")))),
            ("cancelOrder" = (operation_id = "cancelOrder", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 400, body = ErrorBody, description = "`validation_failed` (a malformed body or Idempotency-Key, a storefront without `buyerId`, a buyer naming another buyer), `offer_unavailable` (no such offer, or not active) or `out_of_stock` (fewer sellable keys than `quantity`).",
            example = json!({"error": {"code": "out_of_stock", "message": "not enough keys are available for this quantity"}})),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody, description = "`forbidden`: not a buyer or storefront token."),
        (status = 409, body = ErrorBody, description = "`idempotency_mismatch`: this Idempotency-Key was used with a different request."),
    ))]
async fn create_order(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    Json(body): Json<CreateOrder>,
) -> ApiResult<(StatusCode, Json<Order>)> {
    let side = auth.buyer_side()?;
    let buyer_id = side.buyer_id(body.buyer_id)?;
    let quantity = body.quantity.unwrap_or(1);
    if !(1..=100).contains(&quantity) {
        return Err(ApiError::validation("quantity must be between 1 and 100"));
    }
    let key = idempotency::parse(headers.get(idempotency::HEADER))?;
    let scope = idempotency::scope(&auth);
    let hash = idempotency::request_hash(body.offer_id, quantity, buyer_id);

    // Without an Idempotency-Key there is one write: no transaction (an AUTO_KEY offer's
    // stock check is advisory either way, a paid order beyond stock waits as a backorder;
    // a MANUAL offer's check takes its own transaction in `place`).
    //
    // Concurrent AUTO_KEY orders are checked and inserted together, one statement for
    // many requests (`orders::intake`). An order that statement does not place (a MANUAL
    // offer, or one it refuses) takes the one-request path, which says why.
    let Some(key) = key else {
        let request = OrderRequest {
            buyer_id,
            storefront_id: side.storefront(),
            offer_id: body.offer_id,
            quantity,
        };
        let order = match state.intake.place_order(request).await? {
            Some(order) => order,
            None => {
                let mut conn = state.pool.acquire().await?;
                place(&mut conn, side, buyer_id, body.offer_id, quantity).await?
            }
        };
        autokey_shared::metrics::orders_created(1);
        return Ok((StatusCode::CREATED, Json(Order::from_row(order, None))));
    };
    let mut tx = state.pool.begin().await?;
    if let Some(existing) = idempotency::replay(&mut tx, &scope, &key, &hash).await? {
        return replayed(&mut tx, existing).await;
    }
    let order = place(&mut tx, side, buyer_id, body.offer_id, quantity).await?;
    if !store::idempotency::record(&mut tx, &scope, &key, &hash, order.id).await? {
        // A concurrent request with this key won; answer with its order.
        tx.rollback().await?;
        let mut conn = state.pool.acquire().await?;
        let existing = idempotency::replay(&mut conn, &scope, &key, &hash)
            .await?
            .ok_or_else(|| ApiError::Internal("idempotency record vanished".into()))?;
        return replayed(&mut conn, existing).await;
    }
    tx.commit().await?;
    autokey_shared::metrics::orders_created(1);
    Ok((StatusCode::CREATED, Json(Order::from_row(order, None))))
}

/// Checks the offer and its stock, then inserts the PENDING order. A MANUAL offer's
/// stock is the seller's word and nothing waits for it, so its check is exact: orders of
/// one MANUAL offer are placed one at a time under the offer's row lock, each counting
/// the units of the open orders before it.
async fn place(
    conn: &mut sqlx::PgConnection,
    side: BuyerSide,
    buyer_id: Uuid,
    offer_id: Uuid,
    quantity: i32,
) -> ApiResult<OrderRow> {
    let offer = store::offers::for_order(conn, offer_id)
        .await?
        .filter(|o| o.status == OfferStatus::Active)
        .ok_or(ApiError::OfferUnavailable)?;
    if offer.delivery_type == DeliveryType::Manual {
        // A savepoint when the caller already is in a transaction; the lock is held to
        // its commit either way.
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        store::offers::lock_for_order(&mut tx, offer_id).await?;
        let offer = store::offers::for_order(&mut tx, offer_id)
            .await?
            .filter(|o| o.status == OfferStatus::Active)
            .ok_or(ApiError::OfferUnavailable)?;
        let order = insert_checked(&mut tx, side, buyer_id, offer, quantity).await?;
        tx.commit().await?;
        return Ok(order);
    }
    insert_checked(conn, side, buyer_id, offer, quantity).await
}

async fn insert_checked(
    conn: &mut sqlx::PgConnection,
    side: BuyerSide,
    buyer_id: Uuid,
    offer: store::offers::OfferForOrder,
    quantity: i32,
) -> ApiResult<OrderRow> {
    if offer.sellable < i64::from(quantity) {
        return Err(ApiError::OutOfStock);
    }
    let amount_cents = offer
        .price_cents
        .checked_mul(i64::from(quantity))
        .ok_or_else(|| ApiError::validation("the order's amount is too large"))?;
    let new = NewOrder {
        buyer_id,
        storefront_id: side.storefront(),
        offer_id: offer.id,
        pool_id: offer.key_pool_id,
        quantity,
        amount_cents,
        currency: offer.currency,
    };
    store::orders::insert(conn, &new).await.map_constraint(|c| {
        (c == "orders_quantity_check")
            .then(|| ApiError::validation("quantity must be between 1 and 100"))
    })
}

async fn replayed(
    conn: &mut sqlx::PgConnection,
    order_id: Uuid,
) -> ApiResult<(StatusCode, Json<Order>)> {
    let order = store::orders::find(conn, order_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok((StatusCode::CREATED, Json(Order::from_row(order, None))))
}

fn order_not_found() -> ApiError {
    ApiError::NotFound("order not found".into())
}

/// The order as the caller reads it: with plaintext keys when FULFILLED, the read
/// recorded in the audit log by the same statement. 404 when the caller may not see it.
pub async fn read(state: &AppState, auth: &Auth, id: Uuid, route: &str) -> ApiResult<Order> {
    let viewer = auth.buyer_side()?.viewer();
    // Looked up with the concurrent reads (`orders::lookup`); an order not yet FULFILLED
    // is all there is to show.
    let order = state
        .lookups
        .find(id)
        .await?
        .filter(|o| viewer.may_see(o))
        .ok_or_else(order_not_found)?;
    if order.status != OrderStatus::Fulfilled {
        return Ok(Order::from_row(order, None));
    }
    let mut conn = state.pool.acquire().await?;
    let (order, sealed) =
        store::orders::read_fulfilled(&mut conn, id, viewer, &auth.actor(), route)
            .await?
            .ok_or_else(order_not_found)?;
    let keys = if order.status == OrderStatus::Fulfilled {
        Some(open_keys(&state.vault, sealed)?)
    } else {
        None
    };
    Ok(Order::from_row(order, keys))
}

/// Read an order; keys are included when FULFILLED.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Order, description = "The order; `keys` when FULFILLED (this read is audit-logged)."),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden`: not a buyer or storefront token."),
        (status = 404, body = ErrorBody, description = "`not_found`: no such order, or one this buyer or storefront did not place.")))]
async fn get_order(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Order>> {
    Ok(Json(read(&state, &auth, id, "GET /orders/:id").await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListOrders {
    status: Option<OrderStatus>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    cursor: Option<String>,
    /// Required for storefront tokens.
    buyer_id: Option<Uuid>,
}

/// List orders, newest first (buyer: own; storefront: `buyerId` required). No keys.
#[utoipa::path(get, path = "/orders", tag = "orders", security(("bearer" = [])), params(ListOrders),
    responses((status = 200, body = OrderPage, description = "A page of the caller's orders, newest first."),
        (status = 400, body = ErrorBody, description = "`validation_failed`: a bad status, limit or cursor, a storefront without `buyerId`, or a buyer naming another buyer."),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden`: not a buyer or storefront token.")))]
async fn list_orders(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<ListOrders>,
) -> ApiResult<Json<OrderPage>> {
    let side = auth.buyer_side()?;
    let buyer_id = side.buyer_id(q.buyer_id)?;
    let limit = pagination::limit(q.limit, 50, 200)?;
    let after = pagination::decode(q.cursor.as_deref())?;
    let mut conn = state.pool.acquire().await?;
    let mut rows = store::orders::page_for_buyer(
        &mut conn,
        buyer_id,
        side.storefront(),
        q.status,
        after,
        limit + 1,
    )
    .await?;
    let next_cursor = pagination::cut(&mut rows, limit, |r| store::After {
        created_at: r.created_at,
        id: r.id,
    });
    Ok(Json(OrderPage {
        items: rows.into_iter().map(|r| Order::from_row(r, None)).collect(),
        next_cursor,
    }))
}

/// Cancel a PENDING or PAID (not yet delivered) order; its reserved keys return to the pool.
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Order, description = "The order, CANCELED (also when it already was)."),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden`: not a buyer or storefront token."),
        (status = 404, body = ErrorBody, description = "`not_found`: no such order, or one this buyer or storefront did not place."),
        (status = 409, body = ErrorBody, description = "`conflict`: the order is FULFILLED.")))]
async fn cancel_order(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Order>> {
    let viewer = auth.buyer_side()?.viewer();
    let mut tx = state.pool.begin().await?;
    let order = store::orders::lock_visible(&mut tx, id, viewer)
        .await?
        .ok_or_else(order_not_found)?;
    match order.status {
        OrderStatus::Fulfilled => {
            return Err(ApiError::Conflict(
                "a fulfilled order cannot be canceled".into(),
            ));
        }
        OrderStatus::Canceled => return Ok(Json(Order::from_row(order, None))),
        OrderStatus::Pending | OrderStatus::Paid => {}
    }
    let (order, released) = transitions::cancel(&mut tx, &order).await?;
    store::audit::append(
        &mut tx,
        &auth.actor(),
        "order.canceled",
        Some(id),
        serde_json::json!({ "releasedKeys": released }),
    )
    .await?;
    tx.commit().await?;
    autokey_shared::metrics::orders_canceled(1);
    tracing::info!(order_id = %id, released_keys = released, "order canceled");
    Ok(Json(Order::from_row(order, None)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FulfillParams {
    /// Seconds to wait for the worker (default 5).
    #[param(minimum = 0, maximum = 30)]
    wait: Option<u64>,
}

/// Get the keys of a paid order, waiting up to `wait` seconds for the worker.
#[utoipa::path(post, path = "/orders/{id}/fulfill", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path), FulfillParams),
    responses(
        (status = 200, body = Order, description = "FULFILLED, with `keys` (the same keys on every call; each read is audit-logged)."),
        (status = 202, body = Order, description = "Still PAID after `wait` seconds (e.g. backordered until keys arrive); call again."),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden`: not a buyer or storefront token."),
        (status = 404, body = ErrorBody, description = "`not_found`: no such order, or one this buyer or storefront did not place."),
        (status = 409, body = ErrorBody, description = "`not_paid` (the order is PENDING) or `conflict` (it is CANCELED).")))]
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
    let viewer = auth.buyer_side()?.viewer();
    const ROUTE: &str = "POST /orders/:id/fulfill";
    // Subscribe before reading, so a fulfillment between the read and the wait is seen.
    let mut rx = state.waiter.subscribe();
    let order = read(&state, &auth, id, ROUTE).await?;
    match order.status {
        OrderStatus::Pending => return Err(ApiError::NotPaid),
        OrderStatus::Canceled => return Err(ApiError::Conflict("the order is canceled".into())),
        OrderStatus::Fulfilled => return Ok((StatusCode::OK, Json(order))),
        OrderStatus::Paid => {}
    }
    let now = tokio::time::Instant::now();
    let deadline = now + std::time::Duration::from_secs(wait);
    let pool = state.pool.clone();
    let check = || {
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await?;
            Ok(store::orders::find_visible(&mut conn, id, viewer)
                .await?
                .filter(|o| o.status != OrderStatus::Paid))
        }
    };
    // A paid order's job exists from its pay on (same transaction), so a fresh order needs
    // no nudge: the job is only made sure of once the order is still PAID after
    // NUDGE_AFTER (its job may be long done and pruned: a backorder), rather than costing
    // every call a write to the queue.
    let nudge_at = (now + NUDGE_AFTER).min(deadline);
    let mut done = crate::fulfillment_wait::wait_for(&mut rx, id, nudge_at, check).await?;
    if done.is_none() {
        let mut conn = state.pool.acquire().await?;
        queue::enqueue(&mut conn, &FulfillOrder::new(id)).await?;
        drop(conn);
        if nudge_at < deadline {
            done = crate::fulfillment_wait::wait_for(&mut rx, id, deadline, check).await?;
        }
    }
    match done.map(|o| o.status) {
        Some(OrderStatus::Fulfilled) => {
            Ok((StatusCode::OK, Json(read(&state, &auth, id, ROUTE).await?)))
        }
        Some(status) => Err(ApiError::Conflict(format!(
            "the order is {}",
            status.as_str().to_lowercase()
        ))),
        None => Ok((StatusCode::ACCEPTED, Json(order))),
    }
}
