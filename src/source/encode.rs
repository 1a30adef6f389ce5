//! Turning one change event into Kafka records: the Debezium envelope (cut into parts
//! when it is over the topic's message limit, see `crate::parts`), and a tombstone after
//! a delete. Pure CPU work, done on the read side of a reader.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bson::{Bson, Timestamp};

use super::convert::describe_id;
use super::errors::ReaderError;
use super::outgoing::{Outgoing, Record};
use super::route::Route;
use super::OversizePolicy;
use crate::debezium;
use crate::metrics as m;
use crate::parts;

/// Bytes a Kafka record needs beyond its key and value (headers, framing).
pub(super) const RECORD_OVERHEAD: usize = 512;

/// Encodes events into Kafka records (pure CPU work, done on the read side).
#[derive(Clone)]
pub(super) struct Encoder {
    pub(super) route: Arc<Route>,
    pub(super) tombstones: bool,
    /// The largest message the topic takes: the smaller of `kafka.max_message_bytes` and
    /// the topic's own `max.message.bytes`, lowered when the broker refuses a message as
    /// too large (shared with the reader, which lowers it).
    pub(super) max_bytes: Arc<AtomicUsize>,
    /// What happens to an event that cannot be carried (not encodable, or larger than
    /// parts can carry).
    pub(super) oversize: OversizePolicy,
}

impl Encoder {
    pub(super) fn encode(&self, ev: &crate::event::ChangeEvent, token: Option<Bson>) -> Outgoing {
        let event_time = Some(Timestamp { time: (ev.source.ts_ms / 1000) as u32, increment: ev.source.ord });
        let key = debezium::encode_key(&ev.id);
        let value = match debezium::encode_value(ev, m::now_ms()) {
            Ok(v) => v,
            Err(e) => return self.cannot_carry(ev, key, format!("cannot be encoded: {e}"), token, event_time),
        };
        if value.len() as u64 > parts::MAX_EVENT_BYTES {
            let reason = format!("is {} bytes, over the {} bytes a sink joins from parts", value.len(), parts::MAX_EVENT_BYTES);
            return self.cannot_carry(ev, key, reason, token, event_time);
        }
        let max_bytes = self.max_bytes.load(Ordering::Relaxed);
        let mut records = if key.len() + value.len() + RECORD_OVERHEAD <= max_bytes {
            vec![Record { key: key.clone(), value: Some(value), part: None }]
        } else {
            metrics::counter!(m::SOURCE_EVENTS_IN_PARTS, "collection" => self.route.ns.clone()).increment(1);
            let event = format!("{:016x}", rand::random::<u64>());
            let values = parts::split(&value, &event, parts::data_per_part(max_bytes - RECORD_OVERHEAD, key.len()));
            let count = values.len();
            values
                .into_iter()
                .enumerate()
                .map(|(i, v)| Record { key: key.clone(), value: Some(v), part: Some(format!("{i}/{count}")) })
                .collect()
        };
        if self.tombstones && ev.op == crate::event::Op::Delete {
            records.push(Record { key, value: None, part: None });
        }
        Outgoing::Event { route: Arc::clone(&self.route), records, token, event_time }
    }

    /// An event that cannot travel on the topic: `source.on_oversize` says whether its key
    /// and the reason go to the dead-letter topic or the reader stops.
    fn cannot_carry(
        &self,
        ev: &crate::event::ChangeEvent,
        key: Vec<u8>,
        why: String,
        token: Option<Bson>,
        event_time: Option<Timestamp>,
    ) -> Outgoing {
        let id = describe_id(&ev.id);
        let reason = format!("event ({} op) for _id {id} in {} {why}", ev.op.code(), self.route.ns);
        match self.oversize {
            OversizePolicy::Fail => Outgoing::Done(Err(ReaderError::CannotCarry { reason })),
            OversizePolicy::DeadLetter => Outgoing::DeadLetter { route: Arc::clone(&self.route), key, reason, token, event_time },
        }
    }
}
