//! One reader per collection across all source instances: a lease document per collection
//! in the state database, `{_id, owner, epoch, renewed_at}`.
//!
//! No clock is compared with another. The holder renews by bumping `epoch`; a standby
//! takes a lease over only after it has watched the same `(owner, epoch)` stay unchanged
//! for a whole lease lifetime on its own monotonic clock, and then only with an update
//! conditional on that very epoch. The holder judges its own deadline from the moment it
//! sent its last successful renewal, and stops producing half a lifetime after that, so
//! it has fallen silent long before anyone can take over. Only plain update operators
//! (`$set`, `$inc`, `$currentDate`) and equality filters are sent: Amazon DocumentDB has
//! neither `$$NOW` nor pipeline-style updates, and one path serves both flavours.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;
use mongodb::Collection;
use tokio::time::Instant;

use super::checkpoint::LEASES;

/// The holder may produce for half the lease after each renewal request: the rest covers
/// the producer's delivery timeout (0.4 of the lease, set by the service: a message not
/// delivered by then fails instead of landing late) and a margin for clock rates.
pub fn produce_window(ttl: Duration) -> Duration {
    ttl / 2
}

/// A lease as a standby last saw it, and since when (its own clock).
#[derive(Debug, Clone, PartialEq)]
struct Sighting {
    owner: String,
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
    /// instance may produce, or `None` while another instance holds it.
    pub async fn acquire(&self, ns: &str) -> mongodb::error::Result<Option<Instant>> {
        let sent_at = Instant::now();
        let id = self.id(ns);
        let granted = Some(sent_at + produce_window(self.ttl));
        let bump = doc! {"$set": {"owner": &self.instance}, "$inc": {"epoch": 1_i64}, "$currentDate": {"renewed_at": true}};
        if self.coll.update_one(doc! {"_id": &id, "owner": &self.instance}, bump.clone()).await?.matched_count == 1 {
            self.forget(&id);
            return Ok(granted);
        }
        let Some(current) = self.coll.find_one(doc! {"_id": &id}).await? else {
            // No lease yet (or it was released): create it; a concurrent creator wins
            // the duplicate `_id` race and this instance stands by.
            let lease = doc! {"_id": &id, "owner": &self.instance, "epoch": 0_i64, "renewed_at": bson::DateTime::now()};
            return match self.coll.insert_one(lease).await {
                Ok(_) => {
                    self.forget(&id);
                    Ok(granted)
                }
                Err(e) if is_duplicate_key(&e) => Ok(None),
                Err(e) => Err(e),
            };
        };
        let seen = Sighting {
            owner: current.get_str("owner").unwrap_or_default().to_string(),
            epoch: current.get("epoch").cloned().unwrap_or(Bson::Null),
            since: Instant::now(),
        };
        if !self.unchanged_for_a_lifetime(&id, seen.clone()) {
            return Ok(None);
        }
        // The holder has not renewed for a whole lifetime: take over, unless it renewed
        // (or someone else took over) a moment ago.
        let filter = doc! {"_id": &id, "owner": &seen.owner, "epoch": seen.epoch.clone()};
        let sent_at = Instant::now();
        if self.coll.update_one(filter, bump).await?.matched_count == 1 {
            self.forget(&id);
            return Ok(Some(sent_at + produce_window(self.ttl)));
        }
        Ok(None)
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

    /// Gives the lease up (graceful shutdown), so a standby takes over at once.
    pub async fn release(&self, ns: &str) -> mongodb::error::Result<()> {
        self.coll.delete_one(doc! {"_id": self.id(ns), "owner": &self.instance}).await?;
        Ok(())
    }

    /// Who holds `ns` now, as the lease document says (for `/status`; a holder that died
    /// is named until a standby has waited it out).
    pub async fn holder(&self, ns: &str) -> mongodb::error::Result<Option<String>> {
        Ok(self.coll.find_one(doc! {"_id": self.id(ns)}).await?.and_then(|d| d.get_str("owner").ok().map(str::to_string)))
    }
}

pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(we)) => we.code == 11000,
        ErrorKind::Command(ce) => ce.code == 11000,
        _ => e.to_string().contains("E11000"),
    }
}
