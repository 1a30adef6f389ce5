//! Every metric docrepl exports, named in one place (the README lists them too).
//! Labels: `collection` (`db.coll`) on the source side; `topic` and `partition` on the sink.

/// Counter: change events read from the source (initial copy and change streams).
pub const SOURCE_EVENTS_READ: &str = "docrepl_source_events_read_total";
/// Counter: events Kafka acknowledged.
pub const SOURCE_EVENTS_PUBLISHED: &str = "docrepl_source_events_published_total";
/// Counter: events that cannot be carried on the topic (not encodable, or too large even
/// in parts): sent to the dead-letter topic, or fatal.
pub const SOURCE_OVERSIZE: &str = "docrepl_source_oversize_events_total";
/// Counter: events over the topic's message limit, sent as several messages (parts).
pub const SOURCE_EVENTS_IN_PARTS: &str = "docrepl_source_events_in_parts_total";
/// Counter: drop / rename / dropDatabase / invalidate events seen.
pub const SOURCE_DDL_EVENTS: &str = "docrepl_source_ddl_events_total";
/// Counter: metadata messages (a collection's options and indexes) sent to its topic.
pub const SOURCE_METADATA_SENT: &str = "docrepl_source_metadata_sent_total";
/// Counter: checkpoints saved.
pub const SOURCE_CHECKPOINTS: &str = "docrepl_source_checkpoints_saved_total";
/// Gauge: seconds between now and the cluster time of the newest event read.
pub const SOURCE_LAG_SECONDS: &str = "docrepl_source_lag_seconds";
/// Gauge: seconds since the cluster time the saved resume token covers.
pub const SOURCE_TOKEN_AGE_SECONDS: &str = "docrepl_source_resume_token_age_seconds";
/// Gauge: seconds of change history the source keeps (oldest oplog entry's age, or
/// `source.history_retention_hours`): the limit for the resume-token age.
pub const SOURCE_HISTORY_WINDOW_SECONDS: &str = "docrepl_source_history_window_seconds";
/// Gauge: 1 while this instance holds the collection's lease and reads it.
pub const SOURCE_READER_ACTIVE: &str = "docrepl_source_reader_active";
/// Counter: reader restarts after an error.
pub const SOURCE_READER_RESTARTS: &str = "docrepl_source_reader_restarts_total";

/// Counter: messages consumed by the sink.
pub const SINK_MESSAGES: &str = "docrepl_sink_messages_total";
/// Counter: documents written (upserts + deletes + patches) to the target.
pub const SINK_DOCS_WRITTEN: &str = "docrepl_sink_docs_written_total";
/// Counter: events joined from several messages (parts).
pub const SINK_EVENTS_JOINED: &str = "docrepl_sink_events_joined_total";
/// Counter: messages left out as late sendings of an earlier run of a source reader
/// (see `crate::fence`; the later run sent the same changes again).
pub const SINK_STALE_SKIPPED: &str = "docrepl_sink_stale_messages_skipped_total";
/// Counter: messages sent to the dead-letter topic.
pub const SINK_DEAD_LETTERS: &str = "docrepl_sink_dead_letters_total";
/// Histogram: messages per batch.
pub const SINK_BATCH_SIZE: &str = "docrepl_sink_batch_size";
/// Histogram: seconds one batch write took (all its commands).
pub const SINK_WRITE_SECONDS: &str = "docrepl_sink_write_seconds";
/// Counter: write retries after transient errors.
pub const SINK_RETRIES: &str = "docrepl_sink_write_retries_total";
/// Gauge: documents of a partition's batch in a unique-index conflict, waiting for the
/// other partitions of the topic to catch up (0 when none).
pub const SINK_CONFLICTS_WAITING: &str = "docrepl_sink_conflicts_waiting";
/// Gauge: messages between the committed offset and the partition's high watermark.
pub const SINK_CONSUMER_LAG: &str = "docrepl_sink_consumer_lag_messages";
/// Counter: metadata messages applied to the target (options changed, indexes built or
/// dropped), by the collection's home partition.
pub const SINK_METADATA_APPLIED: &str = "docrepl_sink_metadata_applied_total";
/// Counter: metadata the target could not take (a difference fixed at creation, an
/// index the target refuses): dead-lettered with the reason, and drift in `verify`.
pub const SINK_METADATA_REFUSED: &str = "docrepl_sink_metadata_refused_total";
/// Gauge: seconds between now and the source cluster time of the newest applied event
/// (or heartbeat: an idle source's still moves).
pub const SINK_LAG_SECONDS: &str = "docrepl_sink_lag_seconds";
/// Gauge: of the last batch's newest change, seconds from the change on the source to its
/// message being produced (reading it).
pub const SINK_LAG_SOURCE_SECONDS: &str = "docrepl_sink_lag_source_seconds";
/// Gauge: seconds from produced to taken from the partition's queue by the sink (broker,
/// link, waiting behind earlier batches).
pub const SINK_LAG_TRANSPORT_SECONDS: &str = "docrepl_sink_lag_transport_seconds";
/// Gauge: seconds from taken to written to the target.
pub const SINK_LAG_APPLY_SECONDS: &str = "docrepl_sink_lag_apply_seconds";

/// Every name above, for `/metrics` tests and the README.
pub const ALL: &[&str] = &[
    SOURCE_EVENTS_READ,
    SOURCE_EVENTS_PUBLISHED,
    SOURCE_OVERSIZE,
    SOURCE_EVENTS_IN_PARTS,
    SOURCE_DDL_EVENTS,
    SOURCE_METADATA_SENT,
    SOURCE_CHECKPOINTS,
    SOURCE_LAG_SECONDS,
    SOURCE_TOKEN_AGE_SECONDS,
    SOURCE_HISTORY_WINDOW_SECONDS,
    SOURCE_READER_ACTIVE,
    SOURCE_READER_RESTARTS,
    SINK_MESSAGES,
    SINK_DOCS_WRITTEN,
    SINK_EVENTS_JOINED,
    SINK_STALE_SKIPPED,
    SINK_DEAD_LETTERS,
    SINK_BATCH_SIZE,
    SINK_WRITE_SECONDS,
    SINK_RETRIES,
    SINK_CONFLICTS_WAITING,
    SINK_CONSUMER_LAG,
    SINK_METADATA_APPLIED,
    SINK_METADATA_REFUSED,
    SINK_LAG_SECONDS,
    SINK_LAG_SOURCE_SECONDS,
    SINK_LAG_TRANSPORT_SECONDS,
    SINK_LAG_APPLY_SECONDS,
];

/// Seconds from a cluster time (seconds since the epoch) to now.
pub fn seconds_since(cluster_secs: u32) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    (now - cluster_secs as f64).max(0.0)
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
