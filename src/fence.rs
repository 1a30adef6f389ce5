//! Stale sendings fenced out by generation (pure, no I/O).
//!
//! Why: the source's producer is not idempotent (librdkafka's idempotent producer keeps
//! one produce request in flight per partition, which across a 150 ms round trip added up
//! to a round trip to every change: live lag p99 487 ms in placement A). Without it, a
//! record whose request failed, or timed out on a link that went silent, may still reach
//! the broker later: the client gave up on the connection, but the bytes it had written
//! are delivered when the link heals. By then the reader has restarted from its saved
//! token and sent the same changes again, and newer ones after them. If the old record
//! came last, the target would keep an older version of a document for good. (The same
//! happens with an idempotent producer when a whole process dies with requests on a
//! silent link: its successor is a new producer the broker does not order it against.)
//!
//! So every record a reader sends carries the header `docrepl.generation` =
//! `<writer>@<generation>`: the writer is the reader's lease (`<source.name>/<db.coll>`,
//! or `<source.name>/<db>.$database`), the generation the lease epoch its run began with.
//! Epochs only grow, across instances too, and every run of a reader begins with a fresh
//! one; within a run records go out in order on one connection, and a run ends at its
//! first failed delivery. A sink therefore drops a message when an earlier message of the
//! same partition from the same writer carried a higher generation: that newer run
//! started from a token before every record the older one had not seen acknowledged, so it
//! sent this change again, after it. Messages without the header (another producer's,
//! or docrepl's before it had one) are always applied.
//!
//! What the fence knows is a function of the partition's log alone: for each writer, the
//! generations it raised and the offset each was first seen at. A worker keeps the last
//! few raises of every writer in the target's state database (`sink::fences`), so
//! whoever reads the partition next, from whatever offset (a committed one, an earlier
//! one after a crash, a replay), rebuilds the fence as it stood there (`Fence::at`). A
//! writer whose kept raises all lie beyond that offset is not fenced until it raises
//! again: that gives up the fence for it, never a message.

use std::collections::HashMap;

use rdkafka::message::{Headers, Message};
use serde::{Deserialize, Serialize};

/// The Kafka header every record of a reader carries.
pub const HEADER: &str = "docrepl.generation";
/// Raises kept per writer (each is one restart or takeover of its reader).
const KEPT_RAISES: usize = 4;

/// The header value of `writer`'s run of `generation`.
pub fn stamp(writer: &str, generation: i64) -> String {
    format!("{writer}@{generation}")
}

/// A header value's writer and generation (`None`: not one of docrepl's stamps).
pub fn parse(value: &[u8]) -> Option<(&str, i64)> {
    let text = std::str::from_utf8(value).ok()?;
    // A collection name may hold an '@'; the generation is what follows the last one.
    let (writer, generation) = text.rsplit_once('@')?;
    Some((writer, generation.parse().ok()?))
}

/// The writer and generation a Kafka message is stamped with, if it is.
pub fn stamp_of<M: Message>(msg: &M) -> Option<(&str, i64)> {
    msg.headers()?.iter().find(|h| h.key == HEADER).and_then(|h| parse(h.value?))
}

/// What the fence says of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// A newer run of the same writer came before it in the partition.
    Stale { newer: i64 },
}

/// A generation first seen at an offset of the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Raise {
    pub generation: i64,
    pub offset: i64,
}

/// One writer's last raises, oldest first (what is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterHistory {
    pub writer: String,
    pub raises: Vec<Raise>,
}

/// One partition's fence: each writer's raises so far (the last is its highest).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Fence {
    writers: HashMap<String, Vec<Raise>>,
    /// Raised since the history was last handed out.
    changed: bool,
}

impl Fence {
    /// The fence as it stood before `offset`, from a stored history: raises first seen at
    /// or after `offset` are left out (reading on meets them again, at the same offsets).
    pub fn at(history: Vec<WriterHistory>, offset: i64) -> Fence {
        let writers = history
            .into_iter()
            .filter_map(|h| {
                let raises: Vec<Raise> = h.raises.into_iter().filter(|r| r.offset < offset).collect();
                (!raises.is_empty()).then_some((h.writer, raises))
            })
            .collect();
        Fence { writers, changed: false }
    }

    /// Judges the message at `offset` of `writer`'s run `generation`, and remembers it.
    pub fn admit(&mut self, writer: &str, generation: i64, offset: i64) -> Verdict {
        let raises = match self.writers.get_mut(writer) {
            Some(raises) => raises,
            None => self.writers.entry(writer.to_string()).or_default(),
        };
        match raises.last() {
            Some(highest) if generation < highest.generation => return Verdict::Stale { newer: highest.generation },
            Some(highest) if generation == highest.generation => return Verdict::Admit,
            _ => {}
        }
        raises.push(Raise { generation, offset });
        if raises.len() > KEPT_RAISES {
            raises.remove(0);
        }
        self.changed = true;
        Verdict::Admit
    }

    /// The history to store, when a generation was raised since the last call.
    pub fn history_update(&mut self) -> Option<Vec<WriterHistory>> {
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        let mut history: Vec<WriterHistory> =
            self.writers.iter().map(|(writer, raises)| WriterHistory { writer: writer.clone(), raises: raises.clone() }).collect();
        history.sort_by(|a, b| a.writer.cmp(&b.writer));
        Some(history)
    }

    /// Writers the fence knows.
    pub fn len(&self) -> usize {
        self.writers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_parses_back_even_with_an_at_sign_in_the_name() {
        let s = stamp("docrepl/app.odd@name", 1_733_312_000_123);
        assert_eq!(parse(s.as_bytes()), Some(("docrepl/app.odd@name", 1_733_312_000_123)));
        assert_eq!(parse(b"no generation"), None);
        assert_eq!(parse(b"w@x"), None);
        assert_eq!(parse(&[0xff, b'@', b'1']), None);
    }

    #[test]
    fn an_older_run_after_a_newer_one_is_stale_and_only_for_its_writer() {
        let mut f = Fence::default();
        assert_eq!(f.admit("a", 5, 10), Verdict::Admit);
        assert_eq!(f.admit("a", 5, 11), Verdict::Admit);
        // The run before it, sending late: its changes were sent again by run 7.
        assert_eq!(f.admit("a", 7, 12), Verdict::Admit);
        assert_eq!(f.admit("a", 5, 13), Verdict::Stale { newer: 7 });
        // Another writer's generations are its own.
        assert_eq!(f.admit("b", 3, 14), Verdict::Admit);
        assert_eq!(f.admit("a", 7, 15), Verdict::Admit);
    }

    #[test]
    fn the_history_is_handed_out_once_per_raise() {
        let mut f = Fence::default();
        assert_eq!(f.history_update(), None);
        f.admit("a", 1, 0);
        f.admit("b", 1, 1);
        let h = f.history_update().expect("raised");
        assert_eq!(h.iter().map(|w| w.writer.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        f.admit("a", 1, 2);
        f.admit("a", 0, 3);
        assert_eq!(f.history_update(), None);
    }

    /// The partition: run 10 at offsets 0-1, run 11 from 2, run 10's late sending at 4,
    /// run 12 from 6. Whatever offset the next reader starts at, it judges as the first.
    #[test]
    fn a_fence_rebuilt_at_any_offset_judges_the_rest_as_the_first_reader_did() {
        let log: [i64; 8] = [10, 10, 11, 11, 10, 11, 12, 10];
        let mut first = Fence::default();
        let verdicts: Vec<Verdict> = log.iter().enumerate().map(|(o, g)| first.admit("w", *g, o as i64)).collect();
        assert_eq!(verdicts[4], Verdict::Stale { newer: 11 });
        assert_eq!(verdicts[5], Verdict::Admit);
        assert_eq!(verdicts[7], Verdict::Stale { newer: 12 });
        let history = first.history_update().expect("raised");
        for start in 0..log.len() {
            let mut again = Fence::at(history.clone(), start as i64);
            let rest: Vec<Verdict> = log.iter().enumerate().skip(start).map(|(o, g)| again.admit("w", *g, o as i64)).collect();
            assert_eq!(rest, verdicts[start..], "from offset {start}");
        }
        // Nothing stored (or another writer's): every message is admitted.
        let mut bare = Fence::at(Vec::new(), 4);
        assert_eq!(bare.admit("w", 10, 4), Verdict::Admit);
    }

    #[test]
    fn only_the_last_raises_are_kept_and_an_unknown_past_admits() {
        let mut f = Fence::default();
        for (i, g) in (1..=10).enumerate() {
            f.admit("w", g, i as i64 * 100);
        }
        let history = f.history_update().expect("raised");
        assert_eq!(history[0].raises.len(), KEPT_RAISES);
        assert_eq!(history[0].raises.first(), Some(&Raise { generation: 7, offset: 600 }));
        // Starting at 650: generation 7 stands; an 8 at 700 comes as before.
        let mut mid = Fence::at(history.clone(), 650);
        assert_eq!(mid.admit("w", 6, 650), Verdict::Stale { newer: 7 });
        // Starting before every kept raise: the fence knows nothing of the writer.
        let mut early = Fence::at(history, 100);
        assert!(early.is_empty());
        assert_eq!(early.admit("w", 2, 100), Verdict::Admit);
    }
}
