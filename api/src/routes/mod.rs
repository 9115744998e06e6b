//! HTTP routes, one module per resource.

pub mod admin;
pub mod audit;
pub mod console;
pub mod console_login;
pub mod events;
pub mod health;
pub mod key_reports;
pub mod keys;
pub mod me;
pub mod metrics;
pub mod offer_view;
pub mod offers;
pub mod orders;
pub mod payments;
pub mod pools;
pub mod seller_orders;
pub mod upload;
pub mod webhook_endpoints;
