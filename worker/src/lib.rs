//! autokey's worker: fulfills paid orders (apalis on PostgreSQL), serves backorders when
//! keys arrive, and keeps the job tables tidy.

pub mod batch;
pub mod cli;
pub mod fast_lane;
pub mod fulfillment;
pub mod maintenance;
pub mod metrics;
pub mod reencrypt;
pub mod replenish;
pub mod runner;
mod tasks;
pub mod webhooks;

pub use runner::{WorkerConfig, run};
