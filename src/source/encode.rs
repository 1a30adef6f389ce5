//! Turning one change event into Kafka records (the Debezium envelope, and a tombstone
//! after a delete), with the size check against the topic's limit. Pure CPU work, done on
//! the read side of a reader.

use bson::{Bson, Timestamp};

use super::convert::describe_id;
use super::errors::ReaderError;
use super::outgoing::Outgoing;
use super::OversizePolicy;
use crate::debezium;
use crate::metrics as m;

/// Bytes a Kafka record needs beyond its key and value (headers, framing).
const RECORD_OVERHEAD: usize = 512;

/// Encodes events into Kafka records (pure CPU work, done on the read side).
#[derive(Clone)]
pub(super) struct Encoder {
    pub(super) ns: String,
    pub(super) tombstones: bool,
    pub(super) max_bytes: usize,
    pub(super) oversize: OversizePolicy,
}

impl Encoder {
    pub(super) fn encode(&self, ev: &crate::event::ChangeEvent, token: Option<Bson>) -> Outgoing {
        let event_time = Some(Timestamp { time: (ev.source.ts_ms / 1000) as u32, increment: ev.source.ord });
        let key = debezium::encode_key(&ev.id);
        let value = match debezium::encode_value(ev, m::now_ms()) {
            Ok(v) => v,
            Err(e) => return Outgoing::Done(Err(ReaderError::Encode { ns: self.ns.clone(), message: e.to_string() })),
        };
        let size = key.len() + value.len() + RECORD_OVERHEAD;
        if size > self.max_bytes {
            let id = describe_id(&ev.id);
            return match self.oversize {
                OversizePolicy::Fail => {
                    Outgoing::Done(Err(ReaderError::Oversize { ns: self.ns.clone(), id, size, max: self.max_bytes }))
                }
                OversizePolicy::DeadLetter => Outgoing::DeadLetter {
                    key,
                    reason: format!(
                        "event ({} op) for _id {id} in {} is {size} bytes, over kafka.max_message_bytes ({})",
                        ev.op.code(),
                        self.ns,
                        self.max_bytes
                    ),
                    token,
                    event_time,
                },
            };
        }
        let mut records = vec![(key.clone(), Some(value))];
        if self.tombstones && ev.op == crate::event::Op::Delete {
            records.push((key, None));
        }
        Outgoing::Event { records, token, event_time }
    }
}

