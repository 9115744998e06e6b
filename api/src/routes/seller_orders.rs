//! A seller's side of its orders: the list of orders placed on its offers, and the hand
//! delivery of a paid MANUAL order (the keys the seller gives, sealed like pool keys).

use std::collections::HashSet;

use autokey_shared::{
    model::{DeliveryType, OrderStatus},
    store::{self, keys::NewKey},
    transitions,
};
use axum::extract::State;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::Auth,
    error::{ApiError, ApiResult, ConstraintExt, ErrorBody},
    extract::{Json, Path, Query},
    key_input,
    orders::view::{Order, OrderPage},
    pagination,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_seller_orders))
        .routes(routes!(deliver_manual_order))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListSellerOrders {
    status: Option<OrderStatus>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    cursor: Option<String>,
}

/// List the orders placed on the seller's offers, newest first (e.g. `status=PAID`: the
/// MANUAL orders waiting for their keys). Never keys.
#[utoipa::path(get, path = "/seller/orders", tag = "orders", security(("bearer" = [])),
    operation_id = "listSellerOrders", params(ListSellerOrders),
    responses((status = 200, body = OrderPage, description = "A page of the orders of the seller's offers, newest first."),
        (status = 400, body = ErrorBody, description = "`validation_failed`: a bad status, limit or cursor."),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden`: not a seller token.")))]
async fn list_seller_orders(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<ListSellerOrders>,
) -> ApiResult<Json<OrderPage>> {
    let seller_id = auth.seller()?;
    let limit = pagination::limit(q.limit, 50, 200)?;
    let after = pagination::decode(q.cursor.as_deref())?;
    let mut conn = state.pool.acquire().await?;
    let mut rows =
        store::orders::page_for_seller(&mut conn, seller_id, q.status, after, limit + 1).await?;
    let next_cursor = pagination::cut(&mut rows, limit, |r| store::After {
        created_at: r.created_at,
        id: r.id,
    });
    Ok(Json(OrderPage {
        items: rows.into_iter().map(|r| Order::from_row(r, None)).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"keys": ["ABCDE-12345-FGHIJ"]}))]
pub struct ManualDelivery {
    /// Exactly the order's `quantity` keys, each as an uploaded key (trimmed, 5 to 255
    /// characters, no control character).
    #[schema(min_items = 1, max_items = 100)]
    keys: Vec<String>,
}

/// Deliver a paid MANUAL order by hand: its keys are stored sealed and the order becomes
/// FULFILLED (its buyer reads them like any order's keys). Once only.
#[utoipa::path(post, path = "/seller/orders/{id}/deliver", tag = "orders", security(("bearer" = [])),
    operation_id = "deliverManualOrder", params(("id" = Uuid, Path)), request_body = ManualDelivery,
    responses((status = 200, body = Order, description = "The order, FULFILLED (without its keys: they are the buyer's)."),
        (status = 400, body = ErrorBody, description = "`validation_failed`: not exactly `quantity` keys, an invalid or repeated key, or a key already delivered."),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden`: not a seller token."),
        (status = 404, body = ErrorBody, description = "`not_found`: no such order on this seller's offers."),
        (status = 409, body = ErrorBody, description = "`not_paid` (PENDING) or `conflict` (already delivered, canceled, or not a MANUAL order).")))]
async fn deliver_manual_order(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
    Json(body): Json<ManualDelivery>,
) -> ApiResult<Json<Order>> {
    let seller_id = auth.seller()?;
    let mut tx = state.pool.begin().await?;
    let (order, delivery_type) = store::orders::lock_for_seller(&mut tx, id, seller_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("order not found".into()))?;
    if delivery_type != DeliveryType::Manual || order.pool_id.is_some() {
        return Err(ApiError::Conflict(
            "only a MANUAL order is delivered by hand".into(),
        ));
    }
    match order.status {
        OrderStatus::Pending => return Err(ApiError::NotPaid),
        OrderStatus::Fulfilled => {
            return Err(ApiError::Conflict("the order is already delivered".into()));
        }
        OrderStatus::Canceled => return Err(ApiError::Conflict("the order is canceled".into())),
        OrderStatus::Paid => {}
    }
    if body.keys.len() != order.quantity as usize {
        return Err(ApiError::validation(format!(
            "exactly {} keys are needed for this order",
            order.quantity
        )));
    }
    let mut seen = HashSet::new();
    let mut rows = Vec::with_capacity(body.keys.len());
    for (i, raw) in body.keys.iter().enumerate() {
        let key = key_input::validate(raw).map_err(|why| {
            ApiError::validation(format!("key {} is invalid: {}", i + 1, why.as_str()))
        })?;
        let fingerprint = state.vault.fingerprint(key);
        if !seen.insert(fingerprint) {
            return Err(ApiError::validation(format!("key {} is repeated", i + 1)));
        }
        let key_id = Uuid::now_v7();
        rows.push(NewKey {
            id: key_id,
            fingerprint,
            // Bound to the key's row and its order (a MANUAL key has no pool).
            sealed: state.vault.seal(key_id, order.id, key),
        });
    }
    let delivered = transitions::manual::deliver(&mut tx, &order, &rows)
        .await
        .map_constraint(|c| {
            (c == "manual_keys_fingerprint_unique")
                .then(|| ApiError::validation("a key was already delivered to an order"))
        })?;
    store::audit::append(
        &mut tx,
        &auth.actor(),
        "order.delivered_manually",
        Some(id),
        serde_json::json!({ "keyIds": rows.iter().map(|k| k.id).collect::<Vec<_>>() }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(Order::from_row(delivered, None)))
}
