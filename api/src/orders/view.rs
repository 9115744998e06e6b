//! The Order as API.md shows it.

use autokey_shared::{model::OrderStatus, store::orders::OrderRow};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub id: Uuid,
    pub buyer_id: Uuid,
    /// The storefront that placed the order; null for an order placed with a buyer token.
    pub storefront_id: Option<Uuid>,
    pub offer_id: Uuid,
    pub quantity: i32,
    pub amount_cents: i64,
    pub currency: String,
    pub status: OrderStatus,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fulfilled_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canceled_at: Option<DateTime<Utc>>,
    /// When a FULFILLED order was refunded (it stays FULFILLED; keys it had never revealed
    /// went back to the pool and are no longer shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refunded_at: Option<DateTime<Utc>>,
    /// Plaintext keys: only when FULFILLED, only to the buyer or a storefront.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<DeliveredKey>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveredKey {
    pub id: Uuid,
    pub key: String,
    /// The first time this key's plaintext left autokey (this read, when it is the
    /// first). A refund returns a key never revealed to the pool; a revealed one becomes
    /// INVALID.
    pub revealed_at: DateTime<Utc>,
    /// This key was reported and replaced (it is INVALID now) by this key of the order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<Uuid>,
    /// This key replaced that one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<Uuid>,
}

impl Order {
    pub fn from_row(row: OrderRow, keys: Option<Vec<DeliveredKey>>) -> Self {
        Self {
            id: row.id,
            buyer_id: row.buyer_id,
            storefront_id: row.storefront_id,
            offer_id: row.offer_id,
            quantity: row.quantity,
            amount_cents: row.amount_cents,
            currency: row.currency,
            status: row.status,
            created_at: row.created_at,
            paid_at: row.paid_at,
            fulfilled_at: row.fulfilled_at,
            canceled_at: row.canceled_at,
            refunded_at: row.refunded_at,
            keys,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderPage {
    pub items: Vec<Order>,
    pub next_cursor: Option<String>,
}
