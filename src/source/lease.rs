//! One reader per collection across all source instances: a lease document per collection
//! in the state database. Expiry is judged by the state cluster's clock (`$$NOW`), so the
//! instances' clocks do not matter; the holder judges its own deadline from the moment it
//! sent the request, which is never later than the server's, so it always stops
//! producing before anyone else can take over.

use std::time::Duration;

use bson::{doc, Document};
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

#[derive(Clone)]
pub struct LeaseStore {
    coll: Collection<Document>,
    scope: String,
    instance: String,
    ttl: Duration,
}

impl LeaseStore {
    pub fn new(db: &mongodb::Database, scope: &str, instance: &str, ttl: Duration) -> Self {
        LeaseStore { coll: db.collection(LEASES), scope: scope.into(), instance: instance.into(), ttl }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes or renews the lease on `ns`. Returns the local deadline until which this
    /// instance may produce, or `None` when another live instance holds it.
    pub async fn acquire(&self, ns: &str) -> mongodb::error::Result<Option<Instant>> {
        let sent_at = Instant::now();
        let id = format!("{}/{}", self.scope, ns);
        let ttl_ms = self.ttl.as_millis() as i64;
        let update = vec![doc! {"$set": {
            "owner": &self.instance,
            "expires_at": {"$add": ["$$NOW", ttl_ms]},
            "renewed_at": "$$NOW",
        }}];
        // Renew our own lease, or take over one that has expired.
        let renew = doc! {
            "_id": &id,
            "$or": [
                {"owner": &self.instance},
                {"$expr": {"$lt": ["$expires_at", "$$NOW"]}},
            ],
        };
        if self.coll.update_one(renew, update.clone()).await?.matched_count == 1 {
            return Ok(Some(sent_at + produce_window(self.ttl)));
        }
        // No lease document yet: create it. If another instance holds one, the filter does
        // not match and the upsert's insert fails on the duplicate _id.
        let create = doc! {"_id": &id, "owner": {"$exists": false}};
        match self.coll.update_one(create, update).upsert(true).await {
            Ok(_) => Ok(Some(sent_at + produce_window(self.ttl))),
            Err(e) if is_duplicate_key(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (graceful shutdown), so a standby takes over at once.
    pub async fn release(&self, ns: &str) -> mongodb::error::Result<()> {
        let id = format!("{}/{}", self.scope, ns);
        self.coll.delete_one(doc! {"_id": id, "owner": &self.instance}).await?;
        Ok(())
    }

    /// Who holds `ns` now, if anyone (for `/status`).
    pub async fn holder(&self, ns: &str) -> mongodb::error::Result<Option<String>> {
        let id = format!("{}/{}", self.scope, ns);
        let filter = doc! {"_id": id, "$expr": {"$gt": ["$expires_at", "$$NOW"]}};
        Ok(self.coll.find_one(filter).await?.and_then(|d| d.get_str("owner").ok().map(str::to_string)))
    }
}

pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(we)) => we.code == 11000,
        ErrorKind::Command(ce) => ce.code == 11000,
        _ => e.to_string().contains("E11000"),
    }
}
