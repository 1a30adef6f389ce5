//! docrepl: a cross-region replicator for MongoDB-compatible databases through Kafka.
//!
//! The source side (`source`) turns change streams into Debezium MongoDB events; the sink
//! side (`sink`) applies them to the target. `main.rs` is a thin CLI over this library.

pub mod bson_order;
pub mod cli;
pub mod config;
pub mod cutover;
pub mod debezium;
pub mod direction;
pub mod event;
pub mod extjson;
pub mod fence;
pub mod flavor;
pub mod health;
pub mod http;
pub mod kafka;
pub mod link;
pub mod loadgen;
pub mod metadata;
pub mod logging;
pub mod metrics;
pub mod mongo;
pub mod pacer;
pub mod parts;
pub mod redact;
pub mod repair;
pub mod secrets;
pub mod sink;
pub mod source;
pub mod status;
pub mod status_cli;
pub mod verify;
