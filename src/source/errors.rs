//! Why a reader stops, and how a change-stream failure is read from the server's answer.
//! MongoDB and Amazon DocumentDB report the same situations with different codes (lost
//! history: 286/280 on MongoDB, 136 on DocumentDB, which also answers 136 when change
//! streams were never enabled for the collection; an expired token: code 9 "Invalid
//! resume token" on DocumentDB), so `classify` takes the flavour. Pure: unit-tested.

use crate::flavor::Flavor;

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("change stream history lost for {ns}: the saved position (cluster time {token_time}, {age}) is no longer in the source's change stream history, so changes after it cannot be read. Set source.on_history_lost = \"recopy\" to start a fresh initial copy, or clear the checkpoint. Server said: {message}")]
    HistoryLost { ns: String, token_time: String, age: String, message: String },
    #[error("change streams are not enabled for {ns} on the source (Amazon DocumentDB enables them per collection or database). Run, as a user with the modifyChangeStreams privilege: db.adminCommand({{modifyChangeStreams: 1, database: \"{db}\", collection: \"{coll}\", enable: true}}) (collection: \"\" for the whole database), then restart docrepl. Server said: {message}")]
    NotEnabled { ns: String, db: String, coll: String, message: String },
    #[error("the initial copy of {ns} outran the source's change stream history: the copy started at cluster time {copy_time} and, by the time it finished, that time was no longer in the history, so the changes made during the copy cannot be read (a fresh copy would end the same way). Raise the history retention (DocumentDB: the cluster parameter change_stream_log_retention_duration, up to 7 days; MongoDB: a larger oplog, replSetResizeOplog) so that it covers a whole copy, or copy faster (source.copy_batch_size, fewer collections at once). Server said: {message}")]
    CopyOutranHistory { ns: String, copy_time: String, message: String },
    #[error("the source refused docrepl's change-stream pipeline for {ns} even in its Amazon DocumentDB form ({pipeline}); this server supports neither. Server said: {message}")]
    PipelineRefused { ns: String, pipeline: String, message: String },
    #[error("an event of {ns} is over the server's 16 MB limit even without its updateDescription (the document itself is too large for a change event), so the change stream cannot move past it. Shrink that document on the source. Server said: {message}")]
    EventTooLarge { ns: String, message: String },
    #[error("an {reason}, so it cannot travel on the topic; fix the document on the source, or set source.on_oversize = \"dead_letter\" to send its key and this reason to the dead-letter topic and go on")]
    CannotCarry { reason: String },
    #[error("the broker refused messages of {ns} as too large even at {bytes} bytes; set kafka.max_message_bytes to at most the topic's max.message.bytes (and the broker's message.max.bytes). Broker said: {message}")]
    BrokerRefusesSize { ns: String, bytes: usize, message: String },
    #[error("Kafka did not acknowledge an event of {ns}: {message}; restarting from the last saved resume token")]
    Delivery { ns: String, message: String },
    #[error("source cluster error on {ns}: {source}")]
    Mongo { ns: String, source: mongodb::error::Error },
    #[error("cannot save the checkpoint of {ns}: {source}")]
    Checkpoint { ns: String, source: mongodb::error::Error },
    /// Another instance holds the collection now (its checkpoint has a newer lease epoch).
    #[error("{0}")]
    Superseded(String),
    #[error("cannot encode an event of {ns}: {message}")]
    Encode { ns: String, message: String },
    #[error("{ns} is a {kind} and cannot be replicated: {why}. Leave it out with source.exclude = [\"{ns}\"] (or leave it out of source.collections)")]
    CannotReplicate { ns: String, kind: String, why: String },
}

impl ReaderError {
    /// Errors a restart cannot fix: the service stops loudly.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ReaderError::HistoryLost { .. }
                | ReaderError::NotEnabled { .. }
                | ReaderError::CopyOutranHistory { .. }
                | ReaderError::PipelineRefused { .. }
                | ReaderError::EventTooLarge { .. }
                | ReaderError::CannotCarry { .. }
                | ReaderError::BrokerRefusesSize { .. }
                | ReaderError::CannotReplicate { .. }
        )
    }

    pub(super) fn from_checkpoint(ns: &str, e: super::checkpoint::CheckpointError) -> Self {
        match e {
            super::checkpoint::CheckpointError::Mongo(source) => ReaderError::Checkpoint { ns: ns.to_string(), source },
            superseded => ReaderError::Superseded(superseded.to_string()),
        }
    }
}

/// What a failed change-stream open or read means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFailure {
    /// The position is older than the history the server keeps (or, on DocumentDB, a
    /// token it no longer accepts).
    HistoryLost,
    /// DocumentDB: change streams are not enabled for the collection.
    NotEnabled,
    /// DocumentDB's code 136 without a telling message: lost history or not enabled. A
    /// fresh stream opened on the collection tells which.
    LostOrNotEnabled,
    /// A stage, operator or variable of the pipeline is not supported by this server.
    UnsupportedPipeline,
    /// One event is over the 16 MB BSON limit.
    EventTooLarge,
    Other,
}

/// Reads a server error (its code, when it has one, and its message).
pub fn classify(code: Option<i32>, message: &str, flavor: Flavor) -> StreamFailure {
    let text = message.to_ascii_lowercase();
    let not_enabled = text.contains("not enabled") || text.contains("modifychangestreams");
    match code {
        Some(286 | 280) => StreamFailure::HistoryLost,
        Some(136) if flavor.is_documentdb() && not_enabled => StreamFailure::NotEnabled,
        Some(136) if flavor.is_documentdb() => StreamFailure::LostOrNotEnabled,
        // MongoDB's CappedPositionLost: the oplog rolled over under the stream.
        Some(136) => StreamFailure::HistoryLost,
        // DocumentDB answers an expired or unknown token with "Invalid resume token".
        Some(9) if flavor.is_documentdb() || text.contains("resume token") => StreamFailure::HistoryLost,
        // Unrecognized pipeline stage, invalid pipeline operator, command or feature not
        // supported, not implemented.
        Some(40324 | 168 | 31325 | 115 | 238) => StreamFailure::UnsupportedPipeline,
        Some(10334) => StreamFailure::EventTooLarge,
        _ if not_enabled && flavor.is_documentdb() => StreamFailure::NotEnabled,
        _ if text.contains("changestreamhistorylost")
            || text.contains("resume point may no longer be in the oplog")
            || text.contains("no longer in the change stream log") =>
        {
            StreamFailure::HistoryLost
        }
        _ if text.contains("bsonobjecttoolarge") || text.contains("bson size") && text.contains("exceeds") => StreamFailure::EventTooLarge,
        _ if text.contains("not supported") || text.contains("unsupported") || text.contains("unrecognized pipeline stage") || text.contains("unrecognized expression") => {
            StreamFailure::UnsupportedPipeline
        }
        _ => StreamFailure::Other,
    }
}

/// `classify` for a driver error.
pub fn classify_error(e: &mongodb::error::Error, flavor: Flavor) -> StreamFailure {
    let code = match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        _ => None,
    };
    classify(code, &e.to_string(), flavor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Flavor::{DocumentDb, MongoDb};

    #[test]
    fn mongodb_codes() {
        assert_eq!(classify(Some(286), "ChangeStreamHistoryLost", MongoDb), StreamFailure::HistoryLost);
        assert_eq!(classify(Some(280), "x", MongoDb), StreamFailure::HistoryLost);
        assert_eq!(classify(Some(136), "CappedPositionLost", MongoDb), StreamFailure::HistoryLost);
        assert_eq!(classify(Some(40324), "Unrecognized pipeline stage name: '$set'", MongoDb), StreamFailure::UnsupportedPipeline);
        assert_eq!(classify(Some(168), "Unrecognized expression '$bsonSize'", MongoDb), StreamFailure::UnsupportedPipeline);
        assert_eq!(classify(Some(10334), "BSONObjectTooLarge", MongoDb), StreamFailure::EventTooLarge);
        // A parse error of another kind is not a lost token on MongoDB.
        assert_eq!(classify(Some(9), "FailedToParse: bad option", MongoDb), StreamFailure::Other);
        assert_eq!(classify(Some(6), "host unreachable", MongoDb), StreamFailure::Other);
    }

    #[test]
    fn documentdb_codes() {
        assert_eq!(classify(Some(136), "Change streams are not enabled for this collection", DocumentDb), StreamFailure::NotEnabled);
        assert_eq!(classify(Some(136), "Failing command via 'failCommand' failpoint", DocumentDb), StreamFailure::LostOrNotEnabled);
        assert_eq!(classify(Some(9), "Invalid resume token", DocumentDb), StreamFailure::HistoryLost);
        assert_eq!(classify(Some(304), "Aggregation stage not supported: '$set'", DocumentDb), StreamFailure::UnsupportedPipeline);
        assert_eq!(classify(None, "Feature not supported: $bsonSize", DocumentDb), StreamFailure::UnsupportedPipeline);
    }
}
