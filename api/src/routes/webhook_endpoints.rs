//! Outgoing webhooks: a seller or a storefront registers URLs for event types; the worker
//! delivers each event signed per Standard Webhooks (`webhook-id` = the event id).

use autokey_shared::{
    model::Role,
    outbound,
    store::{
        self, After,
        events::{self, TYPES},
        webhooks::{Endpoint, NewEndpoint, SECRET_LABEL},
    },
};
use axum::{extract::State, http::StatusCode};
use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::Auth,
    error::{ApiError, ErrorBody},
    extract::{Json, Path, Query},
    pagination::{self, PageParams},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_endpoint, list_endpoints))
        .routes(routes!(delete_endpoint))
        .routes(routes!(test_endpoint))
        .routes(routes!(endpoint_deliveries))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewWebhookEndpoint {
    /// An http(s) URL on the public internet.
    #[schema(
        example = "https://shop.example.com/hooks/autokey",
        max_length = 2000,
        format = "uri"
    )]
    url: String,
    /// Event types to receive (at least one).
    #[schema(example = json!(["order.fulfilled", "pool.low_stock"]), min_items = 1,
        value_type = Vec<EventType>)]
    event_types: Vec<String>,
}

/// An event type an endpoint can subscribe to (the documentation of
/// `autokey_shared::store::events::TYPES`; a test checks that the two agree).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub enum EventType {
    #[schema(rename = "pool.low_stock")]
    PoolLowStock,
    #[schema(rename = "pool.out_of_stock")]
    PoolOutOfStock,
    #[schema(rename = "pool.restocked")]
    PoolRestocked,
    #[schema(rename = "order.paid")]
    OrderPaid,
    #[schema(rename = "order.fulfilled")]
    OrderFulfilled,
    #[schema(rename = "order.backordered")]
    OrderBackordered,
    #[schema(rename = "order.canceled")]
    OrderCanceled,
    #[schema(rename = "key.invalidated")]
    KeyInvalidated,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpoint {
    id: Uuid,
    url: String,
    event_types: Vec<String>,
    /// `whsec_<base64>`: the signing secret, shown once, when the endpoint is created.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    enabled: bool,
    /// Why the endpoint was disabled (after repeated failed deliveries).
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<Endpoint> for WebhookEndpoint {
    fn from(e: Endpoint) -> Self {
        WebhookEndpoint {
            id: e.id,
            url: e.url,
            event_types: e.event_types,
            secret: None,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            created_at: e.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookEndpointList {
    items: Vec<WebhookEndpoint>,
}

/// The caller as the owner of endpoints: a seller or a storefront.
fn owner(auth: &Auth) -> Result<(Role, Uuid), ApiError> {
    match (auth.role(), auth.subject()) {
        (role @ (Role::Seller | Role::Storefront), Some(id)) => Ok((role, id)),
        _ => Err(ApiError::Forbidden(
            "webhook endpoints are for seller and storefront tokens".into(),
        )),
    }
}

fn not_found() -> ApiError {
    ApiError::NotFound("webhook endpoint not found".into())
}

/// Registers an endpoint; the answer carries its signing secret, shown this once.
#[utoipa::path(post, path = "/webhook-endpoints", operation_id = "createWebhookEndpoint", tag = "events", security(("bearer" = [])),
    request_body = NewWebhookEndpoint,
    responses(
        (status = 201, body = WebhookEndpoint, description = "created, with its secret"),
        (status = 400, description = "bad URL (not http(s), private or loopback address) or event type", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller or storefront token", body = ErrorBody),
    ))]
async fn create_endpoint(
    auth: Auth,
    State(state): State<AppState>,
    Json(body): Json<NewWebhookEndpoint>,
) -> Result<(StatusCode, Json<WebhookEndpoint>), ApiError> {
    let (role, owner_id) = owner(&auth)?;
    let allow_private = state.settings.webhook_allow_private_urls;
    let url = outbound::check_url(body.url.trim(), allow_private)
        .map_err(|e| ApiError::validation(format!("url: {e}")))?;
    let mut types = body.event_types;
    types.sort();
    types.dedup();
    if types.is_empty() || types.iter().any(|t| !TYPES.contains(&t.as_str())) {
        return Err(ApiError::validation(format!(
            "eventTypes must list one or more of {}",
            TYPES.join(", ")
        )));
    }
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let id = Uuid::now_v7();
    let sealed = state.vault.seal_secret(SECRET_LABEL, id, &secret);
    let mut conn = state.pool.acquire().await?;
    let endpoint = store::webhooks::create(
        &mut conn,
        &NewEndpoint {
            id,
            owner_role: role,
            owner_id,
            url: url.as_str(),
            event_types: &types,
            secret: &sealed,
        },
    )
    .await?;
    let mut shown = WebhookEndpoint::from(endpoint);
    shown.secret = Some(format!("whsec_{}", STANDARD.encode(secret)));
    Ok((StatusCode::CREATED, Json(shown)))
}

/// The caller's endpoints (without their secrets).
#[utoipa::path(get, path = "/webhook-endpoints", operation_id = "listWebhookEndpoints", tag = "events", security(("bearer" = [])),
    responses(
        (status = 200, body = WebhookEndpointList),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller or storefront token", body = ErrorBody),
    ))]
async fn list_endpoints(
    auth: Auth,
    State(state): State<AppState>,
) -> Result<Json<WebhookEndpointList>, ApiError> {
    let (_, owner_id) = owner(&auth)?;
    let mut conn = state.pool.acquire().await?;
    let items = store::webhooks::list_for_owner(&mut conn, owner_id).await?;
    Ok(Json(WebhookEndpointList {
        items: items.into_iter().map(WebhookEndpoint::from).collect(),
    }))
}

/// Deletes one of the caller's endpoints; its pending deliveries are dropped.
#[utoipa::path(delete, path = "/webhook-endpoints/{id}", operation_id = "deleteWebhookEndpoint", tag = "events", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "malformed id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller or storefront token", body = ErrorBody),
        (status = 404, description = "no such endpoint of the caller", body = ErrorBody),
    ))]
async fn delete_endpoint(
    auth: Auth,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let (_, owner_id) = owner(&auth)?;
    let mut conn = state.pool.acquire().await?;
    if store::webhooks::delete(&mut conn, owner_id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestSent {
    /// The `webhook.test` event queued for the endpoint (its `webhook-id`).
    event_id: Uuid,
}

/// Queues a `webhook.test` event for this endpoint only.
#[utoipa::path(post, path = "/webhook-endpoints/{id}/test", operation_id = "testWebhookEndpoint", tag = "events", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 202, body = TestSent, description = "queued for delivery"),
        (status = 400, description = "malformed id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller or storefront token", body = ErrorBody),
        (status = 404, description = "no such endpoint of the caller", body = ErrorBody),
    ))]
async fn test_endpoint(
    auth: Auth,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, Json<TestSent>), ApiError> {
    let (role, owner_id) = owner(&auth)?;
    let mut tx = state.pool.begin().await?;
    let endpoint = store::webhooks::find_for_owner(&mut tx, owner_id, id)
        .await?
        .ok_or_else(not_found)?;
    let (seller, storefront) = match role {
        Role::Seller => (Some(owner_id), None),
        _ => (None, Some(owner_id)),
    };
    let data = serde_json::json!({ "endpointId": endpoint.id, "url": endpoint.url });
    let event_id = events::insert_test(&mut tx, seller, storefront, data).await?;
    store::webhooks::add_delivery(&mut tx, endpoint.id, event_id).await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(TestSent { event_id })))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    id: Uuid,
    event_id: Uuid,
    event_type: String,
    /// pending | delivered | failed
    status: String,
    attempts: i32,
    /// The HTTP status of the last attempt, if it got an answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_status: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_attempt_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPage {
    items: Vec<Delivery>,
    next_cursor: Option<String>,
}

/// The endpoint's delivery log, newest first.
#[utoipa::path(get, path = "/webhook-endpoints/{id}/deliveries", operation_id = "listWebhookDeliveries", tag = "events",
    security(("bearer" = [])),
    params(("id" = Uuid, Path), PageParams),
    responses(
        (status = 200, body = DeliveryPage),
        (status = 400, description = "malformed id, cursor or limit", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller or storefront token", body = ErrorBody),
        (status = 404, description = "no such endpoint of the caller", body = ErrorBody),
    ))]
async fn endpoint_deliveries(
    auth: Auth,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let (_, owner_id) = owner(&auth)?;
    let (limit, before) = page.checked()?;
    let mut conn = state.pool.acquire().await?;
    store::webhooks::find_for_owner(&mut conn, owner_id, id)
        .await?
        .ok_or_else(not_found)?;
    let mut rows = store::webhooks::deliveries(&mut conn, id, before, limit + 1).await?;
    let next_cursor = pagination::cut(&mut rows, limit, |d| After {
        created_at: d.created_at,
        id: d.id,
    });
    let items = rows
        .into_iter()
        .map(|d| Delivery {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            status: d.status,
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: d.last_error,
            created_at: d.created_at,
            last_attempt_at: d.last_attempt_at,
            delivered_at: d.delivered_at,
        })
        .collect();
    Ok(Json(DeliveryPage { items, next_cursor }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn documented_event_types_are_the_real_ones() {
        let doc: serde_json::Value =
            serde_json::from_str(&crate::openapi::document_json()).unwrap();
        let documented: Vec<&str> = doc["components"]["schemas"]["EventType"]["enum"]
            .as_array()
            .expect("EventType is documented as an enum")
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(documented, autokey_shared::store::events::TYPES);
    }
}
