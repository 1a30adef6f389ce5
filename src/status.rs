//! The shared picture of what this process is doing, served as `/status`: per collection
//! on the source side, per partition on the sink side. Readers and workers update it;
//! the HTTP handler only reads it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

/// One source collection's reader, as `/status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CollectionStatus {
    /// `starting`, `standby`, `copying`, `streaming`, `restarting` or `failed`.
    pub state: String,
    /// Who holds the collection's lease, when known.
    pub lease_holder: Option<String>,
    pub events_published: u64,
    /// Documents sent by the initial copy so far.
    pub copied: u64,
    /// The collection's estimated document count when the copy started.
    pub copy_total: Option<u64>,
    /// Source cluster time (seconds) of the newest event read.
    pub last_event_time: Option<u32>,
    /// Seconds the newest event read is behind the source's clock.
    pub lag_seconds: Option<f64>,
    /// Source cluster time covered by the saved resume token: the recovery point up to
    /// which every change is in Kafka.
    pub checkpoint_time: Option<u32>,
    /// Seconds since `checkpoint_time` (compare with the change stream retention window).
    pub resume_token_age_seconds: Option<f64>,
    pub last_error: Option<String>,
}

/// All initial copies together, as `/status` shows them: how many collections are
/// copying and have been copied, and documents sent of those estimated.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CopyProgress {
    pub collections_copying: usize,
    pub collections_copied: usize,
    pub documents_copied: u64,
    pub documents_estimated: u64,
}

impl CopyProgress {
    fn of<'a>(collections: impl Iterator<Item = &'a CollectionStatus>) -> Self {
        let mut p = CopyProgress::default();
        for c in collections.filter(|c| c.copy_total.is_some()) {
            if c.state == "copying" {
                p.collections_copying += 1;
            } else {
                p.collections_copied += 1;
            }
            p.documents_copied += c.copied;
            p.documents_estimated += c.copy_total.unwrap_or(0);
        }
        p
    }
}

/// One assigned partition's worker, as `/status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionStatus {
    pub committed_offset: i64,
    pub high_watermark: Option<i64>,
    pub consumer_lag: Option<i64>,
    pub last_batch_size: u64,
    pub docs_written: u64,
    pub docs_per_second: f64,
    /// Source time of the newest event applied from this partition.
    pub applied_source_time: Option<String>,
    /// Where the newest applied change's time went (heartbeats keep it current while the
    /// source is idle); `None` before the first.
    pub lag: Option<LagSplit>,
}

/// A partition's lag, split (see `sink::progress::lag_split`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LagSplit {
    /// Change on the source → produced to Kafka (for a heartbeat: how old the stream's
    /// position was when it was sent).
    pub source_seconds: f64,
    /// Produced → taken from the partition's queue by the sink.
    pub transport_seconds: f64,
    /// Taken → written to the target.
    pub apply_seconds: f64,
    /// Now − the source time of the newest change (or heartbeat) applied.
    pub end_to_end_seconds: f64,
}

/// How far the target is for one topic (one source collection), over the partitions
/// this sink member holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TopicRecovery {
    pub partitions_held: usize,
    /// Source time up to which the target holds every change of the topic (RFC 3339);
    /// with several group members, the group's point is the earliest of theirs.
    pub recovery_point: Option<String>,
    pub recovery_point_age_seconds: Option<f64>,
}

/// Which side of the pair a report comes from (`docrepl run` is both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Sink,
}

impl Side {
    /// The name of the side's MongoDB cluster in `/status`'s `connections`.
    fn cluster_name(self) -> &'static str {
        match self {
            Side::Source => "source_cluster",
            Side::Sink => "target_cluster",
        }
    }
}

/// One connection a side needs, as `/status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Connection {
    pub reachable: bool,
    /// While unreachable: seconds since the first check that failed.
    pub unreachable_for_seconds: Option<f64>,
}

/// The last check of one connection: reachable or not, and since when.
#[derive(Debug, Clone, Copy)]
struct Reachability {
    reachable: bool,
    since: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    collections: BTreeMap<String, CollectionStatus>,
    partitions: BTreeMap<String, PartitionStatus>,
    topics: BTreeMap<String, TopicRecovery>,
    dead_letters: u64,
    errors: Vec<String>,
    source_ready: Option<bool>,
    sink_ready: Option<bool>,
    connections: BTreeMap<&'static str, Reachability>,
    history_window_seconds: Option<f64>,
    flavors: BTreeMap<&'static str, &'static str>,
    pipeline: Option<String>,
    stream_level: BTreeMap<String, String>,
}

/// Cheap to clone; every clone shows the same board.
#[derive(Debug, Clone)]
pub struct StatusBoard {
    role: &'static str,
    started: Instant,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub version: &'static str,
    pub role: &'static str,
    pub uptime_seconds: u64,
    pub ready: bool,
    /// `source_cluster`, `target_cluster`, `broker`: reachable at the last check (every
    /// 2 s), or for how long not. While the broker is away docrepl waits for it.
    pub connections: BTreeMap<&'static str, Connection>,
    /// What each cluster this process talks to is taken to be: `source` / `target` →
    /// `mongodb` or `documentdb`.
    pub flavors: BTreeMap<&'static str, &'static str>,
    /// Source side: the change-stream pipeline in use (`preferred`, or `documentdb` after
    /// a fallback), and how the large-event guard works with it.
    pub change_stream_pipeline: Option<String>,
    /// Source side, per database: one change stream for it or one per collection, and why.
    pub change_streams: BTreeMap<String, String>,
    /// Source side: the initial copies over all collections (see `CopyProgress`).
    pub copies: CopyProgress,
    /// Source side: seconds of change history the source keeps; a resume token older
    /// than this cannot be resumed.
    pub history_window_seconds: Option<f64>,
    pub collections: BTreeMap<String, CollectionStatus>,
    pub partitions: BTreeMap<String, PartitionStatus>,
    /// Sink side: the recovery point per topic.
    pub topics: BTreeMap<String, TopicRecovery>,
    pub dead_letters: u64,
    pub recent_errors: Vec<String>,
}

impl StatusBoard {
    pub fn new(role: &'static str) -> Self {
        StatusBoard { role, started: Instant::now(), inner: Arc::new(Mutex::new(Inner::default())) }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> Option<R> {
        self.inner.lock().ok().map(|mut g| f(&mut g))
    }

    pub fn update_collection(&self, ns: &str, f: impl FnOnce(&mut CollectionStatus)) {
        self.with(|i| f(i.collections.entry(ns.to_string()).or_default()));
    }

    pub fn collection(&self, ns: &str) -> Option<CollectionStatus> {
        self.with(|i| i.collections.get(ns).cloned()).flatten()
    }

    pub fn set_partitions(&self, partitions: BTreeMap<String, PartitionStatus>, topics: BTreeMap<String, TopicRecovery>) {
        self.with(|i| {
            i.partitions = partitions;
            i.topics = topics;
        });
    }

    pub fn add_dead_letters(&self, n: u64) {
        self.with(|i| i.dead_letters += n);
    }

    /// Keeps the last 20 errors (already redacted by whoever reports them).
    pub fn error(&self, message: String) {
        self.with(|i| {
            i.errors.push(message);
            let excess = i.errors.len().saturating_sub(20);
            i.errors.drain(..excess);
        });
    }

    pub fn set_history_window(&self, seconds: Option<f64>) {
        self.with(|i| i.history_window_seconds = seconds);
    }

    pub fn set_flavor(&self, side: &'static str, flavor: &'static str) {
        self.with(|i| i.flavors.insert(side, flavor));
    }

    pub fn set_pipeline(&self, description: String) {
        self.with(|i| i.pipeline = Some(description));
    }

    pub fn set_stream_level(&self, db: &str, description: String) {
        self.with(|i| {
            i.stream_level.insert(db.to_string(), description);
        });
    }

    /// A side's connectivity check: it is ready when its cluster and the broker answered.
    pub fn set_connectivity(&self, side: Side, found: crate::health::Connectivity) {
        self.with(|i| {
            let ready = found.cluster && found.broker;
            match side {
                Side::Source => i.source_ready = Some(ready),
                Side::Sink => i.sink_ready = Some(ready),
            }
            for (name, reachable) in [(side.cluster_name(), found.cluster), ("broker", found.broker)] {
                let now = Instant::now();
                let entry = i.connections.entry(name).or_insert(Reachability { reachable, since: now });
                if entry.reachable != reachable {
                    *entry = Reachability { reachable, since: now };
                }
            }
        });
    }

    /// The connections seen unreachable at the last check, for `/readyz`: e.g. "broker
    /// unreachable for 12 s".
    pub fn unreachable(&self) -> Vec<String> {
        self.connections()
            .into_iter()
            .filter(|(_, c)| !c.reachable)
            .map(|(name, c)| format!("{name} unreachable for {:.0} s", c.unreachable_for_seconds.unwrap_or(0.0)))
            .collect()
    }

    fn connections(&self) -> BTreeMap<&'static str, Connection> {
        self.with(|i| {
            i.connections
                .iter()
                .map(|(name, r)| {
                    let unreachable_for_seconds = (!r.reachable).then(|| r.since.elapsed().as_secs_f64());
                    (*name, Connection { reachable: r.reachable, unreachable_for_seconds })
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// Ready when every side this process runs reported itself connected.
    pub fn ready(&self) -> bool {
        self.with(|i| {
            let sides = [i.source_ready, i.sink_ready];
            sides.iter().any(Option::is_some) && sides.iter().all(|s| s.unwrap_or(true))
        })
        .unwrap_or(false)
    }

    pub fn report(&self) -> StatusReport {
        let ready = self.ready();
        let (collections, partitions, topics, dead_letters, recent_errors, history_window_seconds) = self
            .with(|i| {
                (i.collections.clone(), i.partitions.clone(), i.topics.clone(), i.dead_letters, i.errors.clone(), i.history_window_seconds)
            })
            .unwrap_or_default();
        let (flavors, change_stream_pipeline, change_streams) =
            self.with(|i| (i.flavors.clone(), i.pipeline.clone(), i.stream_level.clone())).unwrap_or_default();
        let collections: BTreeMap<String, CollectionStatus> = collections
            .into_iter()
            .map(|(k, mut c)| {
                c.resume_token_age_seconds = c.checkpoint_time.map(crate::metrics::seconds_since);
                (k, c)
            })
            .collect();
        let copies = CopyProgress::of(collections.values());
        StatusReport {
            version: env!("CARGO_PKG_VERSION"),
            role: self.role,
            uptime_seconds: self.started.elapsed().as_secs(),
            ready,
            connections: self.connections(),
            flavors,
            change_stream_pipeline,
            change_streams,
            copies,
            history_window_seconds,
            collections,
            partitions,
            topics,
            dead_letters,
            recent_errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_progress_sums_the_collections_that_were_copied() {
        let copying = CollectionStatus { state: "copying".into(), copied: 5, copy_total: Some(10), ..Default::default() };
        let done = CollectionStatus { state: "streaming".into(), copied: 7, copy_total: Some(7), ..Default::default() };
        let never = CollectionStatus { state: "streaming".into(), ..Default::default() };
        let p = CopyProgress::of([&copying, &done, &never].into_iter());
        assert_eq!(p, CopyProgress { collections_copying: 1, collections_copied: 1, documents_copied: 12, documents_estimated: 17 });
    }

    #[test]
    fn an_unreachable_broker_makes_the_process_unready_and_is_named() {
        use crate::health::Connectivity;
        let board = StatusBoard::new("run");
        board.set_connectivity(Side::Source, Connectivity { cluster: true, broker: true });
        board.set_connectivity(Side::Sink, Connectivity { cluster: true, broker: true });
        assert!(board.ready() && board.unreachable().is_empty());
        board.set_connectivity(Side::Sink, Connectivity { cluster: true, broker: false });
        assert!(!board.ready());
        assert_eq!(board.unreachable(), vec!["broker unreachable for 0 s".to_string()]);
        let report = board.report();
        assert!(!report.connections["broker"].reachable);
        assert!(report.connections["target_cluster"].reachable);
        board.set_connectivity(Side::Sink, Connectivity { cluster: true, broker: true });
        board.set_connectivity(Side::Source, Connectivity { cluster: true, broker: true });
        assert!(board.ready() && board.report().connections["broker"].unreachable_for_seconds.is_none());
    }
}
