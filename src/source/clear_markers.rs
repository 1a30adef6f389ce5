//! Clear markers: when the target must lose a collection's documents (history lost and
//! re-copied, or the collection dropped with `source.ddl = "replicate"`), one marker goes
//! to every partition of its topic (see `debezium::ClearMarker`), each acknowledged by
//! Kafka before the reader goes on.

use rdkafka::producer::BaseRecord;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::info;

use super::lease::Grant;
use super::reader::{Reader, ReaderError, ReaderExit};
use super::route::Route;
use crate::debezium;
use crate::kafka::delivery::InFlight;
use crate::metrics as m;

impl Reader {
    /// Tells the sinks to empty `route`'s target collection: one clear marker per partition
    /// of its topic (see `debezium::ClearMarker`), each acknowledged by Kafka.
    pub(super) async fn send_clear_markers(&self, route: &Arc<Route>, reason: &str, lease: &watch::Receiver<Grant>) -> Result<Option<ReaderExit>, ReaderError> {
        let at = self.cluster_time().await?;
        let source = crate::event::SourceInfo {
            name: self.ctx.name.clone(),
            rs: self.ctx.rs.clone(),
            ts_ms: i64::from(at.time) * 1000,
            ord: at.increment,
            snapshot: crate::event::SnapshotMarker::Yes,
            lsid: None,
            txn_number: None,
        };
        let markers: Vec<(i32, Vec<u8>, Vec<u8>)> = (0..self.ctx.partitions)
            .map(|partition| {
                let marker = debezium::ClearMarker {
                    ns: route.origin.ns.clone(),
                    partition,
                    partitions: self.ctx.partitions,
                    reason: reason.to_string(),
                };
                let (key, value) = debezium::encode_clear_marker(&marker, &source, m::now_ms());
                (partition, key, value)
            })
            .collect();
        let mut in_flight = InFlight::default();
        for (seq, (partition, key, value)) in markers.iter().enumerate() {
            if Instant::now() >= lease.borrow().deadline {
                return Ok(Some(ReaderExit::LeaseLost));
            }
            let record = BaseRecord::with_opaque_to(&route.topic, in_flight.ticket(seq as u64)).partition(*partition).key(key).payload(value);
            self.ctx.producer.send(record).map_err(|(e, _)| ReaderError::Delivery {
                ns: route.ns.clone(),
                message: format!("clear marker not queued: {e}"),
            })?;
            in_flight.sent();
        }
        // Each report comes within the producer's message timeout.
        while in_flight.due() > 0 {
            in_flight.arrived().await;
            for (_, outcome) in in_flight.take() {
                outcome.map_err(|e| ReaderError::Delivery { ns: route.ns.clone(), message: format!("clear marker not delivered: {}", e.message) })?;
            }
        }
        info!(ns = %route.ns, partitions = self.ctx.partitions, %reason, "clear markers delivered: sinks empty the target collection");
        Ok(None)
    }
}
