//! A collection's metadata (options and indexes, as state: see `crate::metadata`) sent to
//! every partition of its topic, whenever it differs from what this process sent last:
//!
//! - before a collection's initial copy, its options alone (the sinks create the target
//!   collection with them before the first copied document; indexes come after the copy,
//!   which measured faster than building them first: see the README);
//! - when a stream starts, every collection's full metadata (on a database stream: every
//!   namespace in scope, views too);
//! - when the stream reports a change of it (`create`, `createIndexes`, `dropIndexes`,
//!   `modify`: MongoDB 6.0+ reports those with `showExpandedEvents`), and when a database
//!   stream meets a collection it has not described yet, before that collection's first
//!   event (so that a collection created later gets its collation before its documents);
//! - every `source.metadata.poll_secs` (ten times as rarely while metadata events flow),
//!   from a listing of the source (Amazon DocumentDB reports no such events, and a server
//!   may drop them): the path that always works.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use super::control::{deliver_all, source_info};
use super::lease::Grant;
use super::reader::{Reader, ReaderContext, ReaderError, ReaderExit, Reads};
use super::route::{Route, Routes};
use super::scope::{is_rename_temporary, Scope};
use crate::debezium::metadata::{encode, MetadataMessage};
use crate::event::SnapshotMarker;
use crate::kafka::partitioner::partition_for_key;
use crate::metadata::{catalog, CollectionMetadata, Kind};
use crate::metrics as m;

/// `[source.metadata]`: whether and how collection metadata follows the source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfig {
    /// Send options and indexes to the sinks (`false`: documents only).
    #[serde(default = "yes")]
    pub replicate: bool,
    /// How often the source's metadata is listed and compared with what was sent.
    #[serde(default = "default_poll_secs")]
    pub poll_secs: u64,
    /// `auto`: ask the change stream for metadata events where the server has them
    /// (MongoDB 6.0+, not Amazon DocumentDB); `off`: rely on the listing alone.
    #[serde(default)]
    pub events: MetadataEvents,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MetadataEvents {
    #[default]
    Auto,
    Off,
}

fn yes() -> bool {
    true
}
fn default_poll_secs() -> u64 {
    30
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig { replicate: true, poll_secs: default_poll_secs(), events: MetadataEvents::Auto }
    }
}

/// What this process last sent per namespace (a digest of it), so that unchanged
/// metadata is not sent again.
#[derive(Default)]
pub struct Sent(std::sync::Mutex<HashMap<String, u64>>);

impl Sent {
    fn is_current(&self, meta: &CollectionMetadata) -> bool {
        self.0.lock().map(|s| s.get(&meta.ns.to_string()) == Some(&meta.digest())).unwrap_or(false)
    }

    fn record(&self, meta: &CollectionMetadata) {
        if let Ok(mut s) = self.0.lock() {
            s.insert(meta.ns.to_string(), meta.digest());
        }
    }

    /// True when this process sent some metadata of `ns`.
    pub fn knows(&self, ns: &str) -> bool {
        self.0.lock().map(|s| s.contains_key(ns)).unwrap_or(true)
    }
}

/// Sends each metadata to every partition of its route's topic, those that differ from
/// what this process sent last, all at once. `Some(exit)`: the lease ran out first.
async fn send(ctx: &ReaderContext, found: Vec<(Arc<Route>, CollectionMetadata)>, stamp: &str, lease: &watch::Receiver<Grant>) -> Result<Option<ReaderExit>, ReaderError> {
    let changed: Vec<(Arc<Route>, CollectionMetadata)> = found.into_iter().filter(|(_, meta)| !ctx.metadata_sent.is_current(meta)).collect();
    if changed.is_empty() {
        return Ok(None);
    }
    // No source time: it is state, not a change at a time (a sink's conflict judge reading
    // it as the partition's next event must not take the partition to be past anything).
    let source = source_info(ctx, bson::Timestamp { time: 0, increment: 0 }, SnapshotMarker::No);
    let batches = changed
        .iter()
        .map(|(route, meta)| {
            let home = partition_for_key(route.ns.as_bytes(), ctx.partitions);
            let records = (0..ctx.partitions)
                .map(|partition| {
                    let message = MetadataMessage { metadata: meta.clone(), partition, partitions: ctx.partitions, home };
                    let (key, value) = encode(&message, &source, m::now_ms());
                    (partition, key, value)
                })
                .collect();
            (Arc::clone(route), records)
        })
        .collect();
    if let Some(exit) = deliver_all(ctx, batches, "metadata message", stamp, lease).await? {
        return Ok(Some(exit));
    }
    for (route, meta) in &changed {
        ctx.metadata_sent.record(meta);
        metrics::counter!(m::SOURCE_METADATA_SENT, "collection" => route.ns.clone()).increment(1);
        let indexes = meta.indexes.as_ref().map(Vec::len);
        info!(ns = %route.ns, kind = meta.kind.name(), ?indexes, "collection metadata sent (options and indexes follow the source)");
    }
    Ok(None)
}

/// The metadata worth sending for `meta`'s namespace: collections and views; a time-series
/// collection (which change streams do not cover) is refused loudly.
fn replicable(meta: CollectionMetadata) -> Result<Option<CollectionMetadata>, ReaderError> {
    if let Kind::Other(kind) = &meta.kind {
        warn!(ns = %meta.ns, kind = %kind, "a namespace of a kind docrepl does not know is not replicated");
        return Ok(None);
    }
    super::discovery::replicated_kind(&meta)?;
    Ok(Some(meta))
}

impl Reader {
    /// Before a collection's initial copy: its options alone (indexes follow the copy).
    pub(super) async fn send_options_before_copy(&self, lease: &watch::Receiver<Grant>) -> Result<Option<ReaderExit>, ReaderError> {
        let route = Arc::clone(self.route()?);
        self.send_metadata_of(&route, false, lease).await
    }

    /// The current metadata of `route`'s namespace, sent if it changed (a metadata event
    /// or a database stream's first event of a collection).
    pub(super) async fn send_current_metadata(&self, route: &Arc<Route>, lease: &watch::Receiver<Grant>) -> Result<Option<ReaderExit>, ReaderError> {
        self.send_metadata_of(route, true, lease).await
    }

    /// Reads `route`'s namespace (its indexes too when `with_indexes`) and sends what
    /// changed.
    async fn send_metadata_of(&self, route: &Arc<Route>, with_indexes: bool, lease: &watch::Receiver<Grant>) -> Result<Option<ReaderExit>, ReaderError> {
        if !self.ctx.config.metadata.replicate {
            return Ok(None);
        }
        let ns = &route.origin.ns;
        let found = catalog::read_one(&self.ctx.client, &ns.db, &ns.coll, with_indexes).await.map_err(self.mongo_err())?;
        match found.map(replicable).transpose()?.flatten() {
            Some(meta) => send(&self.ctx, vec![(Arc::clone(route), meta)], &self.stamp(lease), lease).await,
            None => Ok(None),
        }
    }

    /// Every namespace this reader writes, sent where it changed: when a stream starts.
    pub(super) async fn send_all_metadata(&self, lease: &watch::Receiver<Grant>) -> Result<Option<ReaderExit>, ReaderError> {
        if !self.ctx.config.metadata.replicate {
            return Ok(None);
        }
        let mut found = Vec::new();
        for (route, meta) in Described::of(self).read(&self.ctx).await.map_err(self.mongo_err())? {
            if let Some(meta) = replicable(meta)? {
                found.push((route, meta));
            }
        }
        send(&self.ctx, found, &self.stamp(lease), lease).await
    }

    /// Lists the source's metadata every `source.metadata.poll_secs` and sends what
    /// changed, until the task is aborted (when the stream ends) or the lease runs out.
    /// Failures are reported and tried again at the next round: the documents keep
    /// flowing meanwhile.
    pub(super) fn poll_metadata(&self, lease: watch::Receiver<Grant>) -> Option<tokio::task::JoinHandle<()>> {
        let config = &self.ctx.config.metadata;
        if !config.replicate {
            return None;
        }
        // With the stream's metadata events the listing is a backstop (an event a server
        // dropped, a change made while no stream was open), so it runs ten times as rarely.
        let events = self.ctx.expanded_events.load(std::sync::atomic::Ordering::Relaxed);
        let every = Duration::from_secs(config.poll_secs * if events { 10 } else { 1 });
        let ctx = Arc::clone(&self.ctx);
        let target = Described::of(self);
        let ns = self.ns.clone();
        let stamp = self.stamp(&lease);
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let found = match target.read(&ctx).await {
                    Ok(found) => found,
                    Err(e) => {
                        warn!(%ns, "cannot list the source's collection metadata ({e}); trying again in {every:?}");
                        continue;
                    }
                };
                let mut replicated = Vec::new();
                for (route, meta) in found {
                    match replicable(meta) {
                        Ok(Some(meta)) => replicated.push((route, meta)),
                        Ok(None) => {}
                        Err(e) => warn!(ns = %route.ns, "{e}"),
                    }
                }
                match send(&ctx, replicated, &stamp, &lease).await {
                    Ok(None) => {}
                    Ok(Some(_)) => return,
                    Err(e) => warn!(%ns, "collection metadata not sent: {e}; trying again in {every:?}"),
                }
            }
        }))
    }
}

/// The namespaces whose metadata a reader sends.
#[derive(Clone)]
enum Described {
    One(Arc<Route>),
    Database { db: String, scope: Scope, routes: Arc<Routes> },
}

impl Described {
    fn of(reader: &Reader) -> Self {
        match &reader.reads {
            Reads::Collection(route) => Described::One(Arc::clone(route)),
            Reads::Database { db, scope, routes } => Described::Database { db: db.clone(), scope: scope.clone(), routes: Arc::clone(routes) },
        }
    }

    /// Each namespace's route and current metadata (one listing for a whole database).
    async fn read(&self, ctx: &ReaderContext) -> Result<Vec<(Arc<Route>, CollectionMetadata)>, mongodb::error::Error> {
        match self {
            Described::One(route) => {
                let ns = &route.origin.ns;
                Ok(catalog::read_one(&ctx.client, &ns.db, &ns.coll, true).await?.map(|meta| (Arc::clone(route), meta)).into_iter().collect())
            }
            Described::Database { db, scope, routes } => {
                let mut out = Vec::new();
                for meta in catalog::read_database(&ctx.client, db, None, true).await? {
                    if !scope.includes(&meta.ns.coll) || is_rename_temporary(&meta.ns.coll) {
                        continue;
                    }
                    match routes.get(&meta.ns.coll).await {
                        Ok(route) => out.push((route, meta)),
                        Err(e) => warn!(ns = %meta.ns, "no topic for the collection's metadata: {e}"),
                    }
                }
                Ok(out)
            }
        }
    }
}
