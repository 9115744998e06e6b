//! Status vocabularies shared by the API and the worker (API.md's enum values).

pub mod key_status {
    pub const AVAILABLE: &str = "AVAILABLE";
    pub const RESERVED: &str = "RESERVED";
    pub const DELIVERED: &str = "DELIVERED";
    pub const INVALID: &str = "INVALID";
    pub const ALL: [&str; 4] = [AVAILABLE, RESERVED, DELIVERED, INVALID];
}

pub mod order_status {
    pub const PENDING: &str = "PENDING";
    pub const PAID: &str = "PAID";
    pub const FULFILLED: &str = "FULFILLED";
    pub const CANCELED: &str = "CANCELED";
    pub const ALL: [&str; 4] = [PENDING, PAID, FULFILLED, CANCELED];
}

/// Notification channel on which the worker announces a fulfilled order (payload: its id),
/// so `POST /orders/:id/fulfill?wait=` can long-poll without querying in a loop.
pub const ORDER_FULFILLED_CHANNEL: &str = "autokey_order_fulfilled";
