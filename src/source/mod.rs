//! The source service: one reader task per collection turns an initial copy and then a
//! change stream into Debezium events on the collection's topic, saving resume tokens
//! only after Kafka acknowledged everything before them.

mod config;

pub use config::{DdlPolicy, HistoryLostPolicy, OversizePolicy, SourceConfig, StateStoreConfig};
