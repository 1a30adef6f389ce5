//! What a reader's read side (the copy's cursor or the change stream, with the encoder)
//! hands its pump: records to produce, dead letters, idle tokens, clear markers, metadata, and how
//! reading ended. Shared by `reader`, `copy`, `stream` and `encode`.

use std::sync::Arc;

use bson::{Bson, Timestamp};

use super::errors::ReaderError;
use super::route::Route;

/// One message for the producer side of the reader.
pub(super) enum Outgoing {
    /// Records for one change event (the event or its parts, and a tombstone after a
    /// delete), all to the route's topic. `token` covers the event once every record is
    /// acknowledged.
    Event { route: Arc<Route>, records: Vec<Record>, token: Option<Bson>, event_time: Option<Timestamp> },
    /// An event that cannot be carried on the topic: its key and the reason go to the
    /// dead-letter topic.
    DeadLetter { route: Arc<Route>, key: Vec<u8>, reason: String, token: Option<Bson>, event_time: Option<Timestamp> },
    /// The stream's post-batch resume token: covers everything read so far.
    Idle(Bson),
    /// The collection was dropped or renamed and `source.ddl = "replicate"`: clear
    /// markers to every partition of its topic; `token` covers the DDL event once they are
    /// delivered.
    Clear { route: Arc<Route>, reason: String, token: Option<Bson> },
    /// The collection's metadata may have changed, or was never sent (a database stream's
    /// first event of a collection): its current metadata is sent, if it changed, before
    /// what follows; `token` covers the event that said so.
    Metadata { route: Arc<Route>, token: Option<Bson> },
    /// The read side finished (copy done, stream invalidated) or failed.
    Done(Result<ReadEnd, ReaderError>),
}

/// One Kafka record of an event.
pub(super) struct Record {
    pub(super) key: Vec<u8>,
    /// `None`: a tombstone.
    pub(super) value: Option<Vec<u8>>,
    /// `"<index>/<count>"` when the value is one part of a larger event (`crate::parts`).
    pub(super) part: Option<String>,
}

#[derive(Debug)]
pub(super) enum ReadEnd {
    CopyDone,
    Invalidated(Option<Timestamp>),
    /// A slim stream read past its large event: reopen the full one from the saved position.
    Reopen,
    /// A database stream saw a collection renamed into its scope: that collection's
    /// documents never appeared as events, so it is copied before the stream goes on.
    CopyRenamed(String),
}
