//! An offer as API.md shows it: the stored row plus its live availability (the pool's
//! sellable keys for AUTO_KEY offers, the seller's stock for MANUAL ones).

use autokey_shared::{
    model::{DeliveryType, OfferStatus},
    store::{self, offers::OfferRow},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    InStock,
    OutOfStock,
}

/// An offer. `sellableCount`: units that can still be sold. For AUTO_KEY, the pool's keys
/// (AVAILABLE keys minus units paid for and not yet delivered, never below 0); for
/// MANUAL, `stockCount` minus the units of its open (PENDING or PAID) orders, never below
/// 0 (`stockCount` drops as the seller delivers; an unpaid order holds its units until the
/// worker's `MANUAL_ORDER_HOLD_MINUTES` run out). `autoKeyAvailableCount` is the same
/// number. `availability` is `in_stock` when it is > 0.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Offer {
    id: Uuid,
    seller_id: Uuid,
    title: String,
    price_cents: i64,
    currency: String,
    delivery_type: DeliveryType,
    key_pool_id: Option<Uuid>,
    /// The seller's declared stock of a MANUAL offer.
    stock_count: Option<i32>,
    status: OfferStatus,
    availability: Availability,
    auto_key_available_count: i64,
    sellable_count: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// The offer as shown, given its sellable count (the pool's for AUTO_KEY offers, the
/// stock's for MANUAL ones; None: 0).
pub(super) fn view(row: OfferRow, sellable: Option<i64>) -> Offer {
    let count = sellable.unwrap_or(0);
    Offer {
        id: row.id,
        seller_id: row.seller_id,
        delivery_type: row.delivery_type,
        status: row.status,
        availability: if count > 0 {
            Availability::InStock
        } else {
            Availability::OutOfStock
        },
        auto_key_available_count: count,
        sellable_count: count,
        title: row.title,
        price_cents: row.price_cents,
        currency: row.currency,
        key_pool_id: row.key_pool_id,
        stock_count: row.stock_count,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

/// Adds live availability to one offer row.
pub(super) async fn present(conn: &mut PgConnection, row: OfferRow) -> Result<Offer, ApiError> {
    let sellable = match (row.delivery_type, row.key_pool_id) {
        (DeliveryType::AutoKey, Some(pool_id)) => {
            Some(store::pools::sellable(conn, pool_id).await?)
        }
        (DeliveryType::Manual, _) => store::offers::manual_sellable_many(conn, &[row.id])
            .await?
            .get(&row.id)
            .copied(),
        _ => None,
    };
    Ok(view(row, sellable))
}
