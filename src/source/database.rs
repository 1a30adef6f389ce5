//! A database reader: one change stream for a whole database, each event sent to its
//! collection's topic, under one lease and one checkpoint, instead of a stream, a lease
//! and a checkpoint per collection (200 of those starved each other's connections).
//!
//! On its first start it records the cluster time, then copies every collection in scope
//! (a few at a time, `source.copy_parallelism`, each resumable through its own copy
//! checkpoint), and only then streams from that time: every change made during the
//! copies is read after them, and nothing falls between two copies. Collections created
//! later need no copy (their every write is in the stream); one renamed into the scope
//! is copied when the rename is read. A database whose collections were read by
//! collection readers before goes on from the oldest of their positions.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use bson::Timestamp;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::checkpoint::{token_cluster_time, Checkpoint, Position};
use super::lease::Grant;
use super::outgoing::ReadEnd;
use super::reader::{PumpEnd, Reader, ReaderContext, ReaderError, ReaderExit, Reads};
use super::route::{Route, Routes};
use super::scope::Scope;
use super::HistoryLostPolicy;

/// The name of a database reader's lease and checkpoint: `$` begins no collection name.
pub fn unit_name(db: &str) -> String {
    format!("{db}.$database")
}

impl Reader {
    /// A reader of the whole of `db` (see the module comment).
    pub fn database(ctx: Arc<ReaderContext>, db: &str, max_bytes: usize) -> Self {
        let max_bytes = Arc::new(AtomicUsize::new(max_bytes));
        let routes = Routes::new(db, &ctx.name, &ctx.rs, ctx.topics.clone(), Arc::clone(&max_bytes));
        Reader {
            reads: Reads::Database { db: db.to_string(), scope: Scope::of(&ctx.config, db), routes: Arc::new(routes) },
            ns: unit_name(db),
            writer: format!("{}/{}", ctx.name, unit_name(db)),
            ctx,
            slim: Default::default(),
            fresh_copy: Default::default(),
            max_bytes,
        }
    }

    fn db(&self) -> &str {
        match &self.reads {
            Reads::Database { db, .. } => db,
            Reads::Collection(route) => &route.origin.ns.db,
        }
    }

    /// A database reader's life: copies first, then the stream, until stopped.
    pub(super) async fn run_database(&self, lease: watch::Receiver<Grant>, shutdown: &CancellationToken) -> Result<ReaderExit, ReaderError> {
        loop {
            let checkpoint = match self.ctx.checkpoints.load(&self.ns).await.map_err(|source| ReaderError::Checkpoint { ns: self.ns.clone(), source })? {
                Some(cp) => cp,
                None => self.first_start(&lease).await?,
            };
            // Every collection in scope has its topic, and is on the status page, from the
            // start, not only once its first event arrives.
            self.routes()?.prepare(&self.collections_in_scope().await?).await?;
            if let Some(exit) = self.finish_copies(&lease, shutdown).await? {
                return Ok(exit);
            }
            match self.stream(&checkpoint, &lease, shutdown).await {
                Ok(PumpEnd::Exit(exit)) => return Ok(exit),
                Ok(PumpEnd::Read(ReadEnd::Invalidated(at))) => {
                    // The database was dropped: listen on from just after it.
                    let at = match at {
                        Some(t) => Timestamp { time: t.time, increment: t.increment + 1 },
                        None => self.cluster_time().await?,
                    };
                    info!(ns = %self.ns, "database stream invalidated (dropDatabase); listening for the database to be created again");
                    self.save(&Checkpoint { position: Position::StartAt(at), event_time: Some(at) }, &lease).await?;
                }
                Ok(PumpEnd::Read(ReadEnd::CopyRenamed(coll))) => {
                    // The stream saved its position past the rename; the copy starts now,
                    // and the stream replays what came after the rename on top of it.
                    let at = self.cluster_time().await?;
                    self.save_collection(&coll, &Checkpoint { position: Position::Copying { at, after: None }, event_time: Some(at) }, &lease).await?;
                }
                Ok(PumpEnd::Read(ReadEnd::CopyDone | ReadEnd::Reopen)) => {}
                Err(ReaderError::HistoryLost { .. }) if self.ctx.config.on_history_lost == HistoryLostPolicy::Recopy => {
                    warn!(ns = %self.ns, "change stream history lost; starting a fresh initial copy of each of the database's collections (source.on_history_lost = \"recopy\")");
                    if let Some(exit) = self.start_over(&lease).await? {
                        return Ok(exit);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn routes(&self) -> Result<&Arc<Routes>, ReaderError> {
        match &self.reads {
            Reads::Database { routes, .. } => Ok(routes),
            Reads::Collection(_) => Err(ReaderError::Encode { ns: self.ns.clone(), message: "a collection reader has no routes".into() }),
        }
    }

    /// The source's collections this reader copies and streams, as they are now (views
    /// have no documents of their own: only their definitions follow, see `metadata`).
    async fn collections_in_scope(&self) -> Result<Vec<String>, ReaderError> {
        let Reads::Database { db, scope, .. } = &self.reads else { return Ok(Vec::new()) };
        let listed = crate::metadata::catalog::read_database(&self.ctx.client, db, None, false).await.map_err(self.mongo_err())?;
        let mut out = Vec::new();
        for meta in listed.into_iter().filter(|m| scope.includes(&m.ns.coll)) {
            if super::discovery::replicated_kind(&meta)? {
                out.push(meta.ns.coll);
            }
        }
        Ok(out)
    }

    /// No checkpoint yet: the stream's start time, recorded before any copy begins, and a
    /// copy checkpoint for every collection that needs one. A collection a collection
    /// reader read before goes on from its position (the stream starts at the oldest).
    async fn first_start(&self, lease: &watch::Receiver<Grant>) -> Result<Checkpoint, ReaderError> {
        let at = self.stream_start().await?;
        let earlier = self.collection_checkpoints().await?;
        let mut start = at;
        let mut copies = 0;
        for coll in self.collections_in_scope().await? {
            let known = earlier.iter().find(|(c, _)| *c == coll).map(|(_, cp)| cp);
            match known.map(|cp| (&cp.position, position_time(cp))) {
                // A copy under way goes on where it stopped (see `finish_copies`).
                Some((Position::Copying { at: copy_at, .. }, _)) => start = start.min(*copy_at),
                Some((_, Some(t))) => start = start.min(t),
                _ if self.ctx.config.initial_copy => {
                    self.save_collection(&coll, &Checkpoint { position: Position::Copying { at, after: None }, event_time: Some(at) }, lease).await?;
                    copies += 1;
                }
                _ => {}
            }
        }
        if start != at {
            info!(ns = %self.ns, "collections of this database were read one by one before: the database stream starts at the oldest of their positions ({}.{})", start.time, start.increment);
        }
        info!(ns = %self.ns, copies, "database stream starts at cluster time {}.{} after {copies} initial copies", start.time, start.increment);
        let checkpoint = Checkpoint { position: Position::StartAt(start), event_time: Some(start) };
        self.save(&checkpoint, lease).await?;
        Ok(checkpoint)
    }

    /// Runs every copy under way (a copy checkpoint of a collection in scope), at most
    /// `source.copy_parallelism` at once. `Some(exit)`: stopped before they finished.
    async fn finish_copies(&self, lease: &watch::Receiver<Grant>, shutdown: &CancellationToken) -> Result<Option<ReaderExit>, ReaderError> {
        let Reads::Database { scope, routes, .. } = &self.reads else { return Ok(None) };
        let earlier = self.collection_checkpoints().await?;
        let pending: Vec<(String, Timestamp, Option<bson::Bson>)> = earlier
            .into_iter()
            .filter(|(coll, _)| scope.includes(coll))
            .filter_map(|(coll, cp)| match cp.position {
                Position::Copying { at, after } => Some((coll, at, after)),
                _ => None,
            })
            .collect();
        if pending.is_empty() {
            return Ok(None);
        }
        info!(ns = %self.ns, collections = pending.len(), parallelism = self.ctx.config.copy_parallelism, "initial copies before the database stream");
        let mut copies = futures::stream::iter(pending)
            .map(|(coll, at, after)| async move {
                let route = routes.get(&coll).await?;
                self.copy_one(route, at, after, lease, shutdown).await
            })
            .buffer_unordered(self.ctx.config.copy_parallelism);
        while let Some(done) = copies.next().await {
            if let Some(exit) = done? {
                return Ok(Some(exit));
            }
        }
        // Lost history at the stream's next open means the copies outran it (fatal).
        self.fresh_copy.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(None)
    }

    /// One collection's initial copy, by a collection reader under this reader's lease;
    /// when it is done, its checkpoint says so (a start time the database stream covers).
    async fn copy_one(
        &self,
        route: Arc<Route>,
        at: Timestamp,
        after: Option<bson::Bson>,
        lease: &watch::Receiver<Grant>,
        shutdown: &CancellationToken,
    ) -> Result<Option<ReaderExit>, ReaderError> {
        let _permit = self.ctx.copies.acquire().await.map_err(|_| ReaderError::Encode { ns: self.ns.clone(), message: "copy slots closed".into() })?;
        let reader = Reader {
            ctx: Arc::clone(&self.ctx),
            ns: route.ns.clone(),
            // Under the database's lease: its records carry the database reader's stamp.
            writer: self.writer.clone(),
            reads: Reads::Collection(Arc::clone(&route)),
            slim: Default::default(),
            fresh_copy: Default::default(),
            max_bytes: Arc::clone(&self.max_bytes),
        };
        if let Some(exit) = reader.initial_copy(at, after, lease, shutdown).await? {
            return Ok(Some(exit));
        }
        reader.save(&Checkpoint { position: Position::StartAt(at), event_time: Some(at) }, lease).await?;
        Ok(None)
    }

    /// The checkpoints of this database's collections (one query).
    async fn collection_checkpoints(&self) -> Result<Vec<(String, Checkpoint)>, ReaderError> {
        self.ctx.checkpoints.of_collections(self.db()).await.map_err(|source| ReaderError::Checkpoint { ns: self.ns.clone(), source })
    }

    /// Saves a collection's own checkpoint (its copy's progress) under this reader's lease.
    async fn save_collection(&self, coll: &str, cp: &Checkpoint, lease: &watch::Receiver<Grant>) -> Result<(), ReaderError> {
        let ns = format!("{}.{coll}", self.db());
        let epoch = lease.borrow().epoch;
        self.ctx.checkpoints.save(&ns, cp, &self.ctx.instance, epoch).await.map_err(|e| ReaderError::from_checkpoint(&ns, e))
    }

    /// History lost with `on_history_lost = "recopy"`: clear markers to every collection
    /// in scope, then their checkpoints and this reader's forgotten, so the next round
    /// starts over with fresh copies. The markers go first: a crash before the
    /// checkpoints are gone finds the lost history again and sends them again.
    async fn start_over(&self, lease: &watch::Receiver<Grant>) -> Result<Option<ReaderExit>, ReaderError> {
        let routes = self.routes()?;
        for coll in self.collections_in_scope().await? {
            let route = routes.get(&coll).await?;
            if let Some(exit) = self.send_clear_markers(&route, "change stream history lost: a fresh initial copy follows", lease).await? {
                return Ok(Some(exit));
            }
        }
        let epoch = lease.borrow().epoch;
        let earlier = self.collection_checkpoints().await?;
        for (coll, _) in earlier {
            let ns = format!("{}.{coll}", self.db());
            self.ctx.checkpoints.clear(&ns, epoch).await.map_err(|e| ReaderError::from_checkpoint(&ns, e))?;
        }
        self.ctx.checkpoints.clear(&self.ns, epoch).await.map_err(|e| ReaderError::from_checkpoint(&self.ns, e))?;
        Ok(None)
    }
}

/// The cluster time a collection reader's saved position stands for: where a database
/// stream must start to miss none of that collection's changes. `None` for a copy under
/// way or a position of unknown time (the collection is then copied again).
fn position_time(cp: &Checkpoint) -> Option<Timestamp> {
    match &cp.position {
        Position::StartAt(t) => Some(*t),
        Position::Token(token) => cp.event_time.or_else(|| token_cluster_time(token)),
        Position::Copying { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_under_way_has_no_stream_time() {
        let t = Timestamp { time: 5, increment: 1 };
        assert_eq!(position_time(&Checkpoint { position: Position::StartAt(t), event_time: None }), Some(t));
        assert_eq!(position_time(&Checkpoint { position: Position::Copying { at: t, after: None }, event_time: Some(t) }), None);
    }
}
