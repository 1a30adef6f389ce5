//! A collection's initial copy: every document as an `op: r` event, in `_id` order,
//! resumable after the last `_id` Kafka acknowledged. It runs on the reader's pump like
//! the change stream (see `reader`).

use bson::{doc, Bson, Timestamp};
use futures::TryStreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::convert::describe_id;
use super::errors::ReaderError;
use super::lease::Grant;
use super::outgoing::{Outgoing, ReadEnd};
use super::reader::{Phase, PumpEnd, Reader, ReaderExit};

impl Reader {
    /// Copies every document (`op: r`, in `_id` order), after `after` when resuming an
    /// interrupted copy. Returns `Some(exit)` when stopped early; the saved position then
    /// says how far Kafka holds the copy, and the next start goes on from there.
    pub(super) async fn initial_copy(
        &self,
        at: Timestamp,
        after: Option<Bson>,
        lease: &watch::Receiver<Grant>,
        shutdown: &CancellationToken,
    ) -> Result<Option<ReaderExit>, ReaderError> {
        // The sinks create the target collection with the source's options before the
        // first document of the copy arrives.
        if let Some(exit) = self.send_options_before_copy(lease).await? {
            return Ok(Some(exit));
        }
        let coll = self.collection()?;
        let total = coll.estimated_document_count().await.ok();
        self.ctx.board.update_collection(&self.ns, |c| {
            c.copy_total = total;
            c.copied = 0;
        });
        let filter = match &after {
            // Every `_id` after that one in index order, across BSON types (see
            // `copy_resume`); the key itself is also skipped below.
            Some(id) => {
                info!(ns = %self.ns, "initial copy resuming after _id {} (cluster time {}.{})", describe_id(id), at.time, at.increment);
                super::copy_resume::after_id(id, self.ctx.flavor)
            }
            None => {
                info!(ns = %self.ns, "initial copy starting (cluster time {}.{})", at.time, at.increment);
                doc! {}
            }
        };
        // The primary, whatever the URI's readPreference: a replica behind the copy's start
        // would miss writes made just before it, which the stream (from that start) skips.
        let mut find = coll.find(filter).sort(doc! {"_id": 1}).batch_size(self.ctx.config.copy_batch_size).selection_criteria(crate::mongo::primary());
        if after.is_some() {
            find = find.hint(mongodb::options::Hint::Keys(doc! {"_id": 1}));
        }
        let cursor = find.await.map_err(self.mongo_err())?;
        let progress = super::copy_progress::show(self.ctx.board.clone(), self.ns.clone(), total);
        let (tx, rx) = mpsc::channel(4096);
        let route = self.route()?;
        let origin = route.origin.clone();
        let encoder = self.encoder(route);
        let ns = self.ns.clone();
        let read = tokio::spawn(async move {
            let mut cursor = cursor;
            let mut copied = 0u64;
            loop {
                let item = match cursor.try_next().await {
                    Ok(Some(doc)) => match origin.snapshot_read(doc, at) {
                        Ok(ev) if Some(&ev.id) == after.as_ref() => continue,
                        Ok(ev) => {
                            copied += 1;
                            // The `_id` is the copy's position: saved once Kafka acknowledged it
                            // and everything before it.
                            let position = Some(ev.id.clone());
                            encoder.encode(&ev, position)
                        }
                        Err(message) => Outgoing::Done(Err(ReaderError::Encode { ns: ns.clone(), message })),
                    },
                    Ok(None) => {
                        info!(ns = %ns, copied, "initial copy read every document");
                        Outgoing::Done(Ok(ReadEnd::CopyDone))
                    }
                    Err(source) => Outgoing::Done(Err(ReaderError::Mongo { ns: ns.clone(), source })),
                };
                let last = matches!(item, Outgoing::Done(_));
                if tx.send(item).await.is_err() || last {
                    break;
                }
            }
        });
        let result = self.pump(rx, None, Phase::Copy { at }, lease, shutdown).await;
        read.abort();
        progress.finish();
        match result? {
            PumpEnd::Read(ReadEnd::CopyDone) => Ok(None),
            PumpEnd::Read(ReadEnd::Invalidated(_) | ReadEnd::Reopen | ReadEnd::CopyRenamed(_)) => Ok(None),
            PumpEnd::Exit(exit) => Ok(Some(exit)),
        }
    }
}
