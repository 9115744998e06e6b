pub mod footprint;
pub mod fulfill;
pub mod ingest;
pub mod intake;
pub mod latency;
pub mod limit;
