//! Control messages: records that go to every partition of a collection's topic, each
//! acknowledged by Kafka before the reader goes on. Clear markers (when the target must
//! lose a collection's documents: history lost and re-copied, or the collection dropped
//! with `source.ddl = "replicate"`, see `debezium::ClearMarker`) and metadata messages
//! (the collection's options and indexes, see `metadata`).

use rdkafka::producer::BaseRecord;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::info;

use super::lease::Grant;
use super::produce::stamped;
use super::reader::{Reader, ReaderContext, ReaderError, ReaderExit};
use super::route::Route;
use crate::debezium;
use crate::event::{SnapshotMarker, SourceInfo};
use crate::kafka::delivery::InFlight;
use crate::metrics as m;

impl Reader {
    /// Tells the sinks to empty `route`'s target collection: one clear marker per partition
    /// of its topic (see `debezium::ClearMarker`), each acknowledged by Kafka.
    pub(super) async fn send_clear_markers(&self, route: &Arc<Route>, reason: &str, lease: &watch::Receiver<Grant>) -> Result<Option<ReaderExit>, ReaderError> {
        let at = self.cluster_time().await?;
        let source = source_info(&self.ctx, at, SnapshotMarker::Yes);
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
        let exit = deliver_to_every_partition(&self.ctx, route, markers, "clear marker", &self.stamp(lease), lease).await?;
        if exit.is_none() {
            info!(ns = %route.ns, partitions = self.ctx.partitions, %reason, "clear markers delivered: sinks empty the target collection");
        }
        Ok(exit)
    }
}

/// The `source` block of a control message sent at cluster time `at`.
pub(super) fn source_info(ctx: &ReaderContext, at: bson::Timestamp, snapshot: SnapshotMarker) -> SourceInfo {
    SourceInfo {
        name: ctx.name.clone(),
        rs: ctx.rs.clone(),
        ts_ms: i64::from(at.time) * 1000,
        ord: at.increment,
        snapshot,
        lsid: None,
        txn_number: None,
    }
}

/// Sends `records` ((partition, key, value)), stamped with the run's `stamp`, to
/// `route`'s topic and waits until Kafka acknowledged each. `Some(exit)`: the lease ran
/// out first. `what` names the records in errors.
pub(super) async fn deliver_to_every_partition(
    ctx: &ReaderContext,
    route: &Arc<Route>,
    records: PartitionRecords,
    what: &str,
    stamp: &str,
    lease: &watch::Receiver<Grant>,
) -> Result<Option<ReaderExit>, ReaderError> {
    deliver_all(ctx, vec![(Arc::clone(route), records)], what, stamp, lease).await
}

/// Records for one partition each: (partition, key, value).
pub(super) type PartitionRecords = Vec<(i32, Vec<u8>, Vec<u8>)>;

/// `deliver_to_every_partition` for the records of several routes at once: all queued,
/// then every acknowledgement awaited (one round trip, not one per collection).
pub(super) async fn deliver_all(
    ctx: &ReaderContext,
    batches: Vec<(Arc<Route>, PartitionRecords)>,
    what: &str,
    stamp: &str,
    lease: &watch::Receiver<Grant>,
) -> Result<Option<ReaderExit>, ReaderError> {
    let mut in_flight = InFlight::default();
    let mut seq = 0u64;
    for (route, records) in &batches {
        for (partition, key, value) in records {
            if Instant::now() >= lease.borrow().deadline {
                return Ok(Some(ReaderExit::LeaseLost));
            }
            let bytes = key.len() + value.len();
            let record = BaseRecord::with_opaque_to(&route.topic, in_flight.ticket(seq, bytes)).partition(*partition).key(key).payload(value).headers(stamped(None, stamp));
            ctx.producer.send(record).map_err(|(e, _)| ReaderError::Delivery { ns: route.ns.clone(), message: format!("{what} not queued: {e}") })?;
            in_flight.sent(bytes);
            seq += 1;
        }
    }
    // Each report comes within the producer's message timeout.
    let ns = |i: u64| {
        let mut left = i;
        for (route, records) in &batches {
            if left < records.len() as u64 {
                return route.ns.clone();
            }
            left -= records.len() as u64;
        }
        String::new()
    };
    while in_flight.due() > 0 {
        in_flight.arrived().await;
        for (i, outcome) in in_flight.take() {
            outcome.map_err(|e| ReaderError::Delivery { ns: ns(i), message: format!("{what} not delivered: {}", e.message) })?;
        }
    }
    Ok(None)
}
