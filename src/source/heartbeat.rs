//! An idle reader's heartbeats (see `debezium::heartbeat`): every `source.heartbeat_ms`,
//! while the stream has nothing unread and Kafka has acknowledged everything sent, one to
//! every partition of each topic the reader writes, stamped with the cluster time the
//! stream has read up to. They go through the pump's acknowledgement tracking like events,
//! so a heartbeat never claims a time that a failed delivery before it did not reach.

use std::collections::BTreeSet;

use bson::{Bson, Timestamp};
use rdkafka::producer::BaseRecord;

use super::control::source_info;
use super::produce::stamped;
use super::reader::Reader;
use super::watermark::AckWatermark;
use crate::debezium::heartbeat;
use crate::event::SnapshotMarker;
use crate::kafka::delivery::InFlight;
use crate::metrics as m;

impl Reader {
    /// Sends the heartbeats for cluster time `at`. A heartbeat librdkafka does not take
    /// (its queue full) is left out: the next one follows an interval later.
    pub(super) fn send_heartbeats(&self, at: Timestamp, stamp: &str, watermark: &mut AckWatermark<(Bson, Option<Timestamp>)>, in_flight: &mut InFlight) {
        let source = source_info(&self.ctx, at, SnapshotMarker::No);
        let topics: BTreeSet<(String, String, String)> = self
            .members()
            .iter()
            .map(|r| {
                // A topic per database carries every collection: the heartbeat names none.
                let coll = if r.topic.ends_with(&format!(".{}", r.origin.ns.coll)) { r.origin.ns.coll.clone() } else { String::new() };
                (r.topic.clone(), r.origin.ns.db.clone(), coll)
            })
            .collect();
        for (topic, db, coll) in &topics {
            for partition in 0..self.ctx.partitions {
                let (key, value) = heartbeat::encode(partition, &source, db, coll, m::now_ms());
                let seq = watermark.sent(None);
                let bytes = key.len() + value.len();
                let record = BaseRecord::with_opaque_to(topic, in_flight.ticket(seq, bytes)).partition(partition).key(&key).payload(&value).headers(stamped(None, stamp));
                match self.ctx.producer.send(record) {
                    Ok(()) => in_flight.sent(bytes),
                    // Never sent: nothing will acknowledge it.
                    Err(_) => watermark.acked(seq),
                }
            }
        }
    }
}
