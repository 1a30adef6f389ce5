//! A batch's messages as the worker applies them: each message as read, except that a
//! late sending of an earlier run of a reader is left out (`crate::fence`), and the parts
//! of an event too large for one message (`crate::parts`) become that one event, placed
//! where its last part was, and carrying the offset of its first.

use std::borrow::Cow;

use rdkafka::message::Message;
use tracing::warn;

use crate::fence::{self, Fence, Verdict};
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

/// The inputs of `batch`, judged by the partition's `fence` and joining parts with its
/// `joiner` (both keep what they learnt from batch to batch).
pub fn inputs<'a, M: Message>(batch: &'a [M], fence: &mut Fence, joiner: &mut Joiner, topic: &str, partition: i32) -> Vec<Input<'a>> {
    let mut out = Vec::with_capacity(batch.len());
    let mut stale = Stale::default();
    for msg in batch {
        if let Some((writer, generation)) = fence::stamp_of(msg) {
            if let Verdict::Stale { newer } = fence.admit(writer, generation, msg.offset()) {
                stale.add(writer, generation, newer, msg.offset());
                continue;
            }
        }
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
    stale.report(topic, partition);
    out
}

/// The stale messages of one batch, reported once.
#[derive(Default)]
struct Stale {
    count: u64,
    /// The first one: writer, its generation, the newer one, offset.
    first: Option<(String, i64, i64, i64)>,
}

impl Stale {
    fn add(&mut self, writer: &str, generation: i64, newer: i64, offset: i64) {
        self.count += 1;
        self.first.get_or_insert_with(|| (writer.to_string(), generation, newer, offset));
    }

    /// Counted, and logged: nothing is left out without a trace. The newer run sent these
    /// changes again, after them, so the target loses nothing.
    fn report(self, topic: &str, partition: i32) {
        let Some((writer, generation, newer, offset)) = self.first else { return };
        metrics::counter!(m::SINK_STALE_SKIPPED, "topic" => topic.to_string(), "partition" => partition.to_string()).increment(self.count);
        warn!(
            topic,
            partition,
            offset,
            count = self.count,
            %writer,
            generation,
            newer,
            "left out messages of an earlier run of a source reader that reached the broker after a later run's (a late sending; the later run sent the same changes again)"
        );
    }
}

/// Nothing to apply: the source sends the event again (see `crate::parts`).
fn unfinished(u: parts::Unfinished) {
    warn!(offset = u.first_offset, reason = %u.reason, "an event's parts stopped coming; waiting for it to be sent again");
}
