//! One partition's worker: takes a batch (size and time bounds) from the partition's own
//! librdkafka queue, leaves out late sendings of earlier source runs (`crate::fence`),
//! decodes it, folds it per document, writes it (retrying transient errors with backoff
//! and jitter), dead-letters what can never be applied, and only then publishes the
//! offset to commit.
//! When told to stop (partition revoked, shutdown) it never starts another write or
//! retry: a late retry landing after the new owner wrote newer versions would leave the
//! target stale for good.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::ConsumerContext;
use rdkafka::message::Message;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::dead_letter::{DeadLetter, DeadLetters};
use super::fold::{fold, DocAction};
use super::input::Input;
use super::retry::{sleep_unless_stopped, write_with_retry, Abandoned, Written};
use super::writer::Writer;
use super::SinkConfig;
use super::fences::FenceStore;
use super::metadata::{Applied, MetadataApplier};
use crate::debezium::{self, ClearMarker, Decoded, MetadataMessage};
use crate::event::ChangeEvent;
use crate::fence::Fence;
use crate::metrics as m;

/// State a worker shares with the consumer thread (which commits) and `/status`.
#[derive(Debug)]
pub struct PartitionShared {
    pub topic: String,
    pub partition: i32,
    /// Set by the consumer thread: finish or abandon the batch in hand, then exit.
    pub stop: CancellationToken,
    /// The next offset to commit (last applied + 1), or -1 before the first batch.
    pub applied: AtomicI64,
    /// Set by the worker as its very last act.
    pub finished: AtomicBool,
    pub last_batch_size: AtomicU64,
    pub docs_written: AtomicU64,
    /// Source `ts_ms` of the newest event applied (0: none yet), for the recovery point.
    pub applied_source_ms: AtomicU64,
    /// The last batch's newest message, in milliseconds: source (change → produced),
    /// transport (produced → taken from the queue), apply (taken → written).
    pub lag_split_ms: [AtomicI64; 3],
    /// Why the worker stopped for good, when it did: the member stops the sink with it.
    pub failure: std::sync::Mutex<Option<WorkerFailure>>,
}

/// A worker's end that the whole sink must stop for.
#[derive(Debug, Clone)]
pub enum WorkerFailure {
    /// The partition's position no longer exists on the broker (retention deleted it).
    OffsetLost(String),
    /// The worker task panicked (the message).
    Panicked(String),
}

impl PartitionShared {
    /// Records the first failure (a later one does not hide it).
    pub fn fail(&self, failure: WorkerFailure) {
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(failure);
        }
    }
}

impl PartitionShared {
    pub fn new(topic: &str, partition: i32) -> Self {
        PartitionShared {
            topic: topic.to_string(),
            partition,
            stop: CancellationToken::new(),
            applied: AtomicI64::new(-1),
            finished: AtomicBool::new(false),
            last_batch_size: AtomicU64::new(0),
            docs_written: AtomicU64::new(0),
            applied_source_ms: AtomicU64::new(0),
            lag_split_ms: Default::default(),
            failure: std::sync::Mutex::new(None),
        }
    }
}

/// What every worker of a process shares.
pub struct WorkerContext {
    pub writer: Writer,
    pub dead_letters: DeadLetters,
    pub config: SinkConfig,
    pub pacer: Option<crate::pacer::Pacer>,
    pub board: crate::status::StatusBoard,
    /// Reads the other partitions' progress for unique-index conflicts (`None`: every
    /// partition counts as past, as in tests of the writer alone).
    pub progress: Option<Arc<super::conflicts::TopicProgress>>,
    /// Applies metadata messages (see `metadata`).
    pub metadata: MetadataApplier,
    /// Each partition's fence history (see `fences`).
    pub fences: FenceStore,
}

impl WorkerContext {
    pub fn new(
        writer: Writer,
        dead_letters: DeadLetters,
        config: SinkConfig,
        board: crate::status::StatusBoard,
        progress: Option<Arc<super::conflicts::TopicProgress>>,
    ) -> Self {
        let pacer = crate::pacer::Pacer::per_second(config.max_docs_per_sec);
        let fences = FenceStore::new(writer.client(), &config.state_database);
        WorkerContext { writer, dead_letters, config, pacer, board, progress, metadata: MetadataApplier::default(), fences }
    }
}

/// Runs one partition's worker. `predecessor`: the partition's previous worker in this
/// process, when a revoke gave up waiting for it; nothing is read or written before it is
/// silent (one writer per partition).
pub async fn run<C: ConsumerContext + 'static>(
    ctx: Arc<WorkerContext>,
    shared: Arc<PartitionShared>,
    mut queue: PartitionQueue<C>,
    predecessor: Option<Arc<PartitionShared>>,
) {
    if let Some(old) = predecessor {
        while !old.finished.load(Ordering::SeqCst) {
            if sleep_unless_stopped(&shared.stop, Duration::from_millis(20)).await.is_err() {
                return finish(queue, &shared);
            }
        }
    }
    // librdkafka calls this when the queue goes from empty to not empty; a wake-up that
    // comes while nobody waits is kept for the next wait.
    let arrived = Arc::new(Notify::new());
    {
        let arrived = Arc::clone(&arrived);
        queue.set_nonempty_callback(move || arrived.notify_one());
    }
    let batch_size = ctx.config.batch_size;
    let batch_wait = Duration::from_millis(ctx.config.batch_ms);
    // Parts of an event too large for one message, kept from batch to batch until whole.
    let mut joiner = crate::parts::Joiner::default();
    // Late sendings of earlier source runs are left out; the fence is rebuilt from the
    // stored history as it stood at the first offset read (see `crate::fence`).
    let Ok(mut history) = until_done(&ctx, &shared, "reading the partition's fence history", || ctx.fences.load(&shared.topic, shared.partition)).await else {
        return finish(queue, &shared);
    };
    let mut fence: Option<Fence> = None;
    'batches: loop {
        let mut batch = Vec::new();
        let mut deadline = None;
        loop {
            while batch.len() < batch_size {
                match queue.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(m)) => batch.push(m),
                    Some(Err(e)) if super::group::is_offset_lost(&e) => {
                        shared.fail(WorkerFailure::OffsetLost(e.to_string()));
                        break 'batches;
                    }
                    Some(Err(e)) => warn!(topic = %shared.topic, partition = shared.partition, "consumer: {e}"),
                }
            }
            if batch.len() >= batch_size {
                break;
            }
            if batch.is_empty() {
                tokio::select! {
                    biased;
                    _ = shared.stop.cancelled() => break 'batches,
                    _ = arrived.notified() => continue,
                }
            }
            let until = *deadline.get_or_insert_with(|| Instant::now() + batch_wait);
            tokio::select! {
                biased;
                // A revoked partition's worker must fall silent: the partial batch is not
                // written (nothing of it is committed; the next owner reads it again).
                _ = shared.stop.cancelled() => break 'batches,
                _ = arrived.notified() => {}
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        let last_offset = batch.last().map(|m| m.offset()).unwrap_or(-1);
        let first_offset = batch.first().map(|m| m.offset()).unwrap_or(-1);
        let fence = fence.get_or_insert_with(|| Fence::at(std::mem::take(&mut history), first_offset));
        let inputs = super::input::inputs(&batch, fence, &mut joiner, &shared.topic, shared.partition);
        if apply_batch(&ctx, &shared, batch.len(), &inputs).await.is_err() {
            break;
        }
        // A raised generation is stored before the offset past it is committed, so the
        // partition's next reader knows it too.
        if let Some(raised) = fence.history_update() {
            if until_done(&ctx, &shared, "saving the partition's fence history", || ctx.fences.save(&shared.topic, shared.partition, &raised)).await.is_err() {
                break;
            }
        }
        // Never past the first part of an event not joined yet: a restart reads it whole.
        shared.applied.store(joiner.hold().map_or(last_offset + 1, |h| h.min(last_offset + 1)), Ordering::SeqCst);
        if shared.stop.is_cancelled() {
            break;
        }
    }
    finish(queue, &shared);
}

/// Ends a worker: the queue (and the consumer it keeps alive) goes before the member
/// learns that this worker is done, so the member thread is the one that closes the
/// consumer.
fn finish<Q>(queue: Q, shared: &PartitionShared) {
    drop(queue);
    shared.finished.store(true, Ordering::SeqCst);
}

/// Applies one batch of `messages` messages, read as `batch` (see `input`).
async fn apply_batch(ctx: &WorkerContext, shared: &PartitionShared, messages: usize, batch: &[Input<'_>]) -> Result<(), Abandoned> {
    let labels = [("topic", shared.topic.clone()), ("partition", shared.partition.to_string())];
    metrics::counter!(m::SINK_MESSAGES, &labels).increment(messages as u64);
    metrics::histogram!(m::SINK_BATCH_SIZE, &labels).record(messages as f64);
    shared.last_batch_size.store(messages as u64, Ordering::Relaxed);

    // Events are written in segments: a clear marker is a barrier (what came before it
    // is written, then the partition's share is cleared, then what follows is written).
    let mut segment = Vec::with_capacity(batch.len());
    let mut letters: Vec<(usize, String)> = Vec::new();
    let mut newest_ts_ms = 0;
    let taken_ms = m::now_ms();
    // Source time and produce time of the batch's last event or heartbeat.
    let mut last_times: Option<(i64, Option<i64>)> = None;
    for (i, msg) in batch.iter().enumerate() {
        if let Some(reason) = &msg.refused {
            letters.push((i, reason.clone()));
            continue;
        }
        match debezium::decode(msg.key.as_deref(), msg.value.as_deref(), &shared.topic) {
            Ok(Decoded::Event(e)) => {
                newest_ts_ms = newest_ts_ms.max(e.source.ts_ms);
                last_times = Some((e.source.ts_ms, msg.produced_ms));
                segment.push((i, e));
            }
            // Everything of this partition up to its time came before it.
            Ok(Decoded::Heartbeat { source_ms }) => {
                newest_ts_ms = newest_ts_ms.max(source_ms);
                last_times = Some((source_ms, msg.produced_ms));
            }
            Ok(Decoded::Tombstone) => {}
            Ok(Decoded::Clear(marker)) => {
                write_events(ctx, shared, std::mem::take(&mut segment), &mut letters, batch).await?;
                clear_share(ctx, shared, &marker).await?;
            }
            // A barrier too: the collection exists with its options before what follows.
            Ok(Decoded::Metadata(message)) => {
                write_events(ctx, shared, std::mem::take(&mut segment), &mut letters, batch).await?;
                if let Some(reason) = apply_metadata(ctx, shared, &message).await? {
                    letters.push((i, reason));
                }
            }
            Err(e) => letters.push((i, format!("undecodable message: {e}"))),
        }
    }
    write_events(ctx, shared, segment, &mut letters, batch).await?;
    if newest_ts_ms > 0 {
        shared.applied_source_ms.fetch_max(newest_ts_ms.max(0) as u64, Ordering::Relaxed);
        metrics::gauge!(m::SINK_LAG_SECONDS, &labels).set(m::seconds_since((newest_ts_ms / 1000) as u32));
    }
    if let Some((source_ms, Some(produced_ms))) = last_times {
        let split = super::progress::lag_split(source_ms, produced_ms, taken_ms, m::now_ms());
        for ((slot, value), name) in shared.lag_split_ms.iter().zip(split).zip([m::SINK_LAG_SOURCE_SECONDS, m::SINK_LAG_TRANSPORT_SECONDS, m::SINK_LAG_APPLY_SECONDS]) {
            slot.store(value, Ordering::Relaxed);
            metrics::gauge!(name, &labels).set(value as f64 / 1000.0);
        }
    }

    letters.sort_by_key(|(i, _)| *i);
    for (i, reason) in letters {
        let msg = &batch[i];
        warn!(topic = %shared.topic, partition = shared.partition, offset = msg.offset, %reason, "sending message to the dead-letter topic");
        let letter = DeadLetter {
            key: msg.key.as_deref(),
            value: msg.value.as_deref(),
            reason: &reason,
            topic: &shared.topic,
            partition: shared.partition,
            offset: msg.offset,
        };
        let mut backoff = Duration::from_millis(100);
        while let Err(e) = ctx.dead_letters.send(&letter).await {
            warn!("{e}; retrying");
            if sleep_unless_stopped(&shared.stop, backoff).await.is_err() {
                return Err(Abandoned);
            }
            backoff = (backoff * 2).min(Duration::from_millis(ctx.config.max_backoff_ms));
        }
        ctx.board.add_dead_letters(1);
    }
    Ok(())
}

/// Folds and writes one segment of a batch; documents the target refuses for good are
/// added to `letters` (by message position) with the reason.
/// `batch`: the inputs the events were decoded from (a document in a unique-index conflict
/// is decoded again to be written one event at a time).
async fn write_events(
    ctx: &WorkerContext,
    shared: &PartitionShared,
    events: Vec<(usize, ChangeEvent)>,
    letters: &mut Vec<(usize, String)>,
    batch: &[Input<'_>],
) -> Result<(), Abandoned> {
    if events.is_empty() {
        return Ok(());
    }
    let labels = [("topic", shared.topic.clone()), ("partition", shared.partition.to_string())];
    let newest_ts_ms = events.iter().map(|(_, e)| e.source.ts_ms).max().unwrap_or(0);
    let docs = fold(events);
    if let Some(pacer) = &ctx.pacer {
        // Waiting for the rate limit ends at a stop too: nothing written, nothing committed.
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return Err(Abandoned),
            _ = pacer.take(docs.len() as u64) => {}
        }
    }
    let started = Instant::now();
    let one_by_one = |doc: usize| -> Vec<DocAction> {
        docs[doc]
            .messages
            .iter()
            .filter_map(|&i| match debezium::decode(batch[i].key.as_deref(), batch[i].value.as_deref(), &shared.topic) {
                Ok(Decoded::Event(e)) => fold([(i, e)]).pop().map(|d| d.action),
                _ => None,
            })
            .collect()
    };
    let Written { poison: failures, refused_patches } = write_with_retry(ctx, shared, &docs, newest_ts_ms, &one_by_one).await?;
    metrics::histogram!(m::SINK_WRITE_SECONDS, &labels).record(started.elapsed().as_secs_f64());
    let written = (docs.len() - failures.len()) as u64;
    metrics::counter!(m::SINK_DOCS_WRITTEN, &labels).increment(written);
    shared.docs_written.fetch_add(written, Ordering::Relaxed);
    for f in failures.values() {
        let reason = format!("the target refused the document (code {}, {:?}): {}", f.code, f.class, f.message);
        letters.extend(docs[f.doc].messages.iter().map(|&i| (i, reason.clone())));
    }
    letters.extend(refused_patches);
    Ok(())
}

/// Applies a metadata message, retrying transient failures until it is applied or the
/// worker is told to stop. `Some(reason)`: what the target refused (dead-lettered).
async fn apply_metadata(ctx: &WorkerContext, shared: &PartitionShared, message: &MetadataMessage) -> Result<Option<String>, Abandoned> {
    let target = ctx.config.target_namespace(&message.metadata.ns);
    let labels = [("topic", shared.topic.clone()), ("partition", shared.partition.to_string())];
    let mut backoff = Duration::from_millis(100);
    loop {
        let applying = ctx.metadata.apply(ctx.writer.client(), &ctx.config.state_database, &target, message);
        let outcome = tokio::select! {
            biased;
            // An index build goes on on the server; the partition's next owner waits for it.
            _ = shared.stop.cancelled() => return Err(Abandoned),
            outcome = applying => outcome,
        };
        match outcome {
            Ok(Applied::Done) => {
                if message.partition == message.home {
                    metrics::counter!(m::SINK_METADATA_APPLIED, &labels).increment(1);
                }
                return Ok(None);
            }
            Ok(Applied::Refused(reason)) => {
                metrics::counter!(m::SINK_METADATA_REFUSED, &labels).increment(1);
                tracing::error!(target_ns = %target, %reason, "the target cannot take the source's collection metadata: it differs from the source until this is fixed by hand (docrepl verify shows the drift)");
                return Ok(Some(format!("the target cannot take the collection's metadata: {reason}")));
            }
            Err(e) => {
                warn!(target_ns = %target, "applying collection metadata: {e}; retrying in {backoff:?}");
                sleep_unless_stopped(&shared.stop, backoff).await.map_err(|_| Abandoned)?;
                backoff = (backoff * 2).min(Duration::from_millis(ctx.config.max_backoff_ms));
            }
        }
    }
}

/// Clears the partition's share of the target collection for a clear marker, retrying
/// until it succeeds or the worker is told to stop.
async fn clear_share(ctx: &WorkerContext, shared: &PartitionShared, marker: &ClearMarker) -> Result<(), Abandoned> {
    let ns = ctx.config.target_namespace(&marker.ns);
    let what = format!("clear marker of {ns}");
    let deleted = until_done(ctx, shared, &what, || ctx.writer.clear_partition_share(&ns, marker.partition, marker.partitions, &shared.stop)).await?;
    warn!(target = %ns, partition = marker.partition, deleted, reason = %marker.reason, "clear marker: cleared this partition's share of the target");
    Ok(())
}

/// Runs `op` until it succeeds, waiting with backoff between failures (logged as `what`);
/// `Err(Abandoned)` when the worker is told to stop while it waits. An attempt under way
/// is never dropped halfway (a write the server would still carry out after the worker
/// fell silent): `op` honours the stop itself where it must.
async fn until_done<T, E, Fut>(ctx: &WorkerContext, shared: &PartitionShared, what: &str, mut op: impl FnMut() -> Fut) -> Result<T, Abandoned>
where
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) => {
                warn!(topic = %shared.topic, partition = shared.partition, "{what}: {e}; retrying in {backoff:?}");
                sleep_unless_stopped(&shared.stop, backoff).await.map_err(|_| Abandoned)?;
                backoff = (backoff * 2).min(Duration::from_millis(ctx.config.max_backoff_ms));
            }
        }
    }
}
