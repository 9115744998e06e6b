//! autokey's common crate: configuration, the key vault, tokens, database access and
//! the job definitions shared by the HTTP front (`autokey-api`) and the worker.

pub mod availability;
pub mod config;
pub mod db;
pub mod jobs;
pub mod model;
pub mod telemetry;
pub mod tokens;
pub mod vault;
