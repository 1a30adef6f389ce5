//! The source service: a reader task turns initial copies and then a change stream into
//! Debezium events on each collection's topic, saving resume tokens only after Kafka
//! acknowledged everything before them. One reader reads the whole database (see
//! `database`) where the server opens a database stream, else one per collection. A lease
//! per reader makes exactly one instance read it; the others wait as standbys.

mod checkpoint;
mod control;
mod config;
mod convert;
mod copy;
mod copy_progress;
pub mod copy_resume;
mod database;
pub mod discovery;
mod encode;
mod heartbeat;
pub mod errors;
pub mod history;
mod lease;
pub mod metadata;
mod outgoing;
pub mod pipeline;
mod produce;
mod progress;
pub mod reader;
mod route;
pub mod scope;
mod stream;
pub mod watermark;
mod window;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::Producer;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

pub use checkpoint::{Checkpoint, CheckpointError, CheckpointStore, Position, CHECKPOINTS, LEASES};
pub use config::{validate_db_name, CaptureMode, DatabaseSelection, DdlPolicy, HistoryLostPolicy, OversizePolicy, SourceConfig, StateStoreConfig, StreamLevel, NEVER_REPLICATED};
use discovery::Level;
pub use lease::{Grant, LeaseStore};
use reader::{Reader, ReaderContext, ReaderError, ReaderExit};

use crate::config::Config;
use crate::health::Connectivity;
use crate::status::{Side, StatusBoard};
use crate::kafka::admin::TopicAdmin;
use crate::metrics as m;
use crate::mongo;

/// How often new databases (with `["*"]`), and new collections of databases read a
/// stream per collection, are looked for.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the source service until `shutdown` is cancelled or a reader fails for good.
pub async fn run(config: &Config, board: StatusBoard, shutdown: CancellationToken) -> anyhow::Result<()> {
    let src = config.source.as_ref().context("the [source] section is missing")?;
    if crate::flavor::is_elastic_cluster(&src.uri) {
        anyhow::bail!("`source.uri` names an Amazon DocumentDB elastic cluster, which has no change streams, so docrepl cannot read from it (it can write to one: use it as `sink.uri`). Replicate from an instance-based DocumentDB cluster instead");
    }
    let (flavor, why) = src.flavor();
    info!(flavor = flavor.name(), "source cluster flavour {} ({why})", flavor.name());
    board.set_flavor("source", flavor.name());
    // Three pools, so that waiting change-stream reads never delay a lease renewal or a
    // checkpoint (with 200 collections on one pool of 10, renewals came too late and
    // leases were lost over and over): `control` for discovery, health and the history
    // window; `state_client` for leases and checkpoints (its own pool even on the same
    // cluster); `client` for copies and change streams, one connection per stream.
    let control = mongo::connect(&src.uri, "source.uri", flavor).await?;
    let rs = mongo::replica_set_name(&control, "source.uri").await?;
    let state_client = match &src.state.uri {
        Some(uri) if uri != &src.uri => mongo::connect(uri, "source.state.uri", src.state_flavor()).await?,
        _ => mongo::connect(&src.uri, "source.uri", flavor).await?,
    };
    let state_db = state_client.database(&src.state.database);
    let name = src.name.clone().unwrap_or_else(|| config.kafka.topic_prefix.clone());
    let checkpoints = CheckpointStore::new(&state_db, &name);
    // The databases there are now, and how each is read (more may come with `["*"]`).
    let mut levels = BTreeMap::new();
    let mut streams = 0;
    for db in discovery::databases_to_read(&control, src).await? {
        let level = discovery::stream_level(&control, src, &db, flavor, &checkpoints).await?;
        streams += match level {
            Level::Database(_) => 1,
            Level::Collection(_) => discovery::collections_to_read(&control, src, &db).await.map(|c| c.len()).unwrap_or(0),
        };
        levels.insert(db, level);
    }
    let pool = stream_pool_size(streams, src.copy_parallelism);
    info!(streams, pool, "source connection pool for copies and change streams: {pool} connections at most (the URI's maxPoolSize wins)");
    let client = mongo::connect_with_pool(&src.uri, "source.uri", flavor, Some(pool)).await?;
    let instance = crate::direction::instance_name(config);
    // Before anything is read: the opposite direction must not be running.
    let direction = crate::direction::Direction::of(config);
    let lock = crate::direction::lock::claim(&state_db, "source.uri", &direction, crate::direction::Here::Source, &instance, Some(&name)).await?;
    lock.keep(shutdown.clone());
    let ttl = Duration::from_millis(src.lease_ttl_ms);

    let admin = TopicAdmin::new(&config.kafka)?;
    let dead_letter_topic = config.kafka.dead_letter_topic();
    admin.ensure_topic(&dead_letter_topic, 1, config.kafka.replication_factor, &config.kafka.dead_letter_topic_configs()).await?;

    // A message not delivered within this time fails (and the reader restarts from its
    // saved token), so nothing this instance queued is still sent after its lease has
    // ended; a request already on a silent link may still land later, which the sinks'
    // generation fence sets aside (see `crate::fence`).
    let delivery_timeout = lease::delivery_timeout(ttl);
    let producer: crate::kafka::delivery::AckProducer = crate::kafka::source_producer_config(&config.kafka)
        .set("message.timeout.ms", delivery_timeout.as_millis().to_string())
        .create_with_context(crate::kafka::delivery::AckContext)
        .context("cannot create the Kafka producer")?;

    let ctx = Arc::new(ReaderContext {
        client: client.clone(),
        producer: producer.clone(),
        config: src.clone(),
        partitions: config.kafka.partitions,
        dead_letter_topic,
        checkpoints: checkpoints.clone(),
        name: name.clone(),
        rs,
        instance: instance.clone(),
        board: board.clone(),
        flavor,
        pipeline: pipeline::PipelineChoice::new(flavor, &board),
        topics: route::Topics { admin: admin.clone(), kafka: config.kafka.clone() },
        copies: tokio::sync::Semaphore::new(src.copy_parallelism),
        metadata_sent: Default::default(),
        expanded_events: std::sync::atomic::AtomicBool::new(src.metadata.events == metadata::MetadataEvents::Auto && !flavor.is_documentdb()),
    });
    board.set_connectivity(Side::Source, Connectivity { cluster: true, broker: true });
    {
        let board = board.clone();
        tokio::spawn(crate::health::watch(control.clone(), admin.clone(), move |c| board.set_connectivity(Side::Source, c), shutdown.clone()));
    }
    tokio::spawn(history::watch(control.clone(), flavor, src.history_retention_hours, board.clone(), shutdown.clone()));
    let leases = LeaseStore::new(&state_db, &name, &instance, ttl);
    info!(instance = %instance, databases = ?levels.keys().collect::<Vec<_>>(), "source service started");

    let mut readers = JoinSet::new();
    let mut started: BTreeSet<(String, Option<String>)> = BTreeSet::new();
    let mut discovery = tokio::time::interval(DISCOVERY_INTERVAL);
    let mut failure: Option<anyhow::Error> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = discovery.tick() => {
                // Databases created later (`["*"]`) get a level of their own.
                match discovery::databases_to_read(&control, src).await {
                    Ok(dbs) => {
                        let new: Vec<String> = dbs.into_iter().filter(|db| !levels.contains_key(db)).collect();
                        for db in new {
                            match discovery::stream_level(&control, src, &db, flavor, &ctx.checkpoints).await {
                                Ok(level) => { info!(database = %db, "new database to replicate"); levels.insert(db, level); }
                                Err(e) => warn!(database = %db, "cannot start reading the new database: {e:#}"),
                            }
                        }
                    }
                    Err(e) => warn!("cannot list the source's databases: {e:#}"),
                }
                for (db, level) in &levels {
                    board.set_stream_level(db, level.describe(db));
                    if let Level::Database(_) = level {
                        // A database reader finds collections created later in its stream.
                        if started.insert((db.clone(), None)) {
                            let reader = Reader::database(Arc::clone(&ctx), db, config.kafka.max_message_bytes);
                            let span = tracing::info_span!("reader", database = %db);
                            readers.spawn(supervise(reader, leases.clone(), database::unit_name(db), board.clone(), shutdown.clone()).instrument(span));
                        }
                        continue;
                    }
                    let wanted = match discovery::collections_to_read(&control, src, db).await {
                        Ok(w) => w,
                        Err(e) => { warn!(database = %db, "cannot list the source's collections: {e:#}"); continue; }
                    };
                    for coll in wanted {
                        if started.contains(&(db.clone(), Some(coll.clone()))) {
                            continue;
                        }
                        let (topic, max_bytes) = ctx.topics.ensure(db, &coll).await?;
                        let reader = Reader::new(Arc::clone(&ctx), db, &coll, topic, max_bytes);
                        let ns = format!("{db}.{coll}");
                        let span = tracing::info_span!("reader", collection = %ns);
                        readers.spawn(supervise(reader, leases.clone(), ns, board.clone(), shutdown.clone()).instrument(span));
                        started.insert((db.clone(), Some(coll)));
                    }
                }
            }
            Some(done) = readers.join_next(), if !readers.is_empty() => {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => { failure = Some(e.into()); break; }
                    Err(e) => { failure = Some(anyhow::anyhow!("a reader task panicked: {e}")); break; }
                }
            }
        }
    }
    shutdown.cancel();
    let stop_deadline = Instant::now() + Duration::from_secs(9);
    while let Ok(Some(done)) = tokio::time::timeout_at(stop_deadline, readers.join_next()).await {
        if let Ok(Err(e)) = done {
            failure.get_or_insert(e.into());
        }
    }
    readers.abort_all();
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(2))).await;
    lock.finish().await?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The shortest and the longest wait before a failed reader restarts (doubling between).
const MIN_RESTART_WAIT: Duration = Duration::from_millis(200);
const MAX_RESTART_WAIT: Duration = Duration::from_secs(10);

/// The wait before restarting a reader that failed after running `ran_for`, the previous
/// restart having waited `previous`: a reader that ran longer than the longest wait
/// failed once after a healthy run, not again in a row, and starts over from the shortest.
/// (Without this the waits of every fault in a process's life added up: after a few
/// broker outages and link cuts a reader waited 10 s after each later one, and the lag
/// stayed up 25 s after a flapping link returned in `scripts/chaos.sh`.)
fn restart_wait(previous: Duration, ran_for: Duration) -> Duration {
    if ran_for >= MAX_RESTART_WAIT {
        MIN_RESTART_WAIT
    } else {
        previous
    }
}

/// Holds the collection's lease while reading it; waits as standby while another
/// instance holds it; restarts the reader after transient errors.
async fn supervise(
    reader: Reader,
    leases: LeaseStore,
    ns: String,
    board: StatusBoard,
    shutdown: CancellationToken,
) -> Result<(), ReaderError> {
    let mut backoff = MIN_RESTART_WAIT;
    let mut standby_logged = false;
    while !shutdown.is_cancelled() {
        let grant = match leases.acquire(&ns).await {
            Ok(Some(g)) => g,
            Ok(None) => {
                let holder = leases.holder(&ns).await.ok().flatten();
                board.update_collection(&ns, |c| {
                    c.state = "standby".into();
                    c.lease_holder = holder;
                });
                if !standby_logged {
                    info!(ns = %ns, "another instance holds the lease: standing by");
                    standby_logged = true;
                }
                sleep_or_shutdown(Duration::from_secs(1), &shutdown).await;
                continue;
            }
            Err(e) => {
                warn!(ns = %ns, "cannot reach the lease store: {e}");
                sleep_or_shutdown(backoff, &shutdown).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        standby_logged = false;
        info!(ns = %ns, "lease acquired: reading");
        board.update_collection(&ns, |c| {
            c.state = "starting".into();
            c.lease_holder = Some(leases.instance().to_string());
        });
        metrics::gauge!(m::SOURCE_READER_ACTIVE, "collection" => ns.clone()).set(1.0);
        let (tx, rx) = watch::channel(grant);
        let stop_renewing = CancellationToken::new();
        let renewer = tokio::spawn(renew(leases.clone(), ns.clone(), tx, stop_renewing.clone()));
        let started = Instant::now();
        let result = reader.run(rx, &shutdown).await;
        stop_renewing.cancel();
        let _ = renewer.await;
        metrics::gauge!(m::SOURCE_READER_ACTIVE, "collection" => ns.clone()).set(0.0);
        match result {
            Ok(ReaderExit::Shutdown) => {
                if let Err(e) = leases.release(&ns).await {
                    warn!(ns = %ns, "cannot release the lease (a standby takes over when it expires): {e}");
                }
                return Ok(());
            }
            Ok(ReaderExit::LeaseLost) => {
                warn!(ns = %ns, "lease not renewed in time: stopped producing; will try to take it again");
            }
            Err(ReaderError::Superseded(message)) => {
                warn!(ns = %ns, "{message}: stopped producing; standing by");
            }
            Err(e) if e.is_fatal() => {
                error!(ns = %ns, "{e}");
                board.update_collection(&ns, |c| {
                    c.state = "failed".into();
                    c.last_error = Some(e.to_string());
                });
                return Err(e);
            }
            Err(e) => {
                metrics::counter!(m::SOURCE_READER_RESTARTS, "collection" => ns.clone()).increment(1);
                backoff = restart_wait(backoff, started.elapsed());
                warn!(ns = %ns, "reader stopped: {e}; restarting from the last saved resume token in {backoff:?}");
                board.update_collection(&ns, |c| {
                    c.state = "restarting".into();
                    c.last_error = Some(e.to_string());
                });
                board.error(format!("{ns}: {e}"));
                sleep_or_shutdown(backoff, &shutdown).await;
                backoff = (backoff * 2).min(MAX_RESTART_WAIT);
                continue;
            }
        }
        backoff = MIN_RESTART_WAIT;
    }
    Ok(())
}

/// Renews the lease every sixth of its lifetime and publishes the new deadline. When a
/// renewal fails the deadline simply stays where it was, and the reader stops there.
async fn renew(leases: LeaseStore, ns: String, tx: watch::Sender<Grant>, stop: CancellationToken) {
    let every = leases.ttl() / 6;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match leases.acquire(&ns).await {
            Ok(Some(grant)) => {
                // The run keeps the generation it began with.
                let generation = tx.borrow().generation;
                let _ = tx.send(Grant { generation, ..grant });
            }
            Ok(None) => {
                warn!(ns = %ns, "lease taken over by another instance");
                return;
            }
            Err(e) => warn!(ns = %ns, "lease renewal failed: {e}"),
        }
    }
}

/// Connections for copies and change streams: one per stream (each waits in a `getMore`
/// for up to half a second; fewer connections make streams queue for one, which showed
/// as seconds of lag with 200 collection streams), one per copy running at once, and
/// room for collections created later. Capped: Amazon DocumentDB instances take a few
/// hundred to a few thousand connections in all.
fn stream_pool_size(streams: usize, copies: usize) -> u32 {
    (streams + copies + 16).clamp(10, 1000) as u32
}

async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_that_ran_a_while_restarts_after_the_shortest_wait() {
        // Failures in a row keep the doubled wait; one after a healthy run starts over.
        assert_eq!(restart_wait(Duration::from_secs(8), Duration::from_secs(1)), Duration::from_secs(8));
        assert_eq!(restart_wait(MAX_RESTART_WAIT, Duration::from_secs(60)), MIN_RESTART_WAIT);
        assert_eq!(restart_wait(MIN_RESTART_WAIT, Duration::ZERO), MIN_RESTART_WAIT);
    }
}
