//! Bearer-token authentication: the `Auth` extractor yields the caller's principal or
//! rejects with 401 JSON.

pub mod cache;
pub mod credentials;
pub mod oidc;

use autokey_shared::{
    model::Role,
    store::{audit::Actor, orders::Viewer, tokens::Principal},
};
use axum::{extract::FromRequestParts, http::request::Parts};
use uuid::Uuid;

use crate::{
    error::ApiError,
    limits::rate::{Checked, Refused},
    state::AppState,
};

pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The rate limiter already authenticated this request's credentials.
        let principal = match parts.extensions.get::<Checked>() {
            Some(Checked(checked)) => *checked,
            None => credentials::authenticate(state, &parts.headers)
                .await?
                .map(|(p, _)| p),
        };
        if let Some(principal) = principal {
            return Ok(Auth(principal));
        }
        if let Some(Refused(why)) = parts.extensions.get::<Refused>() {
            return Err(ApiError::InvalidToken(why.clone()));
        }
        match bearer(&parts.headers) {
            Some(_) => Err(ApiError::InvalidToken(
                "the token is unknown, revoked or expired".into(),
            )),
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// The bearer token of an `Authorization` header, if there is one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
}

fn forbidden(what: &str) -> ApiError {
    ApiError::Forbidden(format!("this route is for {what} tokens"))
}

impl Auth {
    /// The seller id of a seller token; 403 for any other role.
    pub fn seller(&self) -> Result<Uuid, ApiError> {
        match (self.0.role, self.0.subject) {
            (Role::Seller, Some(id)) => Ok(id),
            _ => Err(forbidden("seller")),
        }
    }

    /// An admin token; 403 for any other role.
    pub fn admin(&self) -> Result<(), ApiError> {
        match self.0.role {
            Role::Admin => Ok(()),
            _ => Err(forbidden("admin")),
        }
    }

    /// Buyer or storefront: who may order, pay and read orders.
    pub fn buyer_side(&self) -> Result<BuyerSide, ApiError> {
        match (self.0.role, self.0.subject) {
            (Role::Buyer, Some(id)) => Ok(BuyerSide::Buyer(id)),
            (Role::Storefront, Some(id)) => Ok(BuyerSide::Storefront(id)),
            _ => Err(forbidden("buyer or storefront")),
        }
    }

    pub fn role(&self) -> Role {
        self.0.role
    }

    pub fn subject(&self) -> Option<Uuid> {
        self.0.subject
    }

    /// Who acts, for the audit log.
    pub fn actor(&self) -> Actor {
        Actor {
            role: self.0.role,
            subject: self.0.subject,
            token_id: Some(self.0.token_id),
        }
    }
}

/// A buyer acts for itself; a storefront (its id) for any customer it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuyerSide {
    Buyer(Uuid),
    Storefront(Uuid),
}

impl BuyerSide {
    /// The buyer a request acts for: a buyer itself (it may repeat its own id), a
    /// storefront the customer it names (required).
    pub fn buyer_id(&self, given: Option<Uuid>) -> Result<Uuid, ApiError> {
        match (self, given) {
            (BuyerSide::Buyer(me), None) => Ok(*me),
            (BuyerSide::Buyer(me), Some(id)) if id == *me => Ok(*me),
            (BuyerSide::Buyer(_), Some(_)) => {
                Err(ApiError::validation("buyerId must be your own id"))
            }
            (BuyerSide::Storefront(_), Some(id)) => Ok(id),
            (BuyerSide::Storefront(_), None) => Err(ApiError::validation(
                "buyerId is required for storefront tokens",
            )),
        }
    }

    /// Whose orders this caller may see and act on.
    pub fn viewer(&self) -> Viewer {
        match self {
            BuyerSide::Buyer(id) => Viewer::Buyer(*id),
            BuyerSide::Storefront(id) => Viewer::Storefront(*id),
        }
    }

    /// The storefront placing or listing orders, None for a buyer.
    pub fn storefront(&self) -> Option<Uuid> {
        match self {
            BuyerSide::Buyer(_) => None,
            BuyerSide::Storefront(id) => Some(*id),
        }
    }
}
