//! autokey's domain core, shared by the HTTP front (`autokey-api`) and the worker: the
//! vocabularies ([`model`]), the store of every table ([`store`]), the one module that
//! moves keys and orders between statuses ([`transitions`]), the job queue ([`jobs`]),
//! the key vault, configuration and database plumbing. See ARCHITECTURE.md.

pub mod announce;
pub mod config;
pub mod db;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod outbound;
pub mod process;
pub mod rotation;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod transitions;
pub mod vault;
pub mod webhook_signature;
