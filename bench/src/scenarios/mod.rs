pub mod drain;
pub mod footprint;
pub mod fulfill;
pub mod http;
pub mod ingest;
pub mod limit;
pub mod rotation;
pub mod steady;
