//! One collection's reader: initial copy (when there is no checkpoint), then the change
//! stream, each event encoded as a Debezium envelope and produced to the collection's
//! topic. Reading and encoding run in one task, producing and acknowledgement tracking
//! in another, joined by a bounded channel; the resume token is saved only over the
//! acknowledged prefix (see `watermark`). The read sides live in `copy` and `stream`,
//! the messages between the two halves in `outgoing`, the record encoding in `encode`,
//! the clear markers and metadata messages in `control`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bson::{Bson, Timestamp};
use rdkafka::message::{Header, OwnedHeaders};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::checkpoint::{Checkpoint, CheckpointStore, Position};
use super::convert::Origin;
use super::scope::Scope;
use super::encode::Encoder;
pub use super::errors::ReaderError;
use super::lease::Grant;
use super::outgoing::{Outgoing, ReadEnd};
use super::pipeline::PipelineChoice;
use super::route::{Route, Routes, Topics};
use super::watermark::AckWatermark;
use super::window::SendWindow;
use super::{HistoryLostPolicy, SourceConfig};
use crate::flavor::Flavor;
use crate::kafka::delivery::{AckProducer, InFlight};
use crate::metrics as m;

/// Most events handed to the producer and not yet acknowledged, per reader. Kept small
/// enough that the broker drains them well within the producer's delivery timeout (a
/// fraction of the lease): a slow broker (sqlite storage: ~38k msg/s) must not make
/// queued messages time out.
const MAX_IN_FLIGHT: usize = 20_000;
/// Events the pump takes from the read side at once (one lease check per chunk).
const RECEIVE_CHUNK: usize = 256;

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
    /// Creates the collection topics (a database reader does so on a collection's first event).
    pub topics: Topics,
    /// Initial copies running at once in this process (`source.copy_parallelism`).
    pub copies: tokio::sync::Semaphore,
    /// The collection metadata this process sent (see `metadata`).
    pub metadata_sent: super::metadata::Sent,
    /// Streams ask for metadata events (`showExpandedEvents`); cleared when the server
    /// refuses the option.
    pub expanded_events: AtomicBool,
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

/// What a reader reads.
pub(super) enum Reads {
    /// One collection: its initial copy, then its change stream.
    Collection(Arc<Route>),
    /// A whole database's change stream, each event sent to its collection's topic; the
    /// initial copies of its collections come first (see `database`).
    Database { db: String, scope: Scope, routes: Arc<Routes> },
}

pub struct Reader {
    pub(super) ctx: Arc<ReaderContext>,
    pub(super) reads: Reads,
    /// What the reader's lease and checkpoint are named by: `db.coll`, or `db.$database`
    /// for a database reader (see `database::unit_name`).
    pub(super) ns: String,
    /// The lease its records are stamped with (`<source.name>/<lease ns>`; a database
    /// reader's copies carry the database's): see `crate::fence`.
    pub(super) writer: String,
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
    pub fn new(ctx: Arc<ReaderContext>, db: &str, coll: &str, topic: String, max_bytes: usize) -> Self {
        let ns = format!("{db}.{coll}");
        let origin = Origin {
            ns: crate::event::Namespace::new(db, coll),
            name: ctx.name.clone(),
            rs: ctx.rs.clone(),
        };
        Reader {
            reads: Reads::Collection(Arc::new(Route { ns: ns.clone(), topic, origin })),
            writer: format!("{}/{ns}", ctx.name),
            ctx,
            ns,
            slim: AtomicBool::new(false),
            fresh_copy: AtomicBool::new(false),
            max_bytes: Arc::new(AtomicUsize::new(max_bytes)),
        }
    }

    /// The collection a collection reader reads (a database reader copies through
    /// collection readers of its own, see `database`).
    pub(super) fn route(&self) -> Result<&Arc<Route>, ReaderError> {
        match &self.reads {
            Reads::Collection(route) => Ok(route),
            Reads::Database { .. } => Err(ReaderError::Encode { ns: self.ns.clone(), message: "a database reader has no single collection".into() }),
        }
    }

    pub(super) fn collection(&self) -> Result<mongodb::Collection<bson::RawDocumentBuf>, ReaderError> {
        let ns = &self.route()?.origin.ns;
        Ok(self.ctx.client.database(&ns.db).collection(&ns.coll))
    }

    /// The collections whose topics this reader writes (a database reader's grow as
    /// their first events arrive).
    pub(super) fn members(&self) -> Vec<Arc<Route>> {
        match &self.reads {
            Reads::Collection(route) => vec![Arc::clone(route)],
            Reads::Database { routes, .. } => routes.all(),
        }
    }

    /// Updates this reader's status, and each of its collections' for a database reader.
    pub(super) fn show(&self, f: impl Fn(&mut crate::status::CollectionStatus)) {
        self.ctx.board.update_collection(&self.ns, &f);
        if let Reads::Database { .. } = self.reads {
            for route in self.members() {
                self.ctx.board.update_collection(&route.ns, &f);
            }
        }
    }

    /// The stamp of this run's records (see `crate::fence`): the generation is the lease
    /// epoch the run began with.
    pub(super) fn stamp(&self, lease: &watch::Receiver<Grant>) -> String {
        crate::fence::stamp(&self.writer, lease.borrow().generation)
    }

    pub(super) fn mongo_err(&self) -> impl Fn(mongodb::error::Error) -> ReaderError + '_ {
        move |source| ReaderError::Mongo { ns: self.ns.clone(), source }
    }

    /// Runs until shutdown, lease loss or an error. `lease` carries the local deadline
    /// until which this instance may produce.
    pub async fn run(&self, lease: watch::Receiver<Grant>, shutdown: &CancellationToken) -> Result<ReaderExit, ReaderError> {
        if let Reads::Database { .. } = self.reads {
            return self.run_database(lease, shutdown).await;
        }
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
                    let at = self.stream_start().await?;
                    self.save(&Checkpoint { position: Position::StartAt(at), event_time: Some(at) }, &lease).await?;
                    continue;
                }
            };
            if let Some((at, after)) = copy {
                // Bounded across the process: a thousand collections must not copy at once.
                let _permit = self.ctx.copies.acquire().await.map_err(|_| ReaderError::Encode { ns: self.ns.clone(), message: "copy slots closed".into() })?;
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
                    Ok(PumpEnd::Read(ReadEnd::CopyDone | ReadEnd::Reopen | ReadEnd::CopyRenamed(_))) => break,
                    Err(ReaderError::HistoryLost { .. }) if self.ctx.config.on_history_lost == HistoryLostPolicy::Recopy => {
                        warn!(ns = %self.ns, "change stream history lost; starting a fresh initial copy (source.on_history_lost = \"recopy\")");
                        // The markers first, the checkpoint cleared after they are acknowledged:
                        // a crash in between finds the lost history again and resends them.
                        if let Some(exit) = self.send_clear_markers(self.route()?, "change stream history lost: a fresh initial copy follows", &lease).await? {
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
        let ts = crate::mongo::cluster_time(&self.ctx.client).await.map_err(self.mongo_err())?;
        ts.ok_or_else(|| ReaderError::Encode { ns: self.ns.clone(), message: "the source reported no cluster time (is it a replica set?)".into() })
    }

    /// Where a stream with no checkpoint and no copy starts: `source.start_at` when set
    /// (a reversed pair's cutover point), else now.
    pub(super) async fn stream_start(&self) -> Result<Timestamp, ReaderError> {
        match self.ctx.config.start_at {
            Some(at) => Ok(at),
            None => self.cluster_time().await,
        }
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
            let age = m::seconds_since(t.time);
            for route in self.members() {
                metrics::gauge!(m::SOURCE_TOKEN_AGE_SECONDS, "collection" => route.ns.clone()).set(age);
            }
            self.show(|c| c.checkpoint_time = Some(t.time));
        }
        Ok(())
    }

    /// The encoder of `route`'s events.
    pub(super) fn encoder(&self, route: &Arc<Route>) -> Encoder {
        Encoder {
            route: Arc::clone(route),
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
        let mut window = SendWindow::new(super::lease::delivery_timeout(Duration::from_millis(self.ctx.config.lease_ttl_ms)), Instant::now().into_std());
        let mut saved: Option<Bson> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(self.ctx.config.checkpoint_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut read_end: Option<ReadEnd> = None;
        // Counted per collection as handed to Kafka (a failed delivery restarts the reader,
        // which sends them again), shown once per tick (cheap per event).
        let mut published = Published::default();
        let mut caught_up = false;
        let heartbeat_every = (self.ctx.config.heartbeat_ms > 0).then(|| Duration::from_millis(self.ctx.config.heartbeat_ms));
        let mut last_heartbeat = Instant::now();
        self.show(|c| c.state = phase.state().into());
        let mut items = Vec::with_capacity(RECEIVE_CHUNK);
        let stamp = self.stamp(lease);
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
                            Ok(()) => watermark.acked(seq),
                            Err(failure) => return Err(self.delivery_failed(failure)),
                        }
                    }
                    window.acked(in_flight.taken_bytes(), Instant::now().into_std());
                }
                _ = tick.tick() => {
                    if Instant::now() >= lease.borrow().deadline {
                        break Some(ReaderExit::LeaseLost);
                    }
                    // Idle and everything acknowledged: the sinks learn that time moved on.
                    if let (Phase::Stream, true, 0, Some(at)) = (phase, caught_up, in_flight.due(), event_time) {
                        if heartbeat_every.is_some_and(|every| last_heartbeat.elapsed() >= every) {
                            self.send_heartbeats(at, &stamp, &mut watermark, &mut in_flight);
                            last_heartbeat = Instant::now();
                        }
                    }
                    self.checkpoint_if_newer(phase, &watermark, &mut saved, lease).await?;
                    self.show_progress(phase, &mut published, event_time, caught_up);
                }
                received = rx.recv_many(&mut items, RECEIVE_CHUNK), if read_end.is_none() && in_flight.due() < MAX_IN_FLIGHT && window.allows(in_flight.due_bytes()) => {
                    if received == 0 {
                        return Err(ReaderError::Encode { ns: self.ns.clone(), message: "the read side stopped unexpectedly".into() });
                    }
                    // A replaced reader must fall silent before its successor starts.
                    if Instant::now() >= lease.borrow().deadline {
                        break Some(ReaderExit::LeaseLost);
                    }
                    for item in items.drain(..) {
                        match item {
                            Outgoing::Event { route, records, token, event_time: t } => {
                                event_time = t.or(event_time);
                                caught_up = false;
                                published.add(&route);
                                let n = records.len();
                                for (i, record) in records.into_iter().enumerate() {
                                    let token = if i + 1 == n { token.clone().map(|tk| (tk, event_time)) } else { None };
                                    let seq = watermark.sent(token);
                                    let headers = record.part.as_deref().map(|p| OwnedHeaders::new().insert(Header { key: crate::parts::HEADER, value: Some(p) }));
                                    let bytes = record.key.len() + record.value.as_ref().map_or(0, |v| v.len());
                                    if !self.send(&route.topic, &record.key, record.value.as_deref(), headers, &stamp, in_flight.ticket(seq, bytes), lease).await? {
                                        break 'pump Some(ReaderExit::LeaseLost);
                                    }
                                    in_flight.sent(bytes);
                                }
                            }
                            Outgoing::DeadLetter { route, key, reason, token, event_time: t } => {
                                event_time = t.or(event_time);
                                metrics::counter!(m::SOURCE_OVERSIZE, "collection" => route.ns.clone()).increment(1);
                                warn!(ns = %route.ns, %reason, "event cannot be carried on the topic: sent to the dead-letter topic");
                                let seq = watermark.sent(token.map(|tk| (tk, event_time)));
                                let headers = OwnedHeaders::new()
                                    .insert(Header { key: "docrepl.reason", value: Some(reason.as_str()) })
                                    .insert(Header { key: "docrepl.source.topic", value: Some(route.topic.as_str()) });
                                if !self.send(&self.ctx.dead_letter_topic, &key, None, Some(headers), &stamp, in_flight.ticket(seq, key.len()), lease).await? {
                                    break 'pump Some(ReaderExit::LeaseLost);
                                }
                                in_flight.sent(key.len());
                            }
                            Outgoing::Idle(token) => {
                                caught_up = true;
                                // An idle stream's token still moves with the cluster clock.
                                event_time = super::checkpoint::token_cluster_time(&token).or(event_time);
                                watermark.idle_token((token, event_time));
                            }
                            Outgoing::Clear { route, reason, token } => {
                                // Every event before the DDL is already queued ahead of the
                                // markers in each partition.
                                if let Some(exit) = self.send_clear_markers(&route, &reason, lease).await? {
                                    break 'pump Some(exit);
                                }
                                if let Some(t) = token {
                                    watermark.idle_token((t, event_time));
                                }
                            }
                            Outgoing::Metadata { route, token } => {
                                if let Some(exit) = self.send_current_metadata(&route, lease).await? {
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
        self.show_progress(phase, &mut published, event_time, caught_up);
        Ok(match exit {
            Some(exit) => PumpEnd::Exit(exit),
            None => PumpEnd::Read(read_end.unwrap_or(ReadEnd::CopyDone)),
        })
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
}

/// Events handed to Kafka per collection since the last tick.
#[derive(Default)]
pub(super) struct Published(pub(super) HashMap<String, (Arc<Route>, u64)>);

impl Published {
    pub(super) fn add(&mut self, route: &Arc<Route>) {
        match self.0.get_mut(&route.ns) {
            Some((_, n)) => *n += 1,
            None => {
                self.0.insert(route.ns.clone(), (Arc::clone(route), 1));
            }
        }
    }
}
