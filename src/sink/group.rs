//! The consumer group member. It runs on its own thread (rebalance callbacks are
//! synchronous and may wait for workers; they must not block a runtime thread), routes
//! each message to its partition's worker, pauses a partition whose worker is behind,
//! and commits the offsets workers have applied. On revoke it stops the workers of the
//! revoked partitions and waits until they are silent before the rebalance goes on.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::progress::{PartitionProgress, RateTracker};
use super::worker::{self, PartitionShared, WorkerContext};
use crate::metrics as m;
use crate::status::StatusBoard;

/// How long a revoke waits for a worker to finish its write before going on anyway.
const REVOKE_WAIT: Duration = Duration::from_secs(30);

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
    #[error("Kafka consumer error: {0}")]
    Kafka(#[from] KafkaError),
}

struct Worker {
    shared: Arc<PartitionShared>,
    tx: mpsc::Sender<OwnedMessage>,
    pending: VecDeque<OwnedMessage>,
    paused: bool,
    committed: i64,
}

/// The consumer's context: owns the workers so rebalance callbacks can start and stop them.
pub struct GroupContext {
    runtime: tokio::runtime::Handle,
    worker_ctx: Arc<WorkerContext>,
    workers: Mutex<HashMap<(String, i32), Worker>>,
    replay: Mutex<Option<ReplayFrom>>,
    channel_capacity: usize,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.choose_start_offsets(consumer, tpl);
                if let Err(e) = consumer.assign(tpl) {
                    error!("cannot take the assigned partitions: {e}");
                    return;
                }
                self.start_workers(tpl);
            }
            _ => {
                if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    warn!("rebalance error: {:?}", err);
                }
                self.stop_workers(consumer, None);
                let _ = consumer.unassign();
            }
        }
    }

    fn pre_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {}
}

impl GroupContext {
    /// Partitions with a committed offset resume there (a deleted one stops the sink via
    /// `auto.offset.reset=error`); new partitions start at the beginning; a replay rewinds
    /// every partition of the first assignment and commits that, so it sticks.
    fn choose_start_offsets(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
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
                Err(e) => error!("cannot find the replay offsets: {e}; resuming from committed offsets"),
            }
            return;
        }
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(15)) {
            Ok(committed) => {
                // Made explicit (same effect on assign) so the worker row starts from
                // the committed offset rather than "nothing committed".
                for e in committed.elements() {
                    let start = if e.offset() == Offset::Invalid { Offset::Beginning } else { e.offset() };
                    let _ = tpl.set_partition_offset(e.topic(), e.partition(), start);
                }
            }
            Err(e) => warn!("cannot read committed offsets: {e}"),
        }
    }

    fn start_workers(&self, tpl: &TopicPartitionList) {
        let Ok(mut workers) = self.workers.lock() else { return };
        for e in tpl.elements() {
            let key = (e.topic().to_string(), e.partition());
            if workers.contains_key(&key) {
                continue;
            }
            let shared = Arc::new(PartitionShared::new(e.topic(), e.partition()));
            let (tx, rx) = mpsc::channel(self.channel_capacity);
            let span = tracing::info_span!("worker", topic = %e.topic(), partition = e.partition());
            let _guard = span.enter();
            self.runtime.spawn(tracing::Instrument::in_current_span(worker::run(
                Arc::clone(&self.worker_ctx),
                Arc::clone(&shared),
                rx,
            )));
            info!("partition assigned: worker started");
            let committed = match e.offset() {
                Offset::Offset(n) => n,
                _ => -1,
            };
            workers.insert(key, Worker { shared, tx, pending: VecDeque::new(), paused: false, committed });
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
        let deadline = Instant::now() + REVOKE_WAIT;
        for k in &keys {
            if let Some(w) = workers.get(k) {
                while !w.shared.finished.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if !w.shared.finished.load(Ordering::SeqCst) {
                    warn!(topic = %k.0, partition = k.1, "worker did not finish within {REVOKE_WAIT:?}; giving the partition up anyway");
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

    /// Hands queued messages to workers; pauses partitions whose worker is full.
    fn route(&self, consumer: &BaseConsumer<Self>, msg: Option<OwnedMessage>) {
        let Ok(mut workers) = self.workers.lock() else { return };
        if let Some(msg) = msg {
            match workers.get_mut(&(msg.topic().to_string(), msg.partition())) {
                Some(w) => w.pending.push_back(msg),
                // A message fetched before its partition was revoked: not ours to apply or
                // commit; the partition's new owner reads it again.
                None => return,
            }
        }
        for ((topic, partition), w) in workers.iter_mut() {
            while let Some(msg) = w.pending.pop_front() {
                match w.tx.try_send(msg) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(msg)) | Err(mpsc::error::TrySendError::Closed(msg)) => {
                        w.pending.push_front(msg);
                        break;
                    }
                }
            }
            // Pausing makes librdkafka drop what it prefetched for the partition and fetch it
            // again on resume, so a partition pauses only once a channel's worth waits here,
            // and resumes once its worker took all of it.
            let behind = if w.paused { !w.pending.is_empty() } else { w.pending.len() >= self.channel_capacity };
            if behind != w.paused {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, *partition);
                let result = if behind { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
                if result.is_ok() {
                    w.paused = behind;
                }
            }
        }
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
    // One batch waits while the worker writes the one before (a deeper channel only held
    // more memory: measured on a 1M drain).
    let channel_capacity = worker_ctx.config.batch_size.max(1024);
    let context = GroupContext {
        runtime,
        worker_ctx,
        workers: Mutex::new(HashMap::new()),
        replay: Mutex::new(replay),
        channel_capacity,
    };
    let consumer: BaseConsumer<GroupContext> = consumer_config.create_with_context(context)?;
    let topics: Vec<&str> = subscription.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    info!(subscription = ?subscription, "sink joined the consumer group");

    let mut last_commit = Instant::now();
    let mut last_lag = Instant::now() - Duration::from_secs(60);
    let mut last_status = Instant::now();
    let mut watermarks: HashMap<(String, i32), i64> = HashMap::new();
    let mut rates = RateTracker::default();
    let result = loop {
        if shutdown.is_cancelled() {
            break Ok(());
        }
        let polled = consumer.poll(Duration::from_millis(20));
        let msg = match polled {
            None => None,
            Some(Ok(m)) => Some(m.detach()),
            Some(Err(KafkaError::MessageConsumption(code)))
                if matches!(code, RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange) =>
            {
                break Err(GroupError::RetentionPassed(lost_partitions(&consumer, &code.to_string())));
            }
            Some(Err(e)) => {
                let text = e.to_string();
                if text.contains("auto.offset.reset") || text.contains("Offset out of range") {
                    break Err(GroupError::RetentionPassed(lost_partitions(&consumer, &text)));
                }
                warn!("consumer: {e}");
                None
            }
        };
        consumer.context().route(&consumer, msg);
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

/// Reads each assigned partition's high watermark and publishes the consumer lag.
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

fn report_lag(consumer: &BaseConsumer<GroupContext>) -> HashMap<(String, i32), i64> {
    let mut highs = HashMap::new();
    for p in consumer.context().partitions() {
        if let Ok((_, high)) = consumer.fetch_watermarks(&p.topic, p.partition, Duration::from_secs(2)) {
            let lag = if p.committed >= 0 { (high - p.committed).max(0) } else { high };
            metrics::gauge!(m::SINK_CONSUMER_LAG, "topic" => p.topic.clone(), "partition" => p.partition.to_string()).set(lag as f64);
            highs.insert((p.topic, p.partition), high);
        }
    }
    highs
}
