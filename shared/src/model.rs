//! The vocabularies of API.md as types: key, order and offer statuses, delivery types and
//! token roles. Each maps to its database text through one mechanism ([`text_enum!`]):
//! the same spelling in SQL, JSON and Rust, and an unknown value read from the database
//! is a decode error, never a silent default.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Declares a `Copy` enum whose variants are stored as fixed texts: `as_str`, `ALL`,
/// `FromStr`, `Display`, and sqlx's `Type`/`Encode`/`Decode` (and arrays) for PostgreSQL
/// `text` columns.
macro_rules! text_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = crate::model::UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(crate::model::UnknownValue {
                        kind: stringify!($name),
                        value: other.chars().take(64).collect(),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<'r, sqlx::Postgres>>::decode(value)?;
                Ok(text.parse::<$name>()?)
            }
        }
    };
}

/// A text read from the database or a request that names no variant of `kind`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
}

text_enum! {
    /// Where a key is in its life: AVAILABLE -> RESERVED (held for a paid order) ->
    /// DELIVERED; AVAILABLE -> INVALID (withdrawn by its seller).
    #[derive(Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "UPPERCASE")]
    pub enum KeyStatus {
        Available = "AVAILABLE",
        Reserved = "RESERVED",
        Delivered = "DELIVERED",
        Invalid = "INVALID",
    }
}

text_enum! {
    /// PENDING -> PAID -> FULFILLED; PENDING or PAID -> CANCELED.
    #[derive(Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "UPPERCASE")]
    pub enum OrderStatus {
        Pending = "PENDING",
        Paid = "PAID",
        Fulfilled = "FULFILLED",
        Canceled = "CANCELED",
    }
}

text_enum! {
    #[derive(Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum OfferStatus {
        Draft = "draft",
        Active = "active",
        Inactive = "inactive",
    }
}

text_enum! {
    /// A key report: open -> approved (the key INVALID, a replacement delivered or
    /// waiting for stock) or rejected; open or waiting -> canceled by a refund.
    #[derive(Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum ReportStatus {
        Open = "open",
        Approved = "approved",
        Rejected = "rejected",
        /// Closed without a decision on the key: its order was refunded first.
        Canceled = "canceled",
    }
}

text_enum! {
    #[derive(Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    pub enum DeliveryType {
        AutoKey = "AUTO_KEY",
        Manual = "MANUAL",
    }
}

text_enum! {
    /// Who a token acts as.
    #[derive(Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum Role {
        Seller = "seller",
        Buyer = "buyer",
        Storefront = "storefront",
        Admin = "admin",
    }
}

impl Role {
    /// Sellers, buyers and storefronts act as one subject (their id); admin tokens do not.
    pub fn has_subject(self) -> bool {
        matches!(self, Role::Seller | Role::Buyer | Role::Storefront)
    }
}

/// Notification channel on which the worker announces a fulfilled order (payload: its id),
/// so `POST /orders/:id/fulfill?wait=` can long-poll without querying in a loop.
pub const ORDER_FULFILLED_CHANNEL: &str = "autokey_order_fulfilled";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_round_trip_and_unknown_values_are_errors() {
        for s in KeyStatus::ALL {
            assert_eq!(s.as_str().parse::<KeyStatus>().unwrap(), *s);
        }
        for s in OrderStatus::ALL {
            assert_eq!(s.to_string().parse::<OrderStatus>().unwrap(), *s);
        }
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), *r);
        }
        let err = "paid".parse::<OrderStatus>().unwrap_err();
        assert_eq!(err.kind, "OrderStatus");
        assert!("root".parse::<Role>().is_err());
        assert!("AUTO-KEY".parse::<DeliveryType>().is_err());
    }

    #[test]
    fn json_spelling_is_the_database_spelling() {
        assert_eq!(
            serde_json::to_string(&DeliveryType::AutoKey).unwrap(),
            "\"AUTO_KEY\""
        );
        assert_eq!(
            serde_json::to_string(&OfferStatus::Inactive).unwrap(),
            "\"inactive\""
        );
        assert_eq!(
            serde_json::to_string(&KeyStatus::Reserved).unwrap(),
            "\"RESERVED\""
        );
        assert_eq!(
            serde_json::to_string(&Role::Storefront).unwrap(),
            "\"storefront\""
        );
    }
}
