//! What a reader's read side (the copy's cursor or the change stream, with the encoder)
//! hands its pump: records to produce, dead letters, idle tokens, clear markers, and how
//! reading ended. Shared by `reader`, `copy`, `stream` and `encode`.

use bson::{Bson, Timestamp};

use super::errors::ReaderError;

/// One message for the producer side of the reader.
pub(super) enum Outgoing {
    /// Records for one change event (the event, and a tombstone after a delete), all to
    /// `topic`. `token` covers the event once every record is acknowledged.
    Event { records: Vec<(Vec<u8>, Option<Vec<u8>>)>, token: Option<Bson>, event_time: Option<Timestamp> },
    /// An event too large for the topic: its key and the reason go to the dead-letter topic.
    DeadLetter { key: Vec<u8>, reason: String, token: Option<Bson>, event_time: Option<Timestamp> },
    /// The stream's post-batch resume token: covers everything read so far.
    Idle(Bson),
    /// The collection was dropped or renamed and `source.ddl = "replicate"`: clear
    /// markers to every partition; `token` covers the DDL event once they are delivered.
    Clear { reason: String, token: Option<Bson> },
    /// The read side finished (copy done, stream invalidated) or failed.
    Done(Result<ReadEnd, ReaderError>),
}

#[derive(Debug)]
pub(super) enum ReadEnd {
    CopyDone,
    Invalidated(Option<Timestamp>),
    /// A slim stream read past its large event: reopen the full one from the saved position.
    Reopen,
}
