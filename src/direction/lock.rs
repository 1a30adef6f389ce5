//! The direction lock: which way a pair runs, kept in the `directions` collection of each
//! cluster's state database, so that the two directions of a pair never run at once
//! (each would send the other's writes back: a replication loop).
//!
//! Three kinds of documents, keyed by the pair's name:
//! - `<pair>/turn`: the newest trip this cluster heard of and what the cluster is in it
//!   (`source` or `target`), written by the first service of a trip and by `reverse`. A
//!   service with an older trip refuses to start: its file is from before the turn.
//! - `<pair>/holder/<here>/<instance>`: each running service of the direction, renewed
//!   every few seconds. A service refuses to start (exit 2, naming the holder) while a
//!   holder of the opposite role renewed within `LIVE` on this cluster; of two opposite
//!   holders the one that claimed later (`since`) yields, so a refused start, whose claim
//!   lives a moment, never stops the direction that runs.
//! - `<pair>/cutover`: the cluster time `docrepl cutover` found the target ready at,
//!   where the reversed direction's source starts.
//!
//! Liveness compares two dates the same server wrote (`$currentDate`), never a local
//! clock with a server's; only equality filters and plain update operators are sent, as
//! Amazon DocumentDB takes them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::{doc, Bson, Document, Timestamp};
use mongodb::options::UpdateOptions;
use mongodb::{Collection, Database};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::config::Direction;

pub const DIRECTIONS: &str = "directions";
/// Where retired checkpoints go (never read by a source).
pub const RETIRED_CHECKPOINTS: &str = "checkpoints_retired";
/// How often a holder renews.
const RENEW: Duration = Duration::from_secs(5);
/// A holder not renewed for this long (by the server's clock) has stopped.
const LIVE: Duration = Duration::from_secs(20);
/// The longest a stopping service waits to release its claim.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// What a cluster is to a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Here {
    /// Read by the direction's source.
    Source,
    /// Written by the direction's sink (or a repair).
    Target,
}

impl Here {
    pub fn name(self) -> &'static str {
        match self {
            Here::Source => "source",
            Here::Target => "target",
        }
    }
}

/// A running service of some direction, as its holder document says.
#[derive(Debug, Clone)]
pub struct Holder {
    pub instance: String,
    /// When it first claimed (the server's clock): of two opposite holders, the later yields.
    pub since: Option<bson::DateTime>,
    pub here: String,
    pub direction: String,
    pub renewed_secs_ago: f64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "instance {} (the {} side of {}, renewed {:.0} s ago)", self.instance, self.here, self.direction, self.renewed_secs_ago)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the direction lock of pair {pair} in {cluster} is held by the opposite direction: {holder}. Stop it first (and turn the pair around with `docrepl reverse`); two directions at once would send every write back and forth")]
    Held { pair: String, cluster: String, holder: Holder },
    #[error("pair {pair} was turned around in {cluster}: its record is at trip {recorded} ({here} there, since {since}), this config is at trip {trip}, from before the turn. Use the file `docrepl reverse` wrote, or reverse again to fail back")]
    TurnedAround { pair: String, cluster: String, recorded: i64, here: String, since: String, trip: u32 },
    #[error("pair {pair} is at trip {trip} in {cluster} with that cluster as its {recorded}, but this config makes it the {here}: the file does not belong to this trip (compare pair.trip and the URIs with the file `docrepl reverse` wrote)")]
    WrongSide { pair: String, cluster: String, trip: u32, recorded: String, here: String },
    #[error("the direction lock in {cluster}: {source}")]
    Mongo { cluster: String, source: mongodb::error::Error },
}

/// Whether `e` (anywhere in its chain) is the lock refusing: a setting or an order of
/// steps to fix (exit 2), not a failure to retry.
pub fn is_refusal(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref::<LockError>(), Some(LockError::Held { .. } | LockError::TurnedAround { .. } | LockError::WrongSide { .. })))
}

fn coll(db: &Database) -> Collection<Document> {
    db.collection(DIRECTIONS)
}

/// The service's claim on its direction in one cluster, renewed until released.
#[derive(Clone)]
pub struct Lock {
    db: Database,
    cluster: String,
    direction: Direction,
    here: Here,
    instance: String,
    id: String,
    failure: Arc<Mutex<Option<LockError>>>,
}

/// Claims `direction` in the cluster of `db` (named `cluster` in messages) as `here`:
/// registers as a holder unless a live holder of the opposite role is there, then settles
/// the trip (see `settle_trip`; after the holder check, so that a refused start retires
/// nothing). `source_scope`: the source's checkpoint scope, when `here` is `Source`.
pub async fn claim(db: &Database, cluster: &str, direction: &Direction, here: Here, instance: &str, source_scope: Option<&str>) -> Result<Lock, LockError> {
    let mongo = |source| LockError::Mongo { cluster: cluster.to_string(), source };
    let id = format!("{}/holder/{}/{}", direction.pair, here.name(), instance);
    let lock = Lock { db: db.clone(), cluster: cluster.to_string(), direction: direction.clone(), here, instance: instance.to_string(), id, failure: Default::default() };
    lock.renew(true).await.map_err(mongo)?;
    // Yield to any opposite holder that claimed before (or with) this one.
    let refused = match lock.opposite_holder(false).await {
        Ok(Some(holder)) => Some(LockError::Held { pair: direction.pair.clone(), cluster: cluster.to_string(), holder }),
        Ok(None) => settle_trip(db, cluster, direction, here, source_scope, None).await.err(),
        Err(e) => Some(mongo(e)),
    };
    if let Some(refusal) = refused {
        let _ = coll(db).delete_one(doc! {"_id": &lock.id}).await;
        return Err(refusal);
    }
    info!(pair = %direction.pair, cluster, here = here.name(), "direction lock held: {}", direction.describe());
    Ok(lock)
}

impl Lock {
    /// Renews the holder document; `first` also stamps `since`.
    async fn renew(&self, first: bool) -> mongodb::error::Result<()> {
        let dates = if first { doc! {"renewed_at": true, "since": true} } else { doc! {"renewed_at": true} };
        coll(&self.db)
            .update_one(
                doc! {"_id": &self.id},
                doc! {
                    "$set": {"pair": &self.direction.pair, "here": self.here.name(), "instance": &self.instance, "direction": self.direction.describe(), "trip": i64::from(self.direction.trip)},
                    "$currentDate": dates,
                },
            )
            .with_options(UpdateOptions::builder().upsert(true).build())
            .await
            .map(drop)
    }

    /// A live holder of the pair on this cluster with the other role that claimed before
    /// this one (`strictly`), or not after it, if any; never this process's own (`docrepl
    /// run` within one cluster is both source and target there). A running service asks
    /// `strictly`, so that a newcomer's brief claim before it refuses stops nothing.
    async fn opposite_holder(&self, strictly: bool) -> mongodb::error::Result<Option<Holder>> {
        let Some(mine) = coll(&self.db).find_one(doc! {"_id": &self.id}).await? else { return Ok(None) };
        let Ok(now) = mine.get_datetime("renewed_at").copied() else { return Ok(None) };
        let since = mine.get_datetime("since").ok().copied();
        let me = self.instance.as_str();
        let earlier = |h: &Holder| match (h.since, since) {
            (Some(theirs), Some(ours)) if strictly => theirs < ours,
            (Some(theirs), Some(ours)) => theirs <= ours,
            // A holder from before `since` was stamped: take it as the earlier.
            _ => true,
        };
        Ok(live_holders(&self.db, &self.direction.pair, now).await?.into_iter().find(|h| h.here != self.here.name() && h.instance != me && earlier(h)))
    }

    /// Renews the claim every few seconds until `shutdown`; when the opposite direction
    /// appears (or a newer trip), records why and cancels `shutdown`.
    pub fn keep(&self, shutdown: CancellationToken) {
        let lock = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(RENEW) => {}
                }
                let found = async {
                    lock.renew(false).await?;
                    if let Some(holder) = lock.opposite_holder(true).await? {
                        return Ok(Some(LockError::Held { pair: lock.direction.pair.clone(), cluster: lock.cluster.clone(), holder }));
                    }
                    newer_trip(&lock.db, &lock.cluster, &lock.direction).await
                }
                .await;
                match found {
                    Ok(None) => {}
                    Ok(Some(refusal)) => {
                        error!("stopping: {refusal}");
                        *lock.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(refusal);
                        shutdown.cancel();
                        break;
                    }
                    // The cluster unreachable for a while: the services' own errors say so.
                    Err(e) => warn!("cannot renew the direction lock in {}: {e}", lock.cluster),
                }
            }
        });
    }

    /// After the service stopped: why `keep` stopped it, if it did; else the claim is
    /// released.
    pub async fn finish(&self) -> Result<(), LockError> {
        let refusal = self.failure.lock().unwrap_or_else(|p| p.into_inner()).take();
        match refusal {
            Some(refusal) => Err(refusal),
            None => {
                self.release().await;
                Ok(())
            }
        }
    }

    /// Gives the claim up (after a graceful stop), so the opposite direction may start at
    /// once. Bounded: with the cluster unreachable a stop must not wait for server
    /// selection; the claim then lapses by itself.
    async fn release(&self) {
        match tokio::time::timeout(RELEASE_WAIT, coll(&self.db).delete_one(doc! {"_id": &self.id})).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!("cannot release the direction lock in {} (it lapses in {} s): {e}", self.cluster, LIVE.as_secs()),
            Err(_) => warn!("the direction lock in {} was not released within {} s (it lapses in {} s)", self.cluster, RELEASE_WAIT.as_secs(), LIVE.as_secs()),
        }
    }
}

async fn newer_trip(db: &Database, cluster: &str, direction: &Direction) -> mongodb::error::Result<Option<LockError>> {
    let Some(turn) = coll(db).find_one(doc! {"_id": turn_id(&direction.pair)}).await? else { return Ok(None) };
    let recorded = turn.get_i64("trip").unwrap_or(0);
    Ok((recorded > i64::from(direction.trip)).then(|| turned_around(cluster, direction, &turn)))
}

fn turned_around(cluster: &str, direction: &Direction, turn: &Document) -> LockError {
    LockError::TurnedAround {
        pair: direction.pair.clone(),
        cluster: cluster.to_string(),
        recorded: turn.get_i64("trip").unwrap_or(0),
        here: turn.get_str("here").unwrap_or("?").to_string(),
        since: turn.get_datetime("at").map(|d| d.to_string()).unwrap_or_else(|_| "?".into()),
        trip: direction.trip,
    }
}

/// The holders of `pair` on this cluster renewed within `LIVE` before `now` (a date the
/// same server wrote).
async fn live_holders(db: &Database, pair: &str, now: bson::DateTime) -> mongodb::error::Result<Vec<Holder>> {
    let mut cursor = coll(db).find(doc! {"pair": pair}).await?;
    let mut out = Vec::new();
    while cursor.advance().await? {
        let d: Document = cursor.deserialize_current()?;
        let Ok(renewed) = d.get_datetime("renewed_at") else { continue };
        let ago = (now.timestamp_millis() - renewed.timestamp_millis()) as f64 / 1000.0;
        if ago * 1000.0 < LIVE.as_millis() as f64 {
            out.push(Holder {
                instance: d.get_str("instance").unwrap_or("?").to_string(),
                since: d.get_datetime("since").ok().copied(),
                here: d.get_str("here").unwrap_or("?").to_string(),
                direction: d.get_str("direction").unwrap_or("?").to_string(),
                renewed_secs_ago: ago.max(0.0),
            });
        }
    }
    Ok(out)
}

/// Every live holder of `direction.pair` in this cluster (for `reverse`, which needs the
/// old direction stopped): the server's time is read by writing a probe.
pub async fn running(db: &Database, cluster: &str, direction: &Direction) -> Result<Vec<Holder>, LockError> {
    let mongo = |source| LockError::Mongo { cluster: cluster.to_string(), source };
    let probe = format!("{}/probe/{}", direction.pair, bson::oid::ObjectId::new());
    coll(db)
        .update_one(doc! {"_id": &probe}, doc! {"$currentDate": {"renewed_at": true}})
        .with_options(UpdateOptions::builder().upsert(true).build())
        .await
        .map_err(mongo)?;
    let now = coll(db).find_one(doc! {"_id": &probe}).await.map_err(mongo)?.and_then(|d| d.get_datetime("renewed_at").ok().copied());
    coll(db).delete_one(doc! {"_id": &probe}).await.map_err(mongo)?;
    match now {
        Some(now) => live_holders(db, &direction.pair, now).await.map_err(mongo),
        None => Ok(Vec::new()),
    }
}

fn turn_id(pair: &str) -> String {
    format!("{pair}/turn")
}

/// Brings this cluster's record of the pair to `direction.trip` with the cluster as
/// `here`. An older record is replaced; if the cluster was a source in it, that trip's
/// checkpoints (scope from the record, else `old_scope`) are retired so no source ever
/// replays from them. A newer record refuses (`TurnedAround`), as does the same trip with
/// the cluster on the other side (`WrongSide`).
pub async fn settle_trip(db: &Database, cluster: &str, direction: &Direction, here: Here, source_scope: Option<&str>, old_scope: Option<&str>) -> Result<(), LockError> {
    let mongo = |source| LockError::Mongo { cluster: cluster.to_string(), source };
    let record = coll(db).find_one(doc! {"_id": turn_id(&direction.pair)}).await.map_err(mongo)?;
    let trip = i64::from(direction.trip);
    if let Some(turn) = &record {
        let recorded = turn.get_i64("trip").unwrap_or(0);
        if recorded > trip {
            return Err(turned_around(cluster, direction, turn));
        }
        if recorded == trip {
            // Trip 0 has no reversed file to mix up, and a pair within one cluster (one
            // database into another) is both source and target there.
            let was = turn.get_str("here").unwrap_or("?");
            if was != here.name() && trip > 0 {
                return Err(LockError::WrongSide { pair: direction.pair.clone(), cluster: cluster.to_string(), trip: direction.trip, recorded: was.to_string(), here: here.name().to_string() });
            }
            return Ok(());
        }
    }
    // A newer trip (or the first record): retire what the cluster read as a source before.
    let scope = match &record {
        Some(turn) if turn.get_str("here") == Ok("source") => turn.get_str("source_scope").ok().map(str::to_string),
        Some(_) => None,
        None => old_scope.map(str::to_string),
    };
    if let Some(scope) = scope.filter(|_| record.is_some() || direction.trip > 0) {
        let n = retire_checkpoints(db, &scope, direction.trip).await.map_err(mongo)?;
        info!(pair = %direction.pair, cluster, "retired {n} checkpoints of {scope:?} (the direction before trip {})", direction.trip);
    }
    coll(db)
        .update_one(
            doc! {"_id": turn_id(&direction.pair)},
            doc! {
                "$set": {"trip": trip, "here": here.name(), "source_scope": source_scope.map(Bson::from).unwrap_or(Bson::Null), "direction": direction.describe()},
                "$currentDate": {"at": true},
            },
        )
        .with_options(UpdateOptions::builder().upsert(true).build())
        .await
        .map_err(mongo)?;
    Ok(())
}

/// Moves the checkpoints of `scope` to `checkpoints_retired` (tagged with the trip that
/// retired them); returns how many.
async fn retire_checkpoints(db: &Database, scope: &str, trip: u32) -> mongodb::error::Result<u64> {
    let checkpoints: Collection<Document> = db.collection(crate::source::CHECKPOINTS);
    // Keys are `<scope>/<ns>`; '0' follows '/' in byte order.
    let range = doc! {"_id": {"$gte": format!("{scope}/"), "$lt": format!("{scope}0")}};
    let mut cursor = checkpoints.find(range.clone()).await?;
    let mut kept = Vec::new();
    while cursor.advance().await? {
        let mut d: Document = cursor.deserialize_current()?;
        let id = d.get_str("_id").unwrap_or_default().to_string();
        d.insert("_id", format!("trip{trip}/{id}"));
        d.insert("retired_at", bson::DateTime::now());
        kept.push(d);
    }
    if kept.is_empty() {
        return Ok(0);
    }
    let retired: Collection<Document> = db.collection(RETIRED_CHECKPOINTS);
    for d in &kept {
        retired.replace_one(doc! {"_id": d.get_str("_id").unwrap_or_default()}, d).upsert(true).await?;
    }
    Ok(checkpoints.delete_many(range).await?.deleted_count)
}

/// Records where `docrepl cutover` found the target ready: `at` on the target's clock,
/// the reversed direction's start; returns the point kept. With the source down, a point
/// recorded before for this trip stays: the applications may have written to the target
/// since, and no comparison with the source would notice (a planned cutover compares
/// every document, so it is only ready again while the target holds nothing new).
pub async fn record_cutover(db: &Database, direction: &Direction, at: Timestamp, source_down: bool) -> mongodb::error::Result<Timestamp> {
    if source_down {
        if let Some(earlier) = cutover_point(db, direction).await? {
            return Ok(earlier);
        }
    }
    coll(db)
        .update_one(
            doc! {"_id": format!("{}/cutover", direction.pair)},
            doc! {"$set": {"at": at, "trip": i64::from(direction.trip), "source_down": source_down}, "$currentDate": {"recorded": true}},
        )
        .with_options(UpdateOptions::builder().upsert(true).build())
        .await?;
    Ok(at)
}

/// The cutover point recorded for `direction`'s trip, if any.
pub async fn cutover_point(db: &Database, direction: &Direction) -> mongodb::error::Result<Option<Timestamp>> {
    let found = coll(db).find_one(doc! {"_id": format!("{}/cutover", direction.pair), "trip": i64::from(direction.trip)}).await?;
    Ok(found.and_then(|d| d.get_timestamp("at").ok()))
}
