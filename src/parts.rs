//! Events too large for one Kafka message travel as several (pure, no I/O).
//!
//! MongoDB documents go up to 16 MB, and their Extended JSON text is larger still, while
//! most Kafka installations (MSK included) keep a 1 MB message limit that is not the
//! user's to raise. An event value over the limit is cut into parts, sent one after the
//! other with the event's key (so to one partition, in order), each a small JSON object:
//!
//! `{"docrepl":{"part":{"event":"<id>","index":0,"count":3,"bytes":2500000}},"data":"<base64>"}`
//!
//! Joined, the `data` of parts `0..count` is the event's ordinary Debezium envelope. A
//! Debezium reader that does not know docrepl sees a value without `op` and skips it (or
//! filters on the `docrepl.part` header every part carries). The sink joins them with a
//! [`Joiner`] per partition, and never commits an offset past the first part of an event
//! it has not joined yet, so a restart reads the whole event again. A source that stops
//! while sending an event's parts saves no position past it, so it sends the whole event
//! again when it resumes: the sink drops the unfinished first sending (with a warning).

use base64::Engine;
use serde::Deserialize;

/// The Kafka header every part carries: `"<index>/<count>"`.
pub const HEADER: &str = "docrepl.part";
/// How a part's value begins (the sink's cheap test for "is this a part").
const PREFIX: &[u8] = br#"{"docrepl":{"part":"#;
/// Room in a part's message for its JSON frame, its key and Kafka's record framing.
const FRAME_BYTES: usize = 1024;
/// The largest event a sink joins (a 16 MB document's Extended JSON is at most about
/// 6 times its BSON size); a larger claim is refused rather than buffered.
pub const MAX_EVENT_BYTES: u64 = 256 * 1024 * 1024;

/// How many bytes of the event one part carries, for messages of at most `limit` bytes
/// with a key of `key_len` bytes (base64 makes 4 bytes of 3).
pub fn data_per_part(limit: usize, key_len: usize) -> usize {
    (limit.saturating_sub(FRAME_BYTES + key_len) / 4 * 3).max(3)
}

/// Cuts `value` into the values of its parts, `data_per_part` bytes of it each.
pub fn split(value: &[u8], event: &str, data_per_part: usize) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = value.chunks(data_per_part.max(1)).collect();
    let count = chunks.len();
    chunks
        .iter()
        .enumerate()
        .map(|(index, chunk)| {
            let mut out = Vec::with_capacity(chunk.len() * 4 / 3 + 160);
            out.extend_from_slice(PREFIX);
            out.extend_from_slice(
                format!(r#"{{"event":"{event}","index":{index},"count":{count},"bytes":{}}}}},"data":""#, value.len()).as_bytes(),
            );
            let mut text = String::with_capacity(chunk.len() * 4 / 3 + 4);
            base64::engine::general_purpose::STANDARD.encode_string(chunk, &mut text);
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(br#""}"#);
            out
        })
        .collect()
}

/// One part as read from the topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub event: String,
    pub index: u32,
    pub count: u32,
    pub bytes: u64,
    pub data: Vec<u8>,
}

#[derive(Deserialize)]
struct PartIn {
    docrepl: DocreplIn,
    data: String,
}

#[derive(Deserialize)]
struct DocreplIn {
    part: MetaIn,
}

#[derive(Deserialize)]
struct MetaIn {
    event: String,
    index: u32,
    count: u32,
    bytes: u64,
}

/// `None` when `value` is not a part; otherwise the part, or why it is a broken one.
pub fn parse(value: &[u8]) -> Option<Result<Part, String>> {
    if !value.starts_with(PREFIX) {
        return None;
    }
    let parsed: PartIn = match serde_json::from_slice(value) {
        Ok(p) => p,
        Err(e) => return Some(Err(format!("a docrepl event part that is not valid JSON: {e}"))),
    };
    let meta = parsed.docrepl.part;
    if meta.count == 0 || meta.index >= meta.count {
        return Some(Err(format!("a docrepl event part numbered {} of {}", meta.index, meta.count)));
    }
    match base64::engine::general_purpose::STANDARD.decode(parsed.data.as_bytes()) {
        Ok(data) => Some(Ok(Part { event: meta.event, index: meta.index, count: meta.count, bytes: meta.bytes, data })),
        Err(e) => Some(Err(format!("a docrepl event part whose data is not base64: {e}"))),
    }
}

/// Parts of an event received so far.
#[derive(Debug)]
struct Pending {
    event: String,
    count: u32,
    next: u32,
    bytes: u64,
    data: Vec<u8>,
    first_offset: i64,
}

/// An event whose parts stopped coming (its source sends it again, whole).
#[derive(Debug, PartialEq)]
pub struct Unfinished {
    pub first_offset: i64,
    pub reason: String,
}

/// What feeding a part gave.
#[derive(Debug, PartialEq)]
pub enum Fed {
    /// The event is whole: its value, and the offset of its first part.
    Whole { value: Vec<u8>, first_offset: i64 },
    /// More parts are to come.
    Waiting,
    /// This part cannot belong to any event being joined (its earlier parts were never
    /// seen, or it claims an event over [`MAX_EVENT_BYTES`]): a dead letter, with why.
    Stray(String),
}

/// Joins one partition's parts back into events. Parts of an event are consecutive in
/// the partition; a part 0 or a message that is no part ends an unfinished event (a
/// source that stopped mid-event sends the whole event again after its restart).
#[derive(Debug, Default)]
pub struct Joiner {
    pending: Option<Pending>,
    /// The event joined last: a part of it written twice is skipped.
    last_whole: Option<String>,
}

impl Joiner {
    /// The offset that must not be committed past while an event is being joined: its
    /// first part's.
    pub fn hold(&self) -> Option<i64> {
        self.pending.as_ref().map(|p| p.first_offset)
    }

    /// A message that is not a part arrived: an event being joined will not be finished.
    pub fn interrupt(&mut self) -> Option<Unfinished> {
        self.pending.take().map(|p| Unfinished {
            first_offset: p.first_offset,
            reason: format!(
                "event {} ended after {} of its {} parts (the source stopped while sending it; it sends the event again, whole, when it resumes)",
                p.event, p.next, p.count
            ),
        })
    }

    /// Takes the part read at `offset`. An unfinished event it ends comes back too.
    pub fn feed(&mut self, part: Part, offset: i64) -> (Option<Unfinished>, Fed) {
        // A part written twice (a producer retry after a timed-out request) is skipped.
        let seen = match &self.pending {
            Some(p) => p.event == part.event && part.index < p.next,
            None => self.last_whole.as_deref() == Some(part.event.as_str()),
        };
        if seen {
            return (None, Fed::Waiting);
        }
        let continues = self.pending.as_ref().is_some_and(|p| p.event == part.event && p.next == part.index && p.count == part.count);
        let ended = if continues { None } else { self.interrupt() };
        if part.bytes > MAX_EVENT_BYTES {
            let reason = format!("a docrepl event part claims an event of {} bytes, over the {MAX_EVENT_BYTES} bytes a sink joins", part.bytes);
            return (ended, Fed::Stray(reason));
        }
        if !continues && part.index != 0 {
            let reason = format!("part {} of {} of event {} without its earlier parts", part.index, part.count, part.event);
            return (ended, Fed::Stray(reason));
        }
        let pending = self.pending.get_or_insert_with(|| Pending {
            event: part.event,
            count: part.count,
            next: 0,
            bytes: part.bytes,
            // (Capped: the claim is not trusted with an allocation of its own size.)
            data: Vec::with_capacity(part.bytes.min(16 * 1024 * 1024) as usize),
            first_offset: offset,
        });
        pending.data.extend_from_slice(&part.data);
        pending.next += 1;
        if pending.next < pending.count {
            return (ended, Fed::Waiting);
        }
        let done = self.pending.take().expect("pending was just filled");
        self.last_whole = Some(done.event.clone());
        if done.data.len() as u64 != done.bytes {
            let reason = format!("event {} joined to {} bytes, not the {} its parts announce", done.event, done.data.len(), done.bytes);
            return (ended, Fed::Stray(reason));
        }
        (ended, Fed::Whole { value: done.data, first_offset: done.first_offset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_of(value: &[u8], per: usize) -> Vec<Part> {
        sent_as(value, "e1", per)
    }

    fn sent_as(value: &[u8], event: &str, per: usize) -> Vec<Part> {
        split(value, event, per).iter().map(|v| parse(v).unwrap().unwrap()).collect()
    }

    #[test]
    fn split_then_join_gives_the_value_back() {
        let value: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let parts = parts_of(&value, 3000);
        assert_eq!(parts.len(), 14);
        let mut joiner = Joiner::default();
        for (i, p) in parts.into_iter().enumerate() {
            let (ended, fed) = joiner.feed(p, 100 + i as i64);
            assert_eq!(ended, None);
            if i < 13 {
                assert_eq!(fed, Fed::Waiting);
                assert_eq!(joiner.hold(), Some(100));
            } else {
                assert_eq!(fed, Fed::Whole { value: value.clone(), first_offset: 100 });
            }
        }
        assert_eq!(joiner.hold(), None);
    }

    #[test]
    fn parts_fit_the_limit() {
        let value = vec![b'x'; 1_000_000];
        let per = data_per_part(65_536, 40);
        for part in split(&value, "abc", per) {
            assert!(part.len() + 40 + 512 <= 65_536, "{}", part.len());
        }
    }

    #[test]
    fn a_restarted_event_replaces_its_unfinished_first_sending() {
        let value = vec![7u8; 100];
        let mut joiner = Joiner::default();
        let first = parts_of(&value, 40);
        assert_eq!(joiner.feed(first[0].clone(), 1).1, Fed::Waiting);
        let again = sent_as(&value, "e2", 40);
        let (ended, fed) = joiner.feed(again[0].clone(), 2);
        assert_eq!(ended.map(|u| u.first_offset), Some(1));
        assert_eq!(fed, Fed::Waiting);
        joiner.feed(again[1].clone(), 3);
        assert_eq!(joiner.feed(again[2].clone(), 4).1, Fed::Whole { value, first_offset: 2 });
    }

    #[test]
    fn a_part_written_twice_is_taken_once() {
        let value = vec![9u8; 100];
        let parts = parts_of(&value, 40);
        let mut joiner = Joiner::default();
        joiner.feed(parts[0].clone(), 1);
        joiner.feed(parts[1].clone(), 2);
        assert_eq!(joiner.feed(parts[1].clone(), 3), (None, Fed::Waiting));
        assert_eq!(joiner.feed(parts[2].clone(), 4).1, Fed::Whole { value, first_offset: 1 });
    }

    #[test]
    fn a_part_without_its_beginning_is_stray() {
        let parts = parts_of(&[1u8; 100], 40);
        let mut joiner = Joiner::default();
        assert!(matches!(joiner.feed(parts[1].clone(), 5).1, Fed::Stray(r) if r.contains("without its earlier parts")));
        assert_eq!(joiner.hold(), None);
    }

    #[test]
    fn other_values_are_not_parts() {
        assert_eq!(parse(br#"{"before":null,"after":"{}","op":"c"}"#), None);
        assert!(matches!(parse(br#"{"docrepl":{"part":{"event":"e","index":3,"count":2,"bytes":1}},"data":""}"#), Some(Err(_))));
        assert!(matches!(parse(br#"{"docrepl":{"part":{"event":"e","index":0,"count":1,"bytes":1}},"data":"!!"}"#), Some(Err(_))));
    }

    #[test]
    fn a_claim_over_the_join_limit_is_refused() {
        let part = Part { event: "e".into(), index: 0, count: 2, bytes: MAX_EVENT_BYTES + 1, data: vec![] };
        assert!(matches!(Joiner::default().feed(part, 0).1, Fed::Stray(_)));
    }
}
