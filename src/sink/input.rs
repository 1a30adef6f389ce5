//! A batch's messages as the worker applies them: each message as read, except that the
//! parts of an event too large for one message (`crate::parts`) become that one event,
//! placed where its last part was, and carrying the offset of its first.

use std::borrow::Cow;

use rdkafka::message::Message;
use tracing::warn;

use crate::metrics as m;
use crate::parts::{self, Fed, Joiner};

/// One input of a batch.
pub struct Input<'a> {
    pub key: Option<Cow<'a, [u8]>>,
    pub value: Option<Cow<'a, [u8]>>,
    /// The message's offset (a joined event's: its first part's).
    pub offset: i64,
    /// When the source produced it (the message's create time, ms since the epoch).
    pub produced_ms: Option<i64>,
    /// Known to be unusable before decoding (a broken part, or one whose earlier parts
    /// never came): it goes to the dead-letter topic with this reason.
    pub refused: Option<String>,
}

/// The inputs of `batch`, joining parts with the partition's `joiner` (which keeps an
/// event's earlier parts from batch to batch).
pub fn inputs<'a, M: Message>(batch: &'a [M], joiner: &mut Joiner, topic: &str, partition: i32) -> Vec<Input<'a>> {
    let mut out = Vec::with_capacity(batch.len());
    for msg in batch {
        let produced_ms = msg.timestamp().to_millis();
        let borrowed = |refused| Input { key: msg.key().map(Cow::Borrowed), value: msg.payload().map(Cow::Borrowed), offset: msg.offset(), produced_ms, refused };
        let Some(part) = msg.payload().and_then(parts::parse) else {
            if let Some(u) = joiner.interrupt() {
                unfinished(u);
            }
            out.push(borrowed(None));
            continue;
        };
        let part = match part {
            Ok(p) => p,
            Err(reason) => {
                if let Some(u) = joiner.interrupt() {
                unfinished(u);
            }
                out.push(borrowed(Some(reason)));
                continue;
            }
        };
        let (ended, fed) = joiner.feed(part, msg.offset());
        if let Some(u) = ended {
            unfinished(u);
        }
        match fed {
            Fed::Waiting => {}
            Fed::Stray(reason) => out.push(borrowed(Some(reason))),
            Fed::Whole { value, first_offset } => {
                metrics::counter!(m::SINK_EVENTS_JOINED, "topic" => topic.to_string(), "partition" => partition.to_string()).increment(1);
                out.push(Input { key: msg.key().map(Cow::Borrowed), value: Some(Cow::Owned(value)), offset: first_offset, produced_ms, refused: None });
            }
        }
    }
    out
}

/// Nothing to apply: the source sends the event again (see `crate::parts`).
fn unfinished(u: parts::Unfinished) {
    warn!(offset = u.first_offset, reason = %u.reason, "an event's parts stopped coming; waiting for it to be sent again");
}
