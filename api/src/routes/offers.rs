//! Offers: what a seller sells, at what price, delivered from which key pool, with live
//! availability computed from the pool's counters.

use autokey_shared::{
    model::{DeliveryType, OfferStatus, Role},
    store::{
        self,
        offers::{DraftFields, OfferRow},
    },
    text,
};
use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

pub use super::offer_view::Offer;
use super::offer_view::{present, view};
use crate::{
    auth::Auth,
    error::{ApiError, ConstraintExt, ErrorBody},
    extract::{Json, Path, Query, int},
    pagination::{self, PageParams},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(save_draft))
        .routes(routes!(publish))
        .routes(routes!(set_status))
        .routes(routes!(seller_offers))
        .routes(routes!(get_offer))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(example = json!({"title": "Space Game (Steam key)", "priceCents": 1999, "currency": "EUR",
    "deliveryType": "AUTO_KEY", "keyPoolId": "0193a5e4-7b1c-7d2e-9f00-1a2b3c4d5e6f"}))]
pub struct Draft {
    /// The draft to update; omitted to create one.
    id: Option<Uuid>,
    #[schema(schema_with = crate::openapi::text::offer_title)]
    title: String,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "int::required")]
    price_cents: i64,
    #[schema(schema_with = crate::openapi::text::currency)]
    currency: String,
    delivery_type: DeliveryType,
    /// One of the seller's key pools; required to publish an AUTO_KEY offer.
    key_pool_id: Option<Uuid>,
    /// Declared stock of a MANUAL offer; not used by AUTO_KEY offers.
    #[schema(minimum = 0)]
    #[serde(default, deserialize_with = "int::optional")]
    stock_count: Option<i32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(example = json!({"offerId": "0193a5e4-7b1c-7d2e-9f00-1a2b3c4d5e70"}))]
pub struct Publish {
    offer_id: Uuid,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(example = json!({"status": "inactive"}))]
pub struct StatusChange {
    status: OfferStatus,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OfferList {
    items: Vec<Offer>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// Checks a draft's fields; returns the title as stored (trimmed).
async fn validate_draft(
    conn: &mut PgConnection,
    seller_id: Uuid,
    draft: &Draft,
) -> Result<String, ApiError> {
    let title = text::field("title", &draft.title, 200, false)
        .map_err(|e| ApiError::validation(e.to_string()))?;
    if !(0..=text::MAX_PRICE_CENTS).contains(&draft.price_cents) {
        return Err(ApiError::validation(format!(
            "priceCents must be between 0 and {}",
            text::MAX_PRICE_CENTS
        )));
    }
    if !text::is_currency(&draft.currency) {
        return Err(ApiError::validation(
            "currency must be an ISO 4217 code in upper case, such as EUR",
        ));
    }
    if draft.stock_count.is_some_and(|n| n < 0) {
        return Err(ApiError::validation("stockCount must be 0 or more"));
    }
    if let Some(pool_id) = draft.key_pool_id
        && !store::pools::owned_by(conn, seller_id, pool_id).await?
    {
        return Err(ApiError::validation(
            "keyPoolId must be one of your key pools",
        ));
    }
    Ok(title)
}

/// The seller's offer `id`, locked for update; another seller's is not found.
async fn lock_own(
    conn: &mut PgConnection,
    seller_id: Uuid,
    id: Uuid,
) -> Result<OfferRow, ApiError> {
    store::offers::lock_own(conn, seller_id, id)
        .await?
        .ok_or_else(ApiError::not_found)
}

/// What a draft's constraints mean (the checks above normally answer first).
fn draft_constraint(name: &str) -> Option<ApiError> {
    Some(match name {
        "offers_price_check" => ApiError::validation("priceCents must be 0 or more"),
        "offers_currency_check" => {
            ApiError::validation("currency must be a 3-letter ISO 4217 code")
        }
        "offers_stock_check" => ApiError::validation("stockCount must be 0 or more"),
        "offers_auto_key_needs_pool" => ApiError::validation("an AUTO_KEY offer needs a keyPoolId"),
        _ => return None,
    })
}

impl Draft {
    fn fields<'a>(&'a self, title: &'a str) -> DraftFields<'a> {
        DraftFields {
            title,
            price_cents: self.price_cents,
            currency: &self.currency,
            delivery_type: self.delivery_type,
            key_pool_id: self.key_pool_id,
            stock_count: self.stock_count,
        }
    }
}

/// An offer can go live only when it can deliver: AUTO_KEY needs a pool.
fn check_publishable(row: &OfferRow) -> Result<(), ApiError> {
    if row.delivery_type == DeliveryType::AutoKey && row.key_pool_id.is_none() {
        return Err(ApiError::validation(
            "an AUTO_KEY offer needs a keyPoolId before it is published",
        ));
    }
    Ok(())
}

/// Creates a draft offer (201), or replaces the fields of one of the caller's drafts
/// when `id` is given (200). Only drafts can be edited (409 otherwise).
#[utoipa::path(post, path = "/offers/draft", tag = "offers", operation_id = "saveDraft",
    security(("bearer" = [])),
    request_body = Draft,
    responses(
        (status = 201, description = "The draft, created.", body = Offer, links(
            ("getOffer" = (operation_id = "getOffer", parameters(("id" = "$response.body#/id")))),
            ("setOfferStatus" = (operation_id = "setOfferStatus", parameters(("id" = "$response.body#/id")))),
            ("publishOffer" = (operation_id = "publishOffer", request_body = json!({"offerId": "$response.body#/id"}))),
        )),
        (status = 200, description = "The draft, updated.", body = Offer, links(
            ("getOffer" = (operation_id = "getOffer", parameters(("id" = "$response.body#/id")))),
            ("setOfferStatus" = (operation_id = "setOfferStatus", parameters(("id" = "$response.body#/id")))),
            ("publishOffer" = (operation_id = "publishOffer", request_body = json!({"offerId": "$response.body#/id"}))),
        )),
        (status = 400, description = "invalid field, or keyPoolId not the caller's", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller token", body = ErrorBody),
        (status = 404, description = "no such offer of this seller", body = ErrorBody),
        (status = 409, description = "the offer is not a draft", body = ErrorBody),
    ))]
async fn save_draft(
    auth: Auth,
    State(state): State<AppState>,
    Json(draft): Json<Draft>,
) -> Result<(StatusCode, Json<Offer>), ApiError> {
    let seller_id = auth.seller()?;
    let mut tx = state.pool.begin().await?;
    let (status, row) = match draft.id {
        None => {
            let title = validate_draft(&mut tx, seller_id, &draft).await?;
            let row = store::offers::insert_draft(&mut tx, seller_id, &draft.fields(&title))
                .await
                .map_constraint(draft_constraint)?;
            (StatusCode::CREATED, row)
        }
        Some(id) => {
            let current = lock_own(&mut tx, seller_id, id).await?;
            if current.status != OfferStatus::Draft {
                return Err(ApiError::Conflict(
                    "only a draft can be edited; set the offer's status to draft first".into(),
                ));
            }
            let title = validate_draft(&mut tx, seller_id, &draft).await?;
            (
                StatusCode::OK,
                store::offers::update_draft(&mut tx, id, &draft.fields(&title))
                    .await
                    .map_constraint(draft_constraint)?,
            )
        }
    };
    let offer = present(&mut tx, row).await?;
    tx.commit().await?;
    Ok((status, Json(offer)))
}

/// Puts one of the caller's offers on sale (status `active`). Publishing an AUTO_KEY
/// offer whose pool holds no key is allowed: it is then out of stock.
#[utoipa::path(post, path = "/offers/publish", tag = "offers", operation_id = "publishOffer",
    security(("bearer" = [])),
    request_body = Publish,
    responses(
        (status = 200, body = Offer, description = "The offer, active."),
        (status = 400, description = "AUTO_KEY offer without keyPoolId, or invalid body", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller token", body = ErrorBody),
        (status = 404, description = "no such offer of this seller", body = ErrorBody),
    ))]
async fn publish(
    auth: Auth,
    State(state): State<AppState>,
    Json(body): Json<Publish>,
) -> Result<Json<Offer>, ApiError> {
    change_status(auth, state, body.offer_id, OfferStatus::Active).await
}

/// Sets the status of one of the caller's offers (`active` as with publish).
#[utoipa::path(patch, path = "/offers/{id}/status", tag = "offers", operation_id = "setOfferStatus",
    security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    request_body = StatusChange,
    responses(
        (status = 200, body = Offer, description = "The offer in its new status."),
        (status = 400, description = "AUTO_KEY offer without keyPoolId, or invalid body or id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller token", body = ErrorBody),
        (status = 404, description = "no such offer of this seller", body = ErrorBody),
    ))]
async fn set_status(
    auth: Auth,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<StatusChange>,
) -> Result<Json<Offer>, ApiError> {
    change_status(auth, state, id, body.status).await
}

async fn change_status(
    auth: Auth,
    state: AppState,
    id: Uuid,
    status: OfferStatus,
) -> Result<Json<Offer>, ApiError> {
    let seller_id = auth.seller()?;
    let mut tx = state.pool.begin().await?;
    let row = lock_own(&mut tx, seller_id, id).await?;
    if status == OfferStatus::Active {
        check_publishable(&row)?;
    }
    let row = if row.status == status {
        row
    } else {
        store::offers::set_status(&mut tx, id, status).await?
    };
    let offer = present(&mut tx, row).await?;
    tx.commit().await?;
    Ok(Json(offer))
}

/// The caller's offers, oldest first, in every status.
#[utoipa::path(get, path = "/seller/offers", tag = "offers", operation_id = "listSellerOffers",
    security(("bearer" = [])),
    params(PageParams),
    responses(
        (status = 200, body = OfferList, description = "A page of the caller's offers, oldest first."),
        (status = 400, description = "`validation_failed`: a bad limit or cursor.", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "not a seller token", body = ErrorBody),
    ))]
async fn seller_offers(
    auth: Auth,
    State(state): State<AppState>,
    Query(page): Query<PageParams>,
) -> Result<Json<OfferList>, ApiError> {
    let seller_id = auth.seller()?;
    let (limit, after) = page.checked()?;
    let mut conn = state.pool.acquire().await?;
    let mut rows = store::offers::page_for_seller(&mut conn, seller_id, after, limit + 1).await?;
    let next_cursor = pagination::cut(&mut rows, limit, |o| store::After {
        created_at: o.created_at,
        id: o.id,
    });
    let pools: Vec<Uuid> = rows
        .iter()
        .filter(|r| r.delivery_type == DeliveryType::AutoKey)
        .filter_map(|r| r.key_pool_id)
        .collect();
    let sellable = store::pools::sellable_many(&mut conn, &pools).await?;
    let manual: Vec<Uuid> = rows
        .iter()
        .filter(|r| r.delivery_type == DeliveryType::Manual)
        .map(|r| r.id)
        .collect();
    let manual = store::offers::manual_sellable_many(&mut conn, &manual).await?;
    let items = rows
        .into_iter()
        .map(|r| {
            let count = match r.delivery_type {
                DeliveryType::AutoKey => r.key_pool_id.and_then(|p| sellable.get(&p).copied()),
                DeliveryType::Manual => manual.get(&r.id).copied(),
            };
            view(r, count)
        })
        .collect();
    Ok(Json(OfferList { items, next_cursor }))
}

/// One offer, for any role. A draft or inactive offer is visible to its seller only.
#[utoipa::path(get, path = "/offers/{id}", tag = "offers", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Offer, description = "The offer with its live availability."),
        (status = 400, description = "malformed id", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "no such offer, or not active and not the caller's", body = ErrorBody),
    ))]
async fn get_offer(
    auth: Auth,
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Offer>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let row = store::offers::find(&mut conn, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let owner = auth.role() == Role::Seller && auth.subject() == Some(row.seller_id);
    if row.status != OfferStatus::Active && !owner {
        return Err(ApiError::not_found());
    }
    Ok(Json(present(&mut conn, row).await?))
}
