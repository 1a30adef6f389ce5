//! The consumer group member. It runs on its own thread (rebalance callbacks are
//! synchronous and may wait for workers; they must not block a runtime thread), gives
//! each assigned partition a worker that reads the partition's own queue, and commits
//! the offsets workers have applied. On revoke it stops the workers of the revoked
//! partitions and waits until they are silent before the rebalance goes on.
//!
//! Why a queue per partition: librdkafka prefetches into one bounded queue per partition
//! and stops fetching a partition whose queue is full, so a slow partition holds back only
//! itself, without pausing (a pause drops what was prefetched, to be fetched again) and
//! without a thread copying every message into a channel.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::progress::{PartitionProgress, RateTracker};
use super::worker::{self, PartitionShared, WorkerContext, WorkerFailure};
use crate::metrics as m;
use crate::status::StatusBoard;

/// What a revoke waits for a worker beyond its write deadline (the worker checks its stop
/// between writes and retries, so it is silent by then).
const REVOKE_MARGIN: Duration = Duration::from_millis(500);

/// Where a replay starts (`--from-beginning`, `--from-timestamp`).
#[derive(Debug, Clone, Copy)]
pub enum ReplayFrom {
    Beginning,
    Time(SystemTime),
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("the committed offset of {0} no longer exists on the broker (topic retention deleted it while the sink was down). Changes in between are lost to this sink: rebuild the target (e.g. `docrepl sink --from-beginning` after a fresh initial copy), or reset the group's offsets deliberately")]
    RetentionPassed(String),
    #[error("{0}")]
    NoStartingPoint(String),
    #[error("a worker panicked ({0}); the sink stops so that the partition is not left unread (restart it: it replays from the last committed offset; a message that panics again is a bug to report)")]
    WorkerPanicked(String),
    #[error("Kafka consumer error: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the Kafka cluster refused the sink's consumer")]
    Access(#[source] crate::kafka::AccessRefused),
}

struct Worker {
    shared: Arc<PartitionShared>,
    committed: i64,
}

/// The consumer's context: owns the workers so rebalance callbacks can start and stop them.
pub struct GroupContext {
    runtime: tokio::runtime::Handle,
    worker_ctx: Arc<WorkerContext>,
    workers: Mutex<HashMap<(String, i32), Worker>>,
    /// Workers a revoke gave up waiting for: a new worker of the same partition waits
    /// until its predecessor is silent (one writer per partition, ever).
    lingering: Mutex<HashMap<(String, i32), Arc<PartitionShared>>>,
    replay: Mutex<Option<ReplayFrom>>,
    /// Set when an assignment could not be started safely (see `choose_start_offsets`).
    refused: Mutex<Option<String>>,
    /// The consumer itself, which a partition queue keeps alive (set once it exists).
    consumer: OnceLock<Weak<BaseConsumer<GroupContext>>>,
}

/// Answers the token refresh of `kafka.auth = "msk_iam"` (see `kafka::context`).
impl ClientContext for GroupContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;
    fn generate_oauth_token(&self, _: Option<&str>) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        crate::kafka::msk_iam::oauth_token()
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(reason) = self.choose_start_offsets(consumer, tpl) {
                    // No worker starts: nothing is applied or committed; the member stops
                    // the sink with the reason.
                    error!("{reason}");
                    if let Ok(mut refused) = self.refused.lock() {
                        refused.get_or_insert(reason);
                    }
                    return;
                }
                // Split before assigning: librdkafka then never forwards the partitions'
                // messages to the main queue, not even those fetched right after assign.
                let queues = self.split_queues(tpl);
                // The consumer protocol (KIP-848) hands partitions over a few at a time:
                // the assignment grows by `tpl` rather than becoming it.
                let taken = if incremental(consumer) { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(e) = taken {
                    error!("cannot take the assigned partitions: {e}");
                    return;
                }
                self.start_workers(queues);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS if incremental(consumer) => {
                // Only the partitions in `tpl` go; the others' workers keep writing.
                self.stop_workers(consumer, Some(tpl));
                if let Err(e) = consumer.incremental_unassign(tpl) {
                    warn!("cannot give the revoked partitions up: {e}");
                }
            }
            _ => {
                if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    warn!("rebalance error: {:?}", err);
                }
                self.stop_workers(consumer, None);
                let _ = if incremental(consumer) { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
            }
        }
    }

    fn pre_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {}
}

/// True when assignments change incrementally (Kafka's consumer protocol, KIP-848), false
/// for the classic protocol's eager rebalances (everything revoked, then reassigned).
fn incremental(consumer: &BaseConsumer<GroupContext>) -> bool {
    matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative)
}

impl GroupContext {
    /// Partitions with a committed offset resume there (a deleted one stops the sink via
    /// `auto.offset.reset=error`); partitions with none start at the beginning, unless
    /// retention already deleted the beginning (the target would miss those events: `Err`);
    /// a replay rewinds every partition of the first assignment and commits that, so it
    /// sticks, and one whose offsets cannot be resolved is an `Err` too.
    fn choose_start_offsets(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) -> Result<(), String> {
        let replay = self.replay.lock().map(|mut r| r.take()).unwrap_or(None);
        if let Some(from) = replay {
            let mut wanted = TopicPartitionList::new();
            for e in tpl.elements() {
                let offset = match from {
                    ReplayFrom::Beginning => Offset::Beginning,
                    ReplayFrom::Time(t) => Offset::Offset(
                        t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
                    ),
                };
                let _ = wanted.add_partition_offset(e.topic(), e.partition(), offset);
            }
            let resolved = match from {
                ReplayFrom::Beginning => Ok(wanted),
                ReplayFrom::Time(_) => consumer.offsets_for_times(wanted, Duration::from_secs(15)),
            };
            match resolved {
                Ok(resolved) => {
                    for e in resolved.elements() {
                        let _ = tpl.set_partition_offset(e.topic(), e.partition(), e.offset());
                    }
                    info!("replaying from {from:?}");
                }
                Err(e) => return Err(format!("cannot find the offsets to replay from ({from:?}): {e}. Nothing was applied; try again, or pick another time")),
            }
            return Ok(());
        }
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(15)) {
            Ok(committed) => {
                // Made explicit (same effect on assign) so the worker row starts from
                // the committed offset rather than "nothing committed".
                for e in committed.elements() {
                    let start = if e.offset() == Offset::Invalid {
                        check_beginning_retained(consumer, e.topic(), e.partition())?;
                        Offset::Beginning
                    } else {
                        e.offset()
                    };
                    let _ = tpl.set_partition_offset(e.topic(), e.partition(), start);
                }
            }
            Err(e) => warn!("cannot read committed offsets: {e}"),
        }
        Ok(())
    }

    /// Why assigned partitions were not started, if they were not.
    fn refused(&self) -> Option<String> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }

    /// Takes each partition's queue out of the main queue. A partition that cannot be
    /// split would never be read, so that is logged as an error.
    fn split_queues(&self, tpl: &TopicPartitionList) -> Vec<(String, i32, i64, PartitionQueue<GroupContext>)> {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            error!("the consumer is gone; cannot read the assigned partitions");
            return Vec::new();
        };
        let mut queues = Vec::new();
        for e in tpl.elements() {
            let committed = match e.offset() {
                Offset::Offset(n) => n,
                _ => -1,
            };
            match consumer.split_partition_queue(e.topic(), e.partition()) {
                Some(queue) => queues.push((e.topic().to_string(), e.partition(), committed, queue)),
                None => error!(topic = %e.topic(), partition = e.partition(), "cannot get the partition's queue; it will not be replicated until the next rebalance"),
            }
        }
        queues
    }

    fn start_workers(&self, queues: Vec<(String, i32, i64, PartitionQueue<GroupContext>)>) {
        let Ok(mut workers) = self.workers.lock() else { return };
        let Ok(mut lingering) = self.lingering.lock() else { return };
        lingering.retain(|_, w| !w.finished.load(Ordering::SeqCst));
        for (topic, partition, committed, queue) in queues {
            let key = (topic, partition);
            if workers.contains_key(&key) {
                continue;
            }
            let shared = Arc::new(PartitionShared::new(&key.0, partition));
            let span = tracing::info_span!("worker", topic = %key.0, partition);
            let _guard = span.enter();
            let predecessor = lingering.remove(&key);
            if predecessor.is_some() {
                warn!("the partition's previous worker is still in a write: the new one waits until it is silent");
            }
            let run = worker::run(Arc::clone(&self.worker_ctx), Arc::clone(&shared), queue, predecessor);
            let watched = Arc::clone(&shared);
            // A panic must not leave a partition silently unread while the process looks
            // healthy: it is recorded, and the member stops the sink with it (nothing past
            // the last applied offset was committed, so a restart replays from there).
            self.runtime.spawn(tracing::Instrument::in_current_span(async move {
                use futures::FutureExt;
                if let Err(panic) = std::panic::AssertUnwindSafe(run).catch_unwind().await {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    error!(topic = %watched.topic, partition = watched.partition, "worker panicked: {message}");
                    watched.fail(WorkerFailure::Panicked(message));
                    watched.finished.store(true, Ordering::SeqCst);
                }
            }));
            info!("partition assigned: worker started");
            workers.insert(key, Worker { shared, committed });
        }
    }

    /// Stops the workers (all, or those in `only`), waits until they are silent, and
    /// commits what they applied, synchronously, before the partitions move on.
    fn stop_workers(&self, consumer: &BaseConsumer<Self>, only: Option<&TopicPartitionList>) {
        let Ok(mut workers) = self.workers.lock() else { return };
        let keys: Vec<(String, i32)> = workers
            .keys()
            .filter(|(t, p)| only.is_none_or(|tpl| tpl.find_partition(t, *p).is_some()))
            .cloned()
            .collect();
        for k in &keys {
            if let Some(w) = workers.get(k) {
                w.shared.stop.cancel();
            }
        }
        // Below the session timeout: a write is over (applied, or aborted by the server at
        // its maxTimeMS) before the group can hand the partition to another member.
        let wait = self.worker_ctx.config.write_deadline() + REVOKE_MARGIN;
        let deadline = Instant::now() + wait;
        for k in &keys {
            if let Some(w) = workers.get(k) {
                while !w.shared.finished.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if !w.shared.finished.load(Ordering::SeqCst) {
                    warn!(topic = %k.0, partition = k.1, "worker did not finish within {wait:?}; giving the partition up (a worker started for it here waits for this one)");
                    if let Ok(mut lingering) = self.lingering.lock() {
                        lingering.insert(k.clone(), Arc::clone(&w.shared));
                    }
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for k in &keys {
            if let Some(w) = workers.remove(k) {
                let applied = w.shared.applied.load(Ordering::SeqCst);
                if applied > w.committed {
                    let _ = tpl.add_partition_offset(&k.0, k.1, Offset::Offset(applied));
                }
                info!(topic = %k.0, partition = k.1, "partition released");
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                warn!("final commit failed (the next owner replays from the previous commit): {e}");
            }
        }
    }

    /// The first partition whose worker stopped for good, and why: its committed offset
    /// gone (deleted by retention; `auto.offset.reset=error` reports it on the partition's
    /// queue), or a panic.
    fn worker_failure(&self) -> Option<((String, i32), WorkerFailure)> {
        let workers = self.workers.lock().ok()?;
        workers.iter().find_map(|(key, w)| w.shared.failure.lock().ok().and_then(|f| f.clone()).map(|f| (key.clone(), f)))
    }

    /// Commits (asynchronously) every offset workers applied since the last commit.
    fn commit_applied(&self, consumer: &BaseConsumer<Self>) {
        let Ok(mut workers) = self.workers.lock() else { return };
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), w) in workers.iter_mut() {
            let applied = w.shared.applied.load(Ordering::SeqCst);
            if applied > w.committed {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(applied));
                w.committed = applied;
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                warn!("offset commit failed (retried with the next one): {e}");
            }
        }
    }

    /// Snapshot of the assigned partitions for `/status`.
    pub fn partitions(&self) -> Vec<PartitionProgress> {
        let Ok(workers) = self.workers.lock() else { return Vec::new() };
        let mut v: Vec<_> = workers
            .iter()
            .map(|((t, p), w)| PartitionProgress {
                topic: t.clone(),
                partition: *p,
                committed: w.committed,
                last_batch_size: w.shared.last_batch_size.load(Ordering::Relaxed),
                docs_written: w.shared.docs_written.load(Ordering::Relaxed),
                applied_source_ms: w.shared.applied_source_ms.load(Ordering::Relaxed),
                lag_split_ms: [0, 1, 2].map(|i| w.shared.lag_split_ms[i].load(Ordering::Relaxed)),
            })
            .collect();
        v.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        v
    }
}

/// Runs the member until `shutdown`; returns an error the operator must act on.
pub fn run_member(
    consumer_config: rdkafka::ClientConfig,
    subscription: Vec<String>,
    worker_ctx: Arc<WorkerContext>,
    runtime: tokio::runtime::Handle,
    replay: Option<ReplayFrom>,
    board: StatusBoard,
    shutdown: CancellationToken,
) -> Result<(), GroupError> {
    let context = GroupContext {
        runtime,
        worker_ctx,
        workers: Mutex::new(HashMap::new()),
        lingering: Mutex::new(HashMap::new()),
        replay: Mutex::new(replay),
        refused: Mutex::new(None),
        consumer: OnceLock::new(),
    };
    let consumer: Arc<BaseConsumer<GroupContext>> = Arc::new(consumer_config.create_with_context(context)?);
    let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
    let topics: Vec<&str> = subscription.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    info!(subscription = ?subscription, "sink joined the consumer group");
    // Only a speed-up: without it librdkafka's own refresh still finds new topics.
    let _discovery = super::discovery::wanted(&subscription, &consumer_config)
        .then(|| super::discovery::Discovery::start(Arc::downgrade(&consumer)).inspect_err(|e| warn!("cannot start the topic discovery thread: {e}")).ok())
        .flatten();

    let mut last_commit = Instant::now();
    let mut last_lag = Instant::now() - Duration::from_secs(60);
    let mut last_status = Instant::now();
    let mut watermarks: HashMap<(String, i32), i64> = HashMap::new();
    let mut rates = RateTracker::default();
    let result = loop {
        if shutdown.is_cancelled() {
            break Ok(());
        }
        // Only events (rebalances, errors) arrive here: messages wait in partition queues.
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            // Cannot happen while every assigned partition has its own queue; not applied
            // nor committed here (its partition's next owner reads it again).
            Some(Ok(m)) => warn!(topic = %m.topic(), partition = m.partition(), offset = m.offset(), "a message arrived outside its partition's queue; left for the next assignment"),
            Some(Err(e)) if is_offset_lost(&e) => {
                break Err(GroupError::RetentionPassed(lost_partitions(&consumer, &e.to_string())));
            }
            Some(Err(e)) => match crate::kafka::access::acl_refusal_of(&e, None) {
                Some(refused) => break Err(GroupError::Access(refused)),
                None => warn!("consumer: {e}"),
            },
        }
        match consumer.context().worker_failure() {
            Some((_, WorkerFailure::OffsetLost(error))) => break Err(GroupError::RetentionPassed(lost_partitions(&consumer, &error))),
            Some(((topic, partition), WorkerFailure::Panicked(message))) => {
                break Err(GroupError::WorkerPanicked(format!("{topic}[{partition}]: {message}")))
            }
            None => {}
        }
        if let Some(reason) = consumer.context().refused() {
            break Err(GroupError::NoStartingPoint(reason));
        }
        if last_commit.elapsed() >= Duration::from_millis(200) {
            consumer.context().commit_applied(&consumer);
            last_commit = Instant::now();
        }
        if last_lag.elapsed() >= Duration::from_secs(5) {
            watermarks = report_lag(&consumer);
            last_lag = Instant::now();
        }
        if last_status.elapsed() >= Duration::from_secs(1) {
            let (partitions, topics) = rates.snapshot(&consumer.context().partitions(), &watermarks);
            board.set_partitions(partitions, topics);
            last_status = Instant::now();
        }
    };
    // Leaving: workers finish or abandon their batch, applied offsets are committed.
    consumer.context().stop_workers(&consumer, None);
    consumer.unsubscribe();
    result
}

/// A partition this group never committed on starts at its beginning, which is only the
/// topic's whole history if retention has deleted nothing yet (low watermark 0).
fn check_beginning_retained(consumer: &BaseConsumer<GroupContext>, topic: &str, partition: i32) -> Result<(), String> {
    // A topic created a moment ago may have no leader yet (Apache Kafka answers
    // NotLeaderForPartition for the first few hundred ms): asked again for up to 10 s.
    let mut tries = 0;
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(15)) {
            Ok((low, _)) if low > 0 => return Err(format!(
                "topic {topic} partition {partition} has no committed offset for this group and its earliest retained offset is {low}: retention already deleted the events before it, so starting there would leave the target without them. On a compacted topic (every document's latest event kept) start with `docrepl sink --from-beginning`; otherwise make a fresh initial copy (clear the source's checkpoints) and then start the sink with --from-beginning"
            )),
            Ok(_) => return Ok(()),
            Err(e) if tries < 40 && is_leader_moving(&e) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(format!("cannot read the earliest offset of topic {topic} partition {partition} (needed because this group has no committed offset there): {e}")),
        }
    }
}

/// True for the errors a partition answers while its leader is being elected or moved
/// (a new topic, a broker restart, a reassignment): they pass by themselves.
fn is_leader_moving(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(NotLeaderForPartition | LeaderNotAvailable | UnknownTopicOrPartition | UnknownPartition | UnknownTopic | RequestTimedOut | OperationTimedOut | BrokerNotAvailable | AllBrokersDown | BrokerTransportFailure | NotCoordinator | CoordinatorNotAvailable | FencedLeaderEpoch | UnknownLeaderEpoch | OffsetNotAvailable)
    )
}

/// True for the error `auto.offset.reset=error` raises when a partition's position no
/// longer exists on the broker.
pub(super) fn is_offset_lost(e: &KafkaError) -> bool {
    if let KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange) = e {
        return true;
    }
    let text = e.to_string();
    text.contains("auto.offset.reset") || text.contains("Offset out of range")
}

/// Names the partitions whose committed offset is below the broker's earliest offset:
/// librdkafka's out-of-range error carries only a code, and the operator needs the topic
/// and partition to decide what to rebuild.
fn lost_partitions(consumer: &BaseConsumer<GroupContext>, error: &str) -> String {
    let assignment = match consumer.assignment() {
        Ok(tpl) => tpl,
        Err(_) => return format!("a partition ({error})"),
    };
    let committed = consumer.committed_offsets(assignment, Duration::from_secs(5)).ok();
    let mut lost = Vec::new();
    for e in committed.iter().flat_map(|tpl| tpl.elements()) {
        let Offset::Offset(at) = e.offset() else { continue };
        if let Ok((low, _)) = consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5)) {
            if at < low {
                lost.push(format!("topic {} partition {} (committed offset {at}, earliest kept {low})", e.topic(), e.partition()));
            }
        }
    }
    if lost.is_empty() {
        format!("a partition ({error})")
    } else {
        lost.join(", ")
    }
}

/// Reads every assigned partition's high watermark and publishes the consumer lag. One
/// ListOffsets request (timestamp "latest") for all partitions: one `fetch_watermarks`
/// round trip per partition held this loop (and with it commits and the stop) for 40 s
/// with 400 partitions.
fn report_lag(consumer: &BaseConsumer<GroupContext>) -> HashMap<(String, i32), i64> {
    let mut highs = HashMap::new();
    let partitions = consumer.context().partitions();
    let mut latest = TopicPartitionList::new();
    for p in &partitions {
        let _ = latest.add_partition_offset(&p.topic, p.partition, Offset::End);
    }
    if latest.count() == 0 {
        return highs;
    }
    let found = match consumer.offsets_for_times(latest, Duration::from_secs(5)) {
        Ok(found) => found,
        Err(e) => {
            warn!("cannot read the partitions' high watermarks (consumer lag not updated): {e}");
            return highs;
        }
    };
    for e in found.elements() {
        if let Offset::Offset(high) = e.offset() {
            highs.insert((e.topic().to_string(), e.partition()), high);
        }
    }
    for p in partitions {
        if let Some(&high) = highs.get(&(p.topic.clone(), p.partition)) {
            let lag = if p.committed >= 0 { (high - p.committed).max(0) } else { high };
            metrics::gauge!(m::SINK_CONSUMER_LAG, "topic" => p.topic.clone(), "partition" => p.partition.to_string()).set(lag as f64);
        }
    }
    highs
}
