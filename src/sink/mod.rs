//! The sink service: a consumer group whose assigned partitions each get a worker that
//! batches, folds by document and writes to the target, committing offsets only after
//! the target acknowledged.

mod config;
pub mod fold;

pub use config::SinkConfig;
