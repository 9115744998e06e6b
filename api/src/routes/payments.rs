//! Payments: the simulated `pay` for development and the provider's signed webhook.
//! Both end in `transitions::pay`: PAID and its fulfillment job commit together.

use autokey_shared::{
    model::OrderStatus,
    store::{self, payments::PaymentEvent as Received},
    transitions::{self, Announce},
    webhook_signature,
};
use axum::{extract::State, http::HeaderMap};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::Auth,
    error::{ApiError, ApiResult, ErrorBody},
    extract::{Json, Path, RawBody, int},
    orders::{intake::Pay, view::Order},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(pay_order))
        .routes(routes!(payment_webhook))
}

/// Simulated payment (development): PENDING -> PAID and fulfillment enqueued. 404 when
/// the operator turned simulated payments off.
#[utoipa::path(post, path = "/orders/{id}/pay", tag = "orders", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Order, description = "PAID (or already PAID or FULFILLED, unchanged).",
            links(("fulfillOrder" = (operation_id = "fulfillOrder", parameters(("id" = "$response.body#/id")))))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "`forbidden`: not a buyer or storefront token."),
        (status = 404, body = ErrorBody, description = "`not_found`: no such order, or one this buyer or storefront did not place; or simulated payments are turned off."),
        (status = 409, body = ErrorBody, description = "`conflict`: the order is CANCELED.")))]
async fn pay_order(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Order>> {
    if !state.settings.simulated_payments {
        return Err(ApiError::NotFound(
            "simulated payments are turned off".into(),
        ));
    }
    // Joins the concurrent pays in one transaction (`orders::intake`).
    let (order, paid_now) = state
        .intake
        .pay(Pay {
            order_id: id,
            viewer: auth.buyer_side()?.viewer(),
            actor: auth.actor(),
            request_id: autokey_shared::telemetry::request_id(),
        })
        .await?;
    if paid_now {
        autokey_shared::metrics::orders_paid(1);
        tracing::info!(order_id = %id, payment = "simulated", "order paid");
    }
    Ok(Json(Order::from_row(order, None)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"type": "payment.succeeded", "data": {"orderId": "0193a5e4-7b1c-7d2e-9f00-1a2b3c4d5e71",
    "paymentId": "pay_8c1d", "amountCents": 1999, "currency": "EUR"}}))]
pub struct PaymentEvent {
    /// `payment.succeeded` or `payment.refunded`; other types are recorded and ignored.
    #[serde(rename = "type")]
    #[schema(max_length = 100)]
    kind: String,
    data: PaymentData,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentData {
    order_id: Uuid,
    #[schema(max_length = 255)]
    payment_id: String,
    #[serde(deserialize_with = "int::required")]
    amount_cents: i64,
    #[schema(max_length = 16)]
    currency: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAck {
    /// applied | duplicate | ignored | amount_mismatch | unknown_order | order_canceled |
    /// already_paid; for a refund: refunded | already_refunded | not_paid
    outcome: &'static str,
}

/// The payment provider's webhook (Standard Webhooks signature). Replays of a
/// `webhook-id` are acknowledged without effect.
#[utoipa::path(post, path = "/webhooks/payments", tag = "payments",
    request_body = PaymentEvent,
    params(
        ("webhook-id" = String, Header, min_length = 1, max_length = 255, description = "The event's unique id; a replayed id is acknowledged without effect."),
        ("webhook-timestamp" = i64, Header, description = "Unix seconds; more than 5 minutes off is refused."),
        ("webhook-signature" = String, Header, description = "v1,<base64 HMAC-SHA256>, space-separated list allowed"),
    ),
    responses((status = 200, body = WebhookAck, description = "Received (applied, or recorded without effect: see `outcome`)."),
        (status = 400, body = ErrorBody, description = "`validation_failed`: the signed body is not a payment event."),
        (status = 401, body = ErrorBody, description = "`unauthorized`: a bad or missing signature, or a timestamp more than 5 minutes off; nothing is written.")))]
async fn payment_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<Json<WebhookAck>> {
    let secret = state
        .settings
        .webhook_secret
        .as_ref()
        .ok_or(ApiError::Unauthorized)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    webhook_signature::verify(
        secret.expose_secret(),
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        &body,
        now,
    )
    .map_err(|e| {
        tracing::warn!(reason = %e, "payment webhook refused");
        ApiError::Unauthorized
    })?;
    let event_id = header("webhook-id").unwrap_or_default().to_owned();
    if event_id.is_empty() || event_id.len() > 255 {
        return Err(ApiError::validation(
            "webhook-id must be 1 to 255 characters",
        ));
    }
    let mut raw: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::validation(format!("body is not JSON: {e}")))?;
    if !raw.is_object() {
        return Err(ApiError::validation(
            "body is not a payment event: not an object",
        ));
    }
    // The signed body is the provider's word: kept even if a string in it holds U+0000,
    // which jsonb (and text) cannot store; the stored copy has U+FFFD there instead.
    replace_nul(&mut raw);
    let event: PaymentEvent = serde_json::from_value(raw.clone())
        .map_err(|e| ApiError::validation(format!("body is not a payment event: {e}")))?;
    // Characters, as the schema's maxLength counts them.
    let chars = |s: &str| s.chars().count();
    if chars(&event.kind) > 100
        || chars(&event.data.payment_id) > 255
        || chars(&event.data.currency) > 16
    {
        return Err(ApiError::validation(
            "type, paymentId or currency is longer than a payment event's",
        ));
    }

    let mut tx = state.pool.begin().await?;
    let received = Received {
        event_id: &event_id,
        order_id: event.data.order_id,
        payment_id: &event.data.payment_id,
        amount_cents: event.data.amount_cents,
        currency: &event.data.currency,
        body: &raw,
    };
    let fresh = store::payments::record(&mut tx, &received).await?;
    if !fresh {
        return Ok(Json(WebhookAck {
            outcome: "duplicate",
        }));
    }
    let outcome = apply_payment(&mut tx, &event).await?;
    store::payments::set_outcome(&mut tx, &event_id, outcome).await?;
    tx.commit().await?;
    if outcome == "applied" {
        state.lane.fulfillments([event.data.order_id]);
        autokey_shared::metrics::orders_paid(1);
        tracing::info!(%event_id, order_id = %event.data.order_id, "order paid");
    } else {
        tracing::warn!(%event_id, order_id = %event.data.order_id, outcome, "payment event not applied");
    }
    Ok(Json(WebhookAck { outcome }))
}

/// Replaces U+0000 by U+FFFD in every string and key of `value`.
fn replace_nul(value: &mut serde_json::Value) {
    use serde_json::Value;
    const NUL: char = '\0';
    match value {
        Value::String(s) if s.contains(NUL) => *s = s.replace(NUL, "\u{FFFD}"),
        Value::Array(items) => items.iter_mut().for_each(replace_nul),
        Value::Object(map) if map.keys().any(|k| k.contains(NUL)) => {
            *map = std::mem::take(map)
                .into_iter()
                .map(|(k, mut v)| {
                    replace_nul(&mut v);
                    (k.replace(NUL, "\u{FFFD}"), v)
                })
                .collect();
        }
        Value::Object(map) => map.values_mut().for_each(replace_nul),
        _ => {}
    }
}

async fn apply_payment(
    tx: &mut sqlx::PgConnection,
    event: &PaymentEvent,
) -> Result<&'static str, ApiError> {
    if event.kind == "payment.refunded" {
        return apply_refund(tx, event).await;
    }
    if event.kind != "payment.succeeded" {
        return Ok("ignored");
    }
    let Some(order) = store::orders::lock(tx, event.data.order_id).await? else {
        return Ok("unknown_order");
    };
    if order.amount_cents != event.data.amount_cents
        || !order.currency.eq_ignore_ascii_case(&event.data.currency)
    {
        return Ok("amount_mismatch");
    }
    Ok(match order.status {
        OrderStatus::Pending => {
            transitions::pay(
                tx,
                order.id,
                Some(&event.data.payment_id),
                Announce::AfterCommit,
            )
            .await?;
            "applied"
        }
        OrderStatus::Canceled => "order_canceled",
        OrderStatus::Paid | OrderStatus::Fulfilled => "already_paid",
    })
}

/// A refund: a PAID order not yet delivered is canceled (its reserved keys go back to the
/// pool); a FULFILLED one stays FULFILLED with `refundedAt`, its never-revealed keys back
/// to AVAILABLE and its revealed ones INVALID (`refunded`). The order row is locked first,
/// so a refund and the worker's delivery of the same order take turns.
async fn apply_refund(
    tx: &mut sqlx::PgConnection,
    event: &PaymentEvent,
) -> Result<&'static str, ApiError> {
    let Some(order) = store::orders::lock(tx, event.data.order_id).await? else {
        return Ok("unknown_order");
    };
    if order.amount_cents != event.data.amount_cents
        || !order.currency.eq_ignore_ascii_case(&event.data.currency)
    {
        return Ok("amount_mismatch");
    }
    Ok(match order.status {
        OrderStatus::Paid => {
            transitions::cancel(tx, &order).await?;
            "refunded"
        }
        OrderStatus::Fulfilled if order.refunded_at.is_none() => {
            transitions::refund::refund_fulfilled(tx, order.id).await?;
            "refunded"
        }
        OrderStatus::Fulfilled => "already_refunded",
        OrderStatus::Canceled => "order_canceled",
        OrderStatus::Pending => "not_paid",
    })
}
