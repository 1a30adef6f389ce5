//! One collection's reader: initial copy (when there is no checkpoint), then the change
//! stream, each event encoded as a Debezium envelope and produced to the collection's
//! topic. Reading and encoding run in one task, producing and acknowledgement tracking
//! in another, joined by a bounded channel; the resume token is saved only over the
//! acknowledged prefix (see `watermark`). The read sides live in `copy` and `stream`,
//! the messages between the two halves in `outgoing`, the record encoding in `encode`,
//! the clear markers in `clear_markers`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Bson, Timestamp};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::checkpoint::{Checkpoint, CheckpointStore, Position};
use super::convert::Origin;
use super::encode::Encoder;
pub use super::errors::ReaderError;
use super::lease::Grant;
use super::outgoing::{Outgoing, ReadEnd};
use super::pipeline::PipelineChoice;
use super::watermark::AckWatermark;
use super::{HistoryLostPolicy, SourceConfig};
use crate::flavor::Flavor;
use crate::kafka::delivery::{AckProducer, Failure, InFlight, Ticket};
use crate::metrics as m;

/// Most events handed to the producer and not yet acknowledged, per reader. Kept small
/// enough that the broker drains them well within the producer's delivery timeout (a
/// fraction of the lease): a slow broker (sqlite storage: ~38k msg/s) must not make
/// queued messages time out.
const MAX_IN_FLIGHT: usize = 20_000;
/// Events the pump takes from the read side at once (one lease check per chunk).
const RECEIVE_CHUNK: usize = 256;
/// The smallest message limit a reader lowers itself to after the broker refused messages
/// as too large (below it, the broker's limit is taken to be misconfigured: fatal).
const MIN_MESSAGE_BYTES: usize = 16 * 1024;

/// Everything a reader needs, shared by the readers of one process.
pub struct ReaderContext {
    pub client: mongodb::Client,
    pub producer: AckProducer,
    pub config: SourceConfig,
    /// Partitions of every collection topic (clear markers go to each).
    pub partitions: i32,
    pub dead_letter_topic: String,
    pub checkpoints: CheckpointStore,
    pub name: String,
    pub rs: String,
    pub instance: String,
    pub board: crate::status::StatusBoard,
    /// What the source cluster is (decides the copy's resume query, error reading).
    pub flavor: Flavor,
    /// The change-stream pipeline form in use (see `pipeline`).
    pub pipeline: PipelineChoice,
}

/// Why a reader stopped without an error.
#[derive(Debug, PartialEq)]
pub enum ReaderExit {
    Shutdown,
    /// The lease could not be renewed in time: stopped producing, a standby may take over.
    LeaseLost,
}

/// Which part of a reader's life the pump serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// The initial copy that started at this cluster time.
    Copy { at: Timestamp },
    Stream,
}

impl Phase {
    fn state(self) -> &'static str {
        match self {
            Phase::Copy { .. } => "copying",
            Phase::Stream => "streaming",
        }
    }
}

pub(super) enum PumpEnd {
    Read(ReadEnd),
    Exit(ReaderExit),
}

pub struct Reader {
    pub(super) ctx: Arc<ReaderContext>,
    pub(super) origin: Origin,
    pub(super) topic: String,
    pub(super) ns: String,
    /// The next stream leaves updateDescription out, to read past an event over 16 MB.
    pub(super) slim: AtomicBool,
    /// A copy just finished and its stream has not opened yet: lost history now means
    /// the copy took longer than the history reaches (fatal, never a recopy loop).
    pub(super) fresh_copy: AtomicBool,
    /// The largest message this reader's topic takes (see `Encoder::max_bytes`).
    pub(super) max_bytes: Arc<AtomicUsize>,
}

impl Reader {
    /// `max_bytes`: the largest message `topic` takes.
    pub fn new(ctx: Arc<ReaderContext>, coll: &str, topic: String, max_bytes: usize) -> Self {
        let ns = format!("{}.{}", ctx.config.database, coll);
        let origin = Origin {
            ns: crate::event::Namespace::new(&ctx.config.database, coll),
            name: ctx.name.clone(),
            rs: ctx.rs.clone(),
        };
        Reader {
            ctx,
            origin,
            topic,
            ns,
            slim: AtomicBool::new(false),
            fresh_copy: AtomicBool::new(false),
            max_bytes: Arc::new(AtomicUsize::new(max_bytes)),
        }
    }

    /// The source collection this reader reads.
    pub(super) fn collection(&self) -> mongodb::Collection<bson::RawDocumentBuf> {
        self.ctx.client.database(&self.origin.ns.db).collection(&self.origin.ns.coll)
    }

    pub(super) fn mongo_err(&self) -> impl Fn(mongodb::error::Error) -> ReaderError + '_ {
        move |source| ReaderError::Mongo { ns: self.ns.clone(), source }
    }

    /// Runs until shutdown, lease loss or an error. `lease` carries the local deadline
    /// until which this instance may produce.
    pub async fn run(&self, lease: watch::Receiver<Grant>, shutdown: &CancellationToken) -> Result<ReaderExit, ReaderError> {
        loop {
            let checkpoint = self
                .ctx
                .checkpoints
                .load(&self.ns)
                .await
                .map_err(|source| ReaderError::Checkpoint { ns: self.ns.clone(), source })?;
            let copy = match &checkpoint {
                Some(Checkpoint { position: Position::Copying { at, after }, .. }) => Some((*at, after.clone())),
                Some(_) => None,
                None if self.ctx.config.initial_copy => {
                    // Saved before the first document goes out: an interrupted copy goes on
                    // from the same cluster time, so the stream after it misses nothing.
                    let at = self.cluster_time().await?;
                    self.save(&Checkpoint { position: Position::Copying { at, after: None }, event_time: Some(at) }, &lease).await?;
                    Some((at, None))
                }
                None => {
                    let at = self.cluster_time().await?;
                    self.save(&Checkpoint { position: Position::StartAt(at), event_time: Some(at) }, &lease).await?;
                    continue;
                }
            };
            if let Some((at, after)) = copy {
                if let Some(exit) = self.initial_copy(at, after, &lease, shutdown).await? {
                    return Ok(exit);
                }
                self.save(&Checkpoint { position: Position::StartAt(at), event_time: Some(at) }, &lease).await?;
                self.fresh_copy.store(true, Ordering::Relaxed);
                continue;
            }
            let Some(mut checkpoint) = checkpoint else { continue };
            loop {
                match self.stream(&checkpoint, &lease, shutdown).await {
                    Ok(PumpEnd::Exit(exit)) => return Ok(exit),
                    Ok(PumpEnd::Read(ReadEnd::Invalidated(at))) => {
                        // The collection was dropped or renamed. Keep listening from just after
                        // the invalidate: a re-created collection is picked up again.
                        let at = at.map(|t| Timestamp { time: t.time, increment: t.increment + 1 });
                        let at = match at {
                            Some(t) => t,
                            None => self.cluster_time().await?,
                        };
                        info!(ns = %self.ns, "change stream invalidated (drop or rename); listening for a re-created collection");
                        checkpoint = Checkpoint { position: Position::StartAt(at), event_time: Some(at) };
                        self.save(&checkpoint, &lease).await?;
                    }
                    // A slim stream ends this way (only a copy ends with CopyDone): reload
                    // the position it saved.
                    Ok(PumpEnd::Read(ReadEnd::CopyDone | ReadEnd::Reopen)) => break,
                    Err(ReaderError::HistoryLost { .. }) if self.ctx.config.on_history_lost == HistoryLostPolicy::Recopy => {
                        warn!(ns = %self.ns, "change stream history lost; starting a fresh initial copy (source.on_history_lost = \"recopy\")");
                        // The markers first, the checkpoint cleared after they are acknowledged:
                        // a crash in between finds the lost history again and resends them.
                        if let Some(exit) = self.send_clear_markers("change stream history lost: a fresh initial copy follows", &lease).await? {
                            return Ok(exit);
                        }
                        let epoch = lease.borrow().epoch;
                        self.ctx
                            .checkpoints
                            .clear(&self.ns, epoch)
                            .await
                            .map_err(|e| ReaderError::from_checkpoint(&self.ns, e))?;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// The source's current cluster time: the copy starts after it and the stream at it.
    pub(super) async fn cluster_time(&self) -> Result<Timestamp, ReaderError> {
        let reply = self
            .ctx
            .client
            .database("admin")
            .run_command(doc! {"hello": 1})
            .await
            .map_err(self.mongo_err())?;
        let ts = reply
            .get_timestamp("operationTime")
            .ok()
            .or_else(|| reply.get_document("$clusterTime").ok().and_then(|c| c.get_timestamp("clusterTime").ok()));
        ts.ok_or_else(|| ReaderError::Encode { ns: self.ns.clone(), message: "the source reported no cluster time (is it a replica set?)".into() })
    }

    /// Saves `cp` under the lease's current epoch (refused when a successor saved since).
    pub(super) async fn save(&self, cp: &Checkpoint, lease: &watch::Receiver<Grant>) -> Result<(), ReaderError> {
        let epoch = lease.borrow().epoch;
        self.ctx
            .checkpoints
            .save(&self.ns, cp, &self.ctx.instance, epoch)
            .await
            .map_err(|e| ReaderError::from_checkpoint(&self.ns, e))?;
        metrics::counter!(m::SOURCE_CHECKPOINTS, "collection" => self.ns.clone()).increment(1);
        if let Some(t) = cp.event_time {
            metrics::gauge!(m::SOURCE_TOKEN_AGE_SECONDS, "collection" => self.ns.clone()).set(m::seconds_since(t.time));
            self.ctx.board.update_collection(&self.ns, |c| c.checkpoint_time = Some(t.time));
        }
        Ok(())
    }

    pub(super) fn encoder(&self) -> Encoder {
        Encoder {
            ns: self.ns.clone(),
            tombstones: self.ctx.config.tombstones,
            max_bytes: Arc::clone(&self.max_bytes),
            oversize: self.ctx.config.on_oversize,
        }
    }

    /// Produces what the read side sends, tracks acknowledgements, saves checkpoints.
    pub(super) async fn pump(
        &self,
        mut rx: mpsc::Receiver<Outgoing>,
        mut event_time: Option<Timestamp>,
        phase: Phase,
        lease: &watch::Receiver<Grant>,
        shutdown: &CancellationToken,
    ) -> Result<PumpEnd, ReaderError> {
        let mut watermark: AckWatermark<(Bson, Option<Timestamp>)> = AckWatermark::new();
        let mut in_flight = InFlight::default();
        let mut saved: Option<Bson> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(self.ctx.config.checkpoint_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut read_end: Option<ReadEnd> = None;
        // Counted locally and shown on the status board once per tick (cheap per event).
        let mut acked_since_tick = 0u64;
        let mut caught_up = false;
        self.ctx.board.update_collection(&self.ns, |c| c.state = phase.state().into());
        let mut items = Vec::with_capacity(RECEIVE_CHUNK);
        let exit = 'pump: loop {
            if read_end.is_some() && in_flight.due() == 0 {
                break None;
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Some(ReaderExit::Shutdown),
                _ = in_flight.arrived(), if in_flight.due() > 0 => {
                    for (seq, outcome) in in_flight.take() {
                        match outcome {
                            Ok(()) => {
                                watermark.acked(seq);
                                acked_since_tick += 1;
                            }
                            Err(failure) => return Err(self.delivery_failed(failure)),
                        }
                    }
                }
                _ = tick.tick() => {
                    if Instant::now() >= lease.borrow().deadline {
                        break Some(ReaderExit::LeaseLost);
                    }
                    self.checkpoint_if_newer(phase, &watermark, &mut saved, lease).await?;
                    self.show_progress(phase, std::mem::take(&mut acked_since_tick), event_time, caught_up);
                }
                received = rx.recv_many(&mut items, RECEIVE_CHUNK), if read_end.is_none() && in_flight.due() < MAX_IN_FLIGHT => {
                    if received == 0 {
                        return Err(ReaderError::Encode { ns: self.ns.clone(), message: "the read side stopped unexpectedly".into() });
                    }
                    // A replaced reader must fall silent before its successor starts.
                    if Instant::now() >= lease.borrow().deadline {
                        break Some(ReaderExit::LeaseLost);
                    }
                    for item in items.drain(..) {
                        match item {
                            Outgoing::Event { records, token, event_time: t } => {
                                event_time = t.or(event_time);
                                caught_up = false;
                                let n = records.len();
                                for (i, record) in records.into_iter().enumerate() {
                                    let token = if i + 1 == n { token.clone().map(|tk| (tk, event_time)) } else { None };
                                    let seq = watermark.sent(token);
                                    let headers = record.part.as_deref().map(|p| OwnedHeaders::new().insert(Header { key: crate::parts::HEADER, value: Some(p) }));
                                    if !self.send(&self.topic, &record.key, record.value.as_deref(), headers, in_flight.ticket(seq), lease).await? {
                                        break 'pump Some(ReaderExit::LeaseLost);
                                    }
                                    in_flight.sent();
                                }
                            }
                            Outgoing::DeadLetter { key, reason, token, event_time: t } => {
                                event_time = t.or(event_time);
                                metrics::counter!(m::SOURCE_OVERSIZE, "collection" => self.ns.clone()).increment(1);
                                warn!(ns = %self.ns, %reason, "event cannot be carried on the topic: sent to the dead-letter topic");
                                let seq = watermark.sent(token.map(|tk| (tk, event_time)));
                                let headers = OwnedHeaders::new()
                                    .insert(Header { key: "docrepl.reason", value: Some(reason.as_str()) })
                                    .insert(Header { key: "docrepl.source.topic", value: Some(self.topic.as_str()) });
                                if !self.send(&self.ctx.dead_letter_topic, &key, None, Some(headers), in_flight.ticket(seq), lease).await? {
                                    break 'pump Some(ReaderExit::LeaseLost);
                                }
                                in_flight.sent();
                            }
                            Outgoing::Idle(token) => {
                                caught_up = true;
                                // An idle stream's token still moves with the cluster clock.
                                event_time = super::checkpoint::token_cluster_time(&token).or(event_time);
                                watermark.idle_token((token, event_time));
                            }
                            Outgoing::Clear { reason, token } => {
                                // Every event before the DDL is already queued ahead of the
                                // markers in each partition.
                                if let Some(exit) = self.send_clear_markers(&reason, lease).await? {
                                    break 'pump Some(exit);
                                }
                                if let Some(t) = token {
                                    watermark.idle_token((t, event_time));
                                }
                            }
                            Outgoing::Done(Ok(end)) => read_end = Some(end),
                            Outgoing::Done(Err(e)) => return Err(e),
                        }
                    }
                }
            }
        };
        // Stopping: let what is in flight be acknowledged (bounded by the producer's
        // message timeout), then save the position it reached.
        let drain_deadline = Instant::now() + Duration::from_secs(8);
        'drain: while in_flight.due() > 0 {
            if tokio::time::timeout_at(drain_deadline, in_flight.arrived()).await.is_err() {
                break;
            }
            for (seq, outcome) in in_flight.take() {
                if let Err(failure) = outcome {
                    warn!(ns = %self.ns, message = %failure.message, "delivery failed while stopping; the next start resends from the saved token");
                    break 'drain;
                }
                watermark.acked(seq);
            }
        }
        self.checkpoint_if_newer(phase, &watermark, &mut saved, lease).await?;
        self.show_progress(phase, acked_since_tick, event_time, caught_up);
        Ok(match exit {
            Some(exit) => PumpEnd::Exit(exit),
            None => PumpEnd::Read(read_end.unwrap_or(ReadEnd::CopyDone)),
        })
    }

    /// Publishes counters to metrics and the status board (once per tick, not per event).
    fn show_progress(&self, phase: Phase, acked: u64, event_time: Option<Timestamp>, caught_up: bool) {
        metrics::counter!(m::SOURCE_EVENTS_PUBLISHED, "collection" => self.ns.clone()).increment(acked);
        let lag = if caught_up { Some(0.0) } else { event_time.map(|t| m::seconds_since(t.time)) };
        if let Some(lag) = lag {
            metrics::gauge!(m::SOURCE_LAG_SECONDS, "collection" => self.ns.clone()).set(lag);
        }
        self.ctx.board.update_collection(&self.ns, |c| {
            c.events_published += acked;
            if matches!(phase, Phase::Copy { .. }) {
                c.copied += acked;
            } else {
                c.last_event_time = event_time.map(|t| t.time).or(c.last_event_time);
                c.lag_seconds = lag;
            }
        });
    }

    /// Saves the newest position Kafka acknowledged with everything before it: a resume
    /// token while streaming, the last copied `_id` during the copy.
    async fn checkpoint_if_newer(
        &self,
        phase: Phase,
        watermark: &AckWatermark<(Bson, Option<Timestamp>)>,
        saved: &mut Option<Bson>,
        lease: &watch::Receiver<Grant>,
    ) -> Result<(), ReaderError> {
        if let Some((token, event_time)) = watermark.safe_token() {
            if saved.as_ref() != Some(token) {
                let position = match phase {
                    Phase::Copy { at } => Position::Copying { at, after: Some(token.clone()) },
                    Phase::Stream => Position::Token(token.clone()),
                };
                let cp = Checkpoint { position, event_time: *event_time };
                self.save(&cp, lease).await?;
                *saved = Some(token.clone());
            }
        }
        Ok(())
    }

    /// Hands one record to librdkafka, waiting (without blocking the runtime) while its
    /// bounded queue is full; its delivery report goes where `ticket` says. `false`: the
    /// lease's produce window ended while waiting (the pump checks it once per chunk of
    /// events, and only a full queue makes a chunk take long).
    async fn send(
        &self,
        topic: &str,
        key: &[u8],
        value: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        ticket: Box<Ticket>,
        lease: &watch::Receiver<Grant>,
    ) -> Result<bool, ReaderError> {
        let mut record: BaseRecord<'_, [u8], [u8], Box<Ticket>> = BaseRecord::with_opaque_to(topic, ticket).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        loop {
            match self.ctx.producer.send(record) {
                Ok(()) => return Ok(true),
                Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), again)) => {
                    record = again;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if Instant::now() >= lease.borrow().deadline {
                        return Ok(false);
                    }
                }
                Err((e, _)) => return Err(self.delivery_failed(Failure::from(&e))),
            }
        }
    }

    /// What a record Kafka did not take means for the reader. Any failure restarts it
    /// from its saved token; a refusal as too large also halves the message limit first,
    /// so the events are sent again in smaller parts (the topic's limit may be below the
    /// one configured or read); at the smallest limit the reader stops for good.
    fn delivery_failed(&self, failure: Failure) -> ReaderError {
        if failure.too_large {
            let now = self.max_bytes.load(Ordering::Relaxed);
            if now <= MIN_MESSAGE_BYTES {
                return ReaderError::BrokerRefusesSize { ns: self.ns.clone(), bytes: now, message: failure.message };
            }
            let lower = (now / 2).max(MIN_MESSAGE_BYTES);
            self.max_bytes.store(lower, Ordering::Relaxed);
            warn!(ns = %self.ns, from = now, to = lower, "the broker refused a message as too large: sending messages of at most {lower} bytes from now on (set kafka.max_message_bytes to the topic's max.message.bytes)");
        }
        ReaderError::Delivery { ns: self.ns.clone(), message: failure.message }
    }
}

