//! A collection's or a database's change stream: opened from the saved position with the
//! pipeline the server accepts (see `pipeline`), read into the reader's pump (a database
//! stream's events each to their collection's route, see `route`), and its failures
//! turned into the errors the operator must see (see `errors`): lost history, change
//! streams not enabled (DocumentDB), a copy that outran the history, an event over 16 MB.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bson::{Bson, Document, RawDocumentBuf};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::options::FullDocumentType;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::checkpoint::{Checkpoint, Position};
use super::convert::StreamItem;
use super::scope::Scope;
use super::encode::Encoder;
use super::errors::{classify_error, ReaderError, StreamFailure};
use super::lease::Grant;
use super::outgoing::{Outgoing, ReadEnd};
use super::reader::{Phase, PumpEnd, Reader, ReaderContext, Reads};
use super::route::{Route, Routes};
use super::{DdlPolicy, OversizePolicy};
use crate::metrics as m;

/// How long a slim stream (no updateDescription, after an event over 16 MB) runs before
/// the reader reopens the full one.
const SLIM_FOR: Duration = Duration::from_secs(30);

impl Reader {
    /// Streams changes from `checkpoint` until stopped.
    pub(super) async fn stream(
        &self,
        checkpoint: &Checkpoint,
        lease: &watch::Receiver<Grant>,
        shutdown: &CancellationToken,
    ) -> Result<PumpEnd, ReaderError> {
        // Indexes and options as they are now, before the first event of this stream.
        if let Some(exit) = self.send_all_metadata(lease).await? {
            return Ok(PumpEnd::Exit(exit));
        }
        let slim = self.slim.load(Ordering::Relaxed);
        let stream = loop {
            let form = self.ctx.pipeline.current();
            match self.open(form.stages(slim), Some(&checkpoint.position)).await? {
                Ok(s) => break s,
                Err(e) if classify_error(&e, self.ctx.flavor) == StreamFailure::UnsupportedPipeline => {
                    // Probe, don't guess: the server refused a stage or operator, so try the
                    // form made only of what DocumentDB supports (once per process).
                    if !self.ctx.pipeline.fall_back(form, &self.ns, &e.to_string(), &self.ctx.board) {
                        return Err(ReaderError::PipelineRefused { ns: self.ns.clone(), pipeline: form.describe(), message: e.to_string() });
                    }
                }
                Err(e) => return Err(self.stream_failed(e, checkpoint, true).await),
            }
        };
        // The first open after a copy succeeded: the copy did not outrun the history.
        self.fresh_copy.store(false, Ordering::Relaxed);
        if slim {
            warn!(ns = %self.ns, "reading past an event over 16 MB with updateDescription left out (full documents still carry every change) for {SLIM_FOR:?}");
        }
        info!(ns = %self.ns, "streaming changes");
        let slim_until = slim.then(|| Instant::now() + SLIM_FOR);
        let (tx, rx) = mpsc::channel(4096);
        let destination = self.destination();
        let ns = self.ns.clone();
        let replicate_ddl = self.ctx.config.ddl == DdlPolicy::Replicate;
        let read = tokio::spawn(async move {
            let mut stream = stream;
            let mut last_idle: Option<Bson> = None;
            let events_read = metrics::counter!(m::SOURCE_EVENTS_READ, "collection" => ns.clone());
            let mut read_any = false;
            loop {
                // A slim stream (see `pipeline`) ends once past the large event, and the
                // next one carries updateDescription again.
                if slim_until.is_some_and(|t| read_any && Instant::now() >= t) {
                    let _ = tx.send(Outgoing::Done(Ok(ReadEnd::Reopen))).await;
                    break;
                }
                let item = match stream.next_if_any().await {
                    Ok(Some(ev)) => {
                        read_any = true;
                        events_read.increment(1);
                        if !forward(ev, &destination, replicate_ddl, &tx).await {
                            break;
                        }
                        continue;
                    }
                    Ok(None) => {
                        let token = stream.resume_token().and_then(|t| bson::to_bson(&t).ok());
                        match token {
                            Some(t) if last_idle.as_ref() != Some(&t) => {
                                last_idle = Some(t.clone());
                                Outgoing::Idle(t)
                            }
                            _ => continue,
                        }
                    }
                    Err(source) => Outgoing::Done(Err(ReaderError::Mongo { ns: ns.clone(), source })),
                };
                let last = matches!(item, Outgoing::Done(_));
                if tx.send(item).await.is_err() || last {
                    break;
                }
            }
        });
        let poller = self.poll_metadata(lease.clone());
        let result = self.pump(rx, checkpoint.event_time, Phase::Stream, lease, shutdown).await;
        read.abort();
        if let Some(poller) = poller {
            poller.abort();
        }
        match result {
            Ok(PumpEnd::Read(ReadEnd::Reopen)) => {
                self.slim.store(false, Ordering::Relaxed);
                Ok(PumpEnd::Read(ReadEnd::Reopen))
            }
            Err(ReaderError::Mongo { source, .. }) => Err(self.stream_failed(source, checkpoint, false).await),
            other => other,
        }
    }

    /// Opens the collection's or the database's stream with `stages` (after a database
    /// reader's scope filter), from `position` (or from now). The outer error: the saved
    /// token is unreadable.
    async fn open(
        &self,
        stages: Vec<Document>,
        position: Option<&Position>,
    ) -> Result<mongodb::error::Result<ChangeStream<ChangeStreamEvent<RawDocumentBuf>>>, ReaderError> {
        let token = match position {
            Some(Position::Token(t)) => Some(
                bson::from_bson::<ResumeToken>(t.clone())
                    .map_err(|e| ReaderError::Encode { ns: self.ns.clone(), message: format!("saved resume token is unreadable: {e}") })?,
            ),
            _ => None,
        };
        // `run` finishes a copy before it streams, so a copy's position starts at its time.
        let start_at = match position {
            Some(Position::StartAt(ts) | Position::Copying { at: ts, .. }) => Some(*ts),
            _ => None,
        };
        let expanded = position.is_some() && self.ctx.config.metadata.replicate && self.ctx.expanded_events.load(Ordering::Relaxed);
        let opened = self.open_with(stages.clone(), position, token.clone(), start_at, expanded).await;
        if expanded && opened.as_ref().err().is_some_and(refuses_option) {
            // Probe, don't guess: a server without metadata events (before MongoDB 6.0)
            // refuses the option; one that opens without it gets no more of them.
            if let Ok(stream) = self.open_with(stages, position, token, start_at, false).await {
                if self.ctx.expanded_events.swap(false, Ordering::Relaxed) {
                    let refusal = opened.as_ref().err().map(ToString::to_string).unwrap_or_default();
                    warn!(ns = %self.ns, "the source refused metadata events (showExpandedEvents: {refusal}): index and option changes reach the target through the listing every source.metadata.poll_secs");
                }
                return Ok(Ok(stream));
            }
        }
        Ok(opened)
    }

    /// Opens the stream with `stages` from the position's `token` or `start_at`;
    /// `expanded`: with the metadata events.
    async fn open_with(
        &self,
        stages: Vec<Document>,
        position: Option<&Position>,
        token: Option<ResumeToken>,
        start_at: Option<bson::Timestamp>,
        expanded: bool,
    ) -> mongodb::error::Result<ChangeStream<ChangeStreamEvent<RawDocumentBuf>>> {
        /// The same options on a collection's or a database's stream.
        fn configured<T>(mut watch: mongodb::action::Watch<'_, T>, from_position: bool, lookup: bool, token: Option<ResumeToken>, start_at: Option<bson::Timestamp>, expanded: bool) -> mongodb::action::Watch<'_, T> {
            if from_position {
                if lookup {
                    watch = watch.full_document(FullDocumentType::UpdateLookup);
                }
                watch = watch.batch_size(2000).max_await_time(Duration::from_millis(500));
            }
            if expanded {
                watch = watch.show_expanded_events(true);
            }
            if let Some(t) = start_at {
                watch = watch.start_at_operation_time(t);
            }
            watch.resume_after(token)
        }
        let from_position = position.is_some();
        let lookup = self.ctx.config.capture_mode == super::CaptureMode::ChangeStreamsUpdateFull;
        match &self.reads {
            Reads::Collection(route) => {
                let coll = self.ctx.client.database(&route.origin.ns.db).collection::<RawDocumentBuf>(&route.origin.ns.coll);
                configured(coll.watch().pipeline(stages).selection_criteria(crate::mongo::primary()), from_position, lookup, token, start_at, expanded).await
            }
            Reads::Database { db, scope, .. } => {
                let mut pipeline = vec![scope.match_stage()];
                pipeline.extend(stages);
                let database = self.ctx.client.database(db);
                configured(database.watch().pipeline(pipeline).selection_criteria(crate::mongo::primary()), from_position, lookup, token, start_at, expanded).await.map(ChangeStream::with_type)
            }
        }
    }

    /// Where this reader's events go.
    fn destination(&self) -> Destination {
        match &self.reads {
            Reads::Collection(route) => Destination::One(self.encoder(route)),
            Reads::Database { scope, routes, db } => Destination::Database {
                db: db.clone(),
                scope: scope.clone(),
                routes: Arc::clone(routes),
                tombstones: self.ctx.config.tombstones,
                max_bytes: Arc::clone(&self.max_bytes),
                oversize: self.ctx.config.on_oversize,
                described: self.ctx.config.metadata.replicate.then(|| Arc::clone(&self.ctx)),
                asked: Default::default(),
            },
        }
    }

    /// The error a failed open (`opening`) or read of the stream stands for.
    async fn stream_failed(&self, e: mongodb::error::Error, checkpoint: &Checkpoint, opening: bool) -> ReaderError {
        let failure = match classify_error(&e, self.ctx.flavor) {
            // DocumentDB's 136 means lost history or never enabled: a stream opened afresh
            // (no start position, so no history is needed) tells which.
            StreamFailure::LostOrNotEnabled => match self.open_fresh_stream().await {
                Ok(()) => StreamFailure::HistoryLost,
                Err(probe) => match classify_error(&probe, self.ctx.flavor) {
                    StreamFailure::LostOrNotEnabled | StreamFailure::NotEnabled => StreamFailure::NotEnabled,
                    // The probe failed for another reason (network): retry later.
                    _ => StreamFailure::Other,
                },
            },
            other => other,
        };
        match failure {
            StreamFailure::NotEnabled => {
                let (db, coll) = match &self.reads {
                    Reads::Collection(route) => (route.origin.ns.db.clone(), route.origin.ns.coll.clone()),
                    // `collection: ""` enables the whole database.
                    Reads::Database { db, .. } => (db.clone(), String::new()),
                };
                ReaderError::NotEnabled { ns: self.ns.clone(), db, coll, message: e.to_string() }
            }
            StreamFailure::HistoryLost if opening && self.fresh_copy.load(Ordering::Relaxed) => {
                let copy_time = match &checkpoint.position {
                    Position::StartAt(t) | Position::Copying { at: t, .. } => format!("{}.{} ({:.0} s ago)", t.time, t.increment, m::seconds_since(t.time)),
                    Position::Token(_) => "unknown".into(),
                };
                ReaderError::CopyOutranHistory { ns: self.ns.clone(), copy_time, message: e.to_string() }
            }
            StreamFailure::HistoryLost => self.history_lost(e, checkpoint),
            StreamFailure::EventTooLarge if self.slim.load(Ordering::Relaxed) => ReaderError::EventTooLarge { ns: self.ns.clone(), message: e.to_string() },
            StreamFailure::EventTooLarge => {
                // Restart from the saved position with a stream that leaves updateDescription
                // out: the event then fits, its full document still carries the change.
                warn!(ns = %self.ns, "a change event is over 16 MB (document plus updateDescription): reopening without updateDescription to read past it");
                self.slim.store(true, Ordering::Relaxed);
                ReaderError::Mongo { ns: self.ns.clone(), source: e }
            }
            StreamFailure::UnsupportedPipeline | StreamFailure::LostOrNotEnabled | StreamFailure::Other => {
                ReaderError::Mongo { ns: self.ns.clone(), source: e }
            }
        }
    }

    /// Opens (and closes) a change stream on the collection or database from now.
    async fn open_fresh_stream(&self) -> mongodb::error::Result<()> {
        match self.open(self.ctx.pipeline.current().stages(false), None).await {
            Ok(opened) => opened.map(drop),
            // No position, so no token to read: cannot happen.
            Err(_) => Ok(()),
        }
    }

    fn history_lost(&self, e: mongodb::error::Error, checkpoint: &Checkpoint) -> ReaderError {
        let (token_time, age) = match checkpoint.event_time {
            Some(t) => (format!("{}.{}", t.time, t.increment), format!("{:.0} s old", m::seconds_since(t.time))),
            None => ("unknown".into(), "age unknown".into()),
        };
        ReaderError::HistoryLost { ns: self.ns.clone(), token_time, age, message: e.to_string() }
    }
}

/// Whether a failed open is the server refusing `showExpandedEvents` (a server before
/// MongoDB 6.0: an unknown field), not the stream's position or the network.
fn refuses_option(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        // 40415: unknown field; 9: FailedToParse; 2: BadValue; 72: InvalidOptions.
        mongodb::error::ErrorKind::Command(c) => c.message.contains("showExpandedEvents") || [40415, 9, 2, 72].contains(&c.code),
        _ => false,
    }
}

/// Where a stream's events go: one collection's encoder, or, for a database stream, the
/// encoder of each event's collection (its topic made ready on first sight).
enum Destination {
    One(Encoder),
    Database {
        db: String,
        scope: Scope,
        routes: Arc<Routes>,
        tombstones: bool,
        max_bytes: Arc<AtomicUsize>,
        oversize: OversizePolicy,
        /// Where the metadata this process sent is known (`None`: not replicated).
        described: Option<Arc<ReaderContext>>,
        /// Collections whose metadata this stream already asked the pump to send.
        asked: std::sync::Mutex<HashSet<String>>,
    },
}

impl Destination {
    /// The encoder of `ev`'s collection; `None` for an event outside the scope or of the
    /// database itself (dropDatabase, invalidate).
    async fn encoder(&self, ev: &ChangeStreamEvent<RawDocumentBuf>) -> Result<Option<Encoder>, ReaderError> {
        match self {
            Destination::One(encoder) => Ok(Some(encoder.clone())),
            Destination::Database { scope, routes, tombstones, max_bytes, oversize, .. } => {
                let Some(coll) = ev.ns.as_ref().and_then(|n| n.coll.as_deref()) else { return Ok(None) };
                if !scope.includes(coll) {
                    return Ok(None);
                }
                Ok(Some(Encoder { route: routes.get(coll).await?, tombstones: *tombstones, max_bytes: Arc::clone(max_bytes), oversize: *oversize }))
            }
        }
    }

    /// `route`, when a database stream meets a collection whose metadata this process has
    /// not sent yet (created after the stream started): it goes out before the first event.
    fn undescribed(&self, route: &Arc<Route>) -> Option<Arc<Route>> {
        let Destination::Database { described: Some(ctx), asked, .. } = self else { return None };
        if ctx.metadata_sent.knows(&route.ns) {
            return None;
        }
        asked.lock().ok()?.insert(route.ns.clone()).then(|| Arc::clone(route))
    }

    /// The collection a rename moved into a database stream's scope (to `to_db.to_coll`):
    /// its documents never appeared as events, so it must be copied.
    fn renamed_into_scope(&self, to_db: &str, to_coll: Option<&str>) -> Option<String> {
        let Destination::Database { db, scope, .. } = self else { return None };
        let coll = to_coll.filter(|c| to_db == db && scope.includes(c))?;
        info!(to = %format!("{db}.{coll}"), "collection renamed into the replicated scope: copying it before the stream goes on");
        Some(coll.to_string())
    }
}

/// Hands the pump what one change event means. False: reading ends here (the stream
/// ended or failed, or the pump is gone).
async fn forward(ev: ChangeStreamEvent<RawDocumentBuf>, destination: &Destination, replicate_ddl: bool, tx: &mpsc::Sender<Outgoing>) -> bool {
    let token = bson::to_bson(&ev.id).ok();
    let copy_renamed = match (&ev.operation_type, &ev.to) {
        (OperationType::Rename, Some(to)) => destination.renamed_into_scope(&to.db, to.coll.as_deref()),
        _ => None,
    };
    let then_copy = |copy_renamed: Option<String>| copy_renamed.map(|coll| Outgoing::Done(Ok(ReadEnd::CopyRenamed(coll))));
    let encoder = match destination.encoder(&ev).await {
        Ok(Some(encoder)) => encoder,
        Ok(None) if ev.operation_type == OperationType::Invalidate => {
            let _ = tx.send(Outgoing::Done(Ok(ReadEnd::Invalidated(ev.cluster_time)))).await;
            return false;
        }
        // Outside the scope (a rename may bring a collection into it: mongod renames across
        // databases through a temporary collection), or dropDatabase (each of its
        // collections' drops came first).
        Ok(None) => return send(tx, token.map(Outgoing::Idle)).await && send(tx, then_copy(copy_renamed)).await,
        Err(e) => return send(tx, Some(Outgoing::Done(Err(e)))).await,
    };
    if let Some(route) = destination.undescribed(&encoder.route) {
        if !send(tx, Some(Outgoing::Metadata { route, token: None })).await {
            return false;
        }
    }
    let ns = &encoder.route.ns;
    let item = match encoder.route.origin.convert(ev) {
        StreamItem::Change(ev) => encoder.encode(&ev, token),
        StreamItem::Ddl { kind, to, cluster_time } => {
            metrics::counter!(m::SOURCE_DDL_EVENTS, "collection" => ns.clone(), "kind" => kind.clone()).increment(1);
            let item = if replicate_ddl {
                warn!(ns = %ns, kind = %kind, to = ?to, ?cluster_time, "DDL event on the source: replicated (source.ddl = \"replicate\"): the target collection is emptied");
                let to = to.map(|t| format!(" to {t}")).unwrap_or_default();
                Some(Outgoing::Clear { route: Arc::clone(&encoder.route), reason: format!("{kind}{to} on the source"), token })
            } else {
                warn!(ns = %ns, kind = %kind, to = ?to, ?cluster_time, "DDL event on the source: reported, not replicated (source.ddl = \"ignore\": the target keeps its data)");
                token.map(Outgoing::Idle)
            };
            return send(tx, item).await && send(tx, then_copy(copy_renamed)).await;
        }
        StreamItem::Invalidate { cluster_time } => {
            metrics::counter!(m::SOURCE_DDL_EVENTS, "collection" => ns.clone(), "kind" => "Invalidate").increment(1);
            Outgoing::Done(Ok(ReadEnd::Invalidated(cluster_time)))
        }
        StreamItem::Metadata(kind) => {
            metrics::counter!(m::SOURCE_DDL_EVENTS, "collection" => ns.clone(), "kind" => kind.clone()).increment(1);
            info!(ns = %ns, kind = %kind, "metadata event on the source: sending the collection's options and indexes");
            Outgoing::Metadata { route: Arc::clone(&encoder.route), token }
        }
        StreamItem::Skipped(kind) => {
            info!(ns = %ns, kind = %kind, "change stream event type not replicated; skipped");
            return send(tx, token.map(Outgoing::Idle)).await;
        }
    };
    send(tx, Some(item)).await
}

/// Sends `item` (when there is one) to the pump; false after a `Done` or when the pump is gone.
async fn send(tx: &mpsc::Sender<Outgoing>, item: Option<Outgoing>) -> bool {
    let Some(item) = item else { return true };
    let last = matches!(item, Outgoing::Done(_));
    tx.send(item).await.is_ok() && !last
}
