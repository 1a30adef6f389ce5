//! A collection's change stream: opened from the saved position with the pipeline the
//! server accepts (see `pipeline`), read into the reader's pump, and its failures turned
//! into the errors the operator must see (see `errors`): lost history, change streams not
//! enabled (DocumentDB), a copy that outran the history, an event over 16 MB.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bson::Bson;
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::FullDocumentType;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::checkpoint::{Checkpoint, Position};
use super::convert::StreamItem;
use super::errors::{classify_error, ReaderError, StreamFailure};
use super::lease::Grant;
use super::outgoing::{Outgoing, ReadEnd};
use super::reader::{Phase, PumpEnd, Reader};
use super::DdlPolicy;
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
        let coll = self.collection();
        let slim = self.slim.load(Ordering::Relaxed);
        let stream = loop {
            let form = self.ctx.pipeline.current();
            let mut watch = coll
                .watch()
                .pipeline(form.stages(slim))
                .full_document(FullDocumentType::UpdateLookup)
                .batch_size(2000)
                .max_await_time(Duration::from_millis(500));
            match &checkpoint.position {
                Position::Token(t) => {
                    let token: ResumeToken = bson::from_bson(t.clone())
                        .map_err(|e| ReaderError::Encode { ns: self.ns.clone(), message: format!("saved resume token is unreadable: {e}") })?;
                    watch = watch.resume_after(token);
                }
                Position::StartAt(ts) => watch = watch.start_at_operation_time(*ts),
                // `run` finishes a copy before it streams.
                Position::Copying { at, .. } => watch = watch.start_at_operation_time(*at),
            }
            match watch.await {
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
        info!(ns = %self.ns, topic = %self.topic, "streaming changes");
        let slim_until = slim.then(|| Instant::now() + SLIM_FOR);
        let (tx, rx) = mpsc::channel(4096);
        let origin = self.origin.clone();
        let encoder = self.encoder();
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
                        let token = bson::to_bson(&ev.id).ok();
                        events_read.increment(1);
                        match origin.convert(ev) {
                            StreamItem::Change(ev) => encoder.encode(&ev, token),
                            StreamItem::Ddl { kind, to, cluster_time } => {
                                metrics::counter!(m::SOURCE_DDL_EVENTS, "collection" => ns.clone(), "kind" => kind.clone()).increment(1);
                                if replicate_ddl {
                                    warn!(ns = %ns, kind = %kind, to = ?to, ?cluster_time, "DDL event on the source: replicated (source.ddl = \"replicate\"): the target collection is emptied");
                                    let to = to.map(|t| format!(" to {t}")).unwrap_or_default();
                                    Outgoing::Clear { reason: format!("{kind}{to} on the source"), token }
                                } else {
                                    warn!(ns = %ns, kind = %kind, to = ?to, ?cluster_time, "DDL event on the source: reported, not replicated (source.ddl = \"ignore\": the target keeps its data)");
                                    match token {
                                        Some(t) => Outgoing::Idle(t),
                                        None => continue,
                                    }
                                }
                            }
                            StreamItem::Invalidate { cluster_time } => {
                                metrics::counter!(m::SOURCE_DDL_EVENTS, "collection" => ns.clone(), "kind" => "Invalidate").increment(1);
                                Outgoing::Done(Ok(ReadEnd::Invalidated(cluster_time)))
                            }
                            StreamItem::Skipped(kind) => {
                                info!(ns = %ns, kind = %kind, "change stream event type not replicated; skipped");
                                match token {
                                    Some(t) => Outgoing::Idle(t),
                                    None => continue,
                                }
                            }
                        }
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
        let result = self.pump(rx, checkpoint.event_time, Phase::Stream, lease, shutdown).await;
        read.abort();
        match result {
            Ok(PumpEnd::Read(ReadEnd::Reopen)) => {
                self.slim.store(false, Ordering::Relaxed);
                Ok(PumpEnd::Read(ReadEnd::Reopen))
            }
            Err(ReaderError::Mongo { source, .. }) => Err(self.stream_failed(source, checkpoint, false).await),
            other => other,
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
            StreamFailure::NotEnabled => ReaderError::NotEnabled {
                ns: self.ns.clone(),
                db: self.origin.ns.db.clone(),
                coll: self.origin.ns.coll.clone(),
                message: e.to_string(),
            },
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

    /// Opens (and closes) a change stream on the collection from now.
    async fn open_fresh_stream(&self) -> mongodb::error::Result<()> {
        let coll = self.collection();
        coll.watch().pipeline(self.ctx.pipeline.current().stages(false)).await.map(drop)
    }

    fn history_lost(&self, e: mongodb::error::Error, checkpoint: &Checkpoint) -> ReaderError {
        let (token_time, age) = match checkpoint.event_time {
            Some(t) => (format!("{}.{}", t.time, t.increment), format!("{:.0} s old", m::seconds_since(t.time))),
            None => ("unknown".into(), "age unknown".into()),
        };
        ReaderError::HistoryLost { ns: self.ns.clone(), token_time, age, message: e.to_string() }
    }
}
