//! One reader per collection across all source instances: a lease document per collection
//! in the state database, `{_id, owner, epoch, renewed_at}`.
//!
//! No clock is compared with another. The holder renews by bumping `epoch`; a standby
//! takes a lease over only after it has watched the same `(owner, epoch)` stay unchanged
//! for a whole lease lifetime on its own monotonic clock, and then only with an update
//! conditional on that very epoch. Epochs only grow, across holders too, so checkpoints
//! carry the epoch they were written under and a save with an older one is refused (see
//! `checkpoint`): a replaced reader cannot overwrite its successor's position. The holder
//! judges its own deadline from the moment it sent its last successful renewal, and stops
//! producing half a lifetime after that, so it has fallen silent long before anyone can
//! take over. Only plain update operators
//! (`$set`, `$inc`, `$currentDate`) and equality filters are sent: Amazon DocumentDB has
//! neither `$$NOW` nor pipeline-style updates, and one path serves both flavours.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::{doc, Bson, Document};
use mongodb::Collection;
use tokio::time::Instant;

use super::checkpoint::LEASES;

/// The holder may produce for half the lease after each renewal request: the rest covers
/// the producer's delivery timeout (0.4 of the lease, set by the service: a message not
/// delivered by then fails instead of landing late) and a margin for clock rates.
pub fn produce_window(ttl: Duration) -> Duration {
    ttl / 2
}

/// The producer's delivery timeout for a lease of `ttl` (see `produce_window`).
pub fn delivery_timeout(ttl: Duration) -> Duration {
    ttl * 2 / 5
}

/// What holding a lease lets an instance do: produce until `deadline` (its own clock),
/// and write checkpoints stamped with `epoch`, which a successor's higher epoch outranks.
/// `generation`: the epoch the reader's run began with, which its records carry so that
/// a sink can fence out a late record of an earlier run (see `crate::fence`); renewals
/// keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub deadline: Instant,
    pub epoch: i64,
    pub generation: i64,
}

impl Grant {
    fn new(deadline: Instant, epoch: i64) -> Grant {
        Grant { deadline, epoch, generation: epoch }
    }
}

/// A lease as a standby last saw it, and since when (its own clock).
#[derive(Debug, Clone, PartialEq)]
struct Sighting {
    /// Null for a released lease.
    owner: Bson,
    epoch: Bson,
    since: Instant,
}

#[derive(Clone)]
pub struct LeaseStore {
    coll: Collection<Document>,
    scope: String,
    instance: String,
    ttl: Duration,
    /// Per lease id: the holder this instance is waiting out.
    sightings: Arc<Mutex<HashMap<String, Sighting>>>,
}

impl LeaseStore {
    pub fn new(db: &mongodb::Database, scope: &str, instance: &str, ttl: Duration) -> Self {
        LeaseStore {
            coll: db.collection(LEASES),
            scope: scope.into(),
            instance: instance.into(),
            ttl,
            sightings: Arc::default(),
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn id(&self, ns: &str) -> String {
        format!("{}/{}", self.scope, ns)
    }

    /// Takes or renews the lease on `ns`. Returns the local deadline until which this
    /// instance may produce and the lease's epoch, or `None` while another instance holds it.
    pub async fn acquire(&self, ns: &str) -> mongodb::error::Result<Option<Grant>> {
        let id = self.id(ns);
        let grant = self.try_acquire(&id).await?;
        if grant.is_some() {
            self.forget(&id);
        }
        Ok(grant)
    }

    async fn try_acquire(&self, id: &str) -> mongodb::error::Result<Option<Grant>> {
        let sent_at = Instant::now();
        let bump = doc! {"$set": {"owner": &self.instance}, "$inc": {"epoch": 1_i64}, "$currentDate": {"renewed_at": true}};
        if let Some(epoch) = self.bump(doc! {"_id": id, "owner": &self.instance}, bump.clone()).await? {
            return Ok(Some(Grant::new(sent_at + produce_window(self.ttl), epoch)));
        }
        let Some(current) = self.coll.find_one(doc! {"_id": id}).await? else {
            // No lease yet: create it; a concurrent creator wins the duplicate `_id` race
            // and this instance stands by. The first epoch is the time in milliseconds, so
            // a lease document deleted by hand and created again still outranks every
            // checkpoint written under the old one (those grew by one per renewal).
            let epoch = bson::DateTime::now().timestamp_millis();
            let lease = doc! {"_id": id, "owner": &self.instance, "epoch": epoch, "renewed_at": bson::DateTime::now()};
            return match self.coll.insert_one(lease).await {
                Ok(_) => Ok(Some(Grant::new(sent_at + produce_window(self.ttl), epoch))),
                Err(e) if crate::mongo::is_duplicate_key(&e) => Ok(None),
                Err(e) => Err(e),
            };
        };
        let seen = Sighting {
            owner: current.get("owner").cloned().unwrap_or(Bson::Null),
            epoch: current.get("epoch").cloned().unwrap_or(Bson::Null),
            since: Instant::now(),
        };
        // A released lease (no owner, after a graceful shutdown) is taken at once; a held
        // one only after its holder has not renewed for a whole lifetime.
        if seen.owner != Bson::Null && !self.unchanged_for_a_lifetime(id, seen.clone()) {
            return Ok(None);
        }
        // Conditional on what was seen: nothing, if the holder renewed (or someone else
        // took over) a moment ago.
        let filter = doc! {"_id": id, "owner": seen.owner, "epoch": seen.epoch};
        let sent_at = Instant::now();
        Ok(self.bump(filter, bump).await?.map(|epoch| Grant::new(sent_at + produce_window(self.ttl), epoch)))
    }

    /// Applies `update` to the lease matching `filter`; its epoch after the update, or
    /// `None` when nothing matched.
    async fn bump(&self, filter: Document, update: Document) -> mongodb::error::Result<Option<i64>> {
        let after = self.coll.find_one_and_update(filter, update).return_document(mongodb::options::ReturnDocument::After).await?;
        Ok(after.map(|d| epoch_of(d.get("epoch"))))
    }

    /// Records a sighting; true once the same holder and epoch were seen a lease lifetime ago.
    fn unchanged_for_a_lifetime(&self, id: &str, seen: Sighting) -> bool {
        let Ok(mut sightings) = self.sightings.lock() else { return false };
        match sightings.get(id) {
            Some(s) if s.owner == seen.owner && s.epoch == seen.epoch => seen.since.duration_since(s.since) >= self.ttl,
            _ => {
                sightings.insert(id.to_string(), seen);
                false
            }
        }
    }

    fn forget(&self, id: &str) {
        if let Ok(mut sightings) = self.sightings.lock() {
            sightings.remove(id);
        }
    }

    /// Gives the lease up (graceful shutdown), so a standby takes over at once. The
    /// document stays, ownerless, so epochs keep growing across holders.
    pub async fn release(&self, ns: &str) -> mongodb::error::Result<()> {
        let update = doc! {"$set": {"owner": Bson::Null}, "$inc": {"epoch": 1_i64}, "$currentDate": {"renewed_at": true}};
        self.coll.update_one(doc! {"_id": self.id(ns), "owner": &self.instance}, update).await?;
        Ok(())
    }

    /// Who holds `ns` now, as the lease document says (for `/status`; a holder that died
    /// is named until a standby has waited it out).
    pub async fn holder(&self, ns: &str) -> mongodb::error::Result<Option<String>> {
        // An ownerless (released) lease has a null owner: nobody holds it.
        Ok(self.coll.find_one(doc! {"_id": self.id(ns)}).await?.and_then(|d| d.get_str("owner").ok().map(str::to_string)))
    }
}

/// A lease's epoch as stored (an int64; older lease documents had none).
fn epoch_of(value: Option<&Bson>) -> i64 {
    match value {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Double(f)) => *f as i64,
        _ => 0,
    }
}
