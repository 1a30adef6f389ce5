//! Saved positions per collection, in the `checkpoints` collection of the state database
//! (by default the `docrepl` database of the source cluster). A checkpoint is a resume
//! token, the cluster time to start the stream at (right after an initial copy), or an
//! initial copy in progress (so an interrupted copy goes on where it stopped).

use bson::{doc, Bson, Document, Timestamp};
use mongodb::options::ReplaceOptions;
use mongodb::Collection;

/// Where to pick up a collection's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Position {
    /// A resume token (the `_id` of the last event covered, or a post-batch token).
    Token(Bson),
    /// The initial copy finished; stream from this cluster time.
    StartAt(Timestamp),
    /// An initial copy that started at cluster time `at` is under way; Kafka holds every
    /// document up to `_id` `after` (in `_id` order), none yet when `None`.
    Copying { at: Timestamp, after: Option<Bson> },
}

/// A saved position and the cluster time it corresponds to (for age and lag reports).
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub position: Position,
    /// Cluster time of the newest event the position covers, when known.
    pub event_time: Option<Timestamp>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("the checkpoint of {ns} was written by a newer lease holder (epoch above {epoch}): this instance no longer owns the collection")]
    Superseded { ns: String, epoch: i64 },
    #[error(transparent)]
    Mongo(#[from] mongodb::error::Error),
}

#[derive(Clone)]
pub struct CheckpointStore {
    coll: Collection<Document>,
    /// Distinguishes sources that share one state database (their `source.name`).
    scope: String,
}

impl CheckpointStore {
    pub fn new(db: &mongodb::Database, scope: &str) -> Self {
        CheckpointStore { coll: db.collection(CHECKPOINTS), scope: scope.to_string() }
    }

    fn key(&self, ns: &str) -> String {
        format!("{}/{}", self.scope, ns)
    }

    /// `ns`'s checkpoint, when no holder with an epoch above `epoch` wrote it (those
    /// from before lease epochs existed have none and count as older).
    fn not_newer_than(&self, ns: &str, epoch: i64) -> Document {
        doc! {"_id": self.key(ns), "$or": [{"lease_epoch": {"$lte": epoch}}, {"lease_epoch": {"$exists": false}}]}
    }

    pub async fn load(&self, ns: &str) -> mongodb::error::Result<Option<Checkpoint>> {
        Ok(self.coll.find_one(doc! {"_id": self.key(ns)}).await?.and_then(|d| parse(&d)))
    }

    /// The checkpoints of every collection of `db` (one query, not one per collection),
    /// by collection name; `db.$database`'s own is not among them.
    pub async fn of_collections(&self, db: &str) -> mongodb::error::Result<Vec<(String, Checkpoint)>> {
        // Keys are `<scope>/<db>.<coll>`: '/' follows '.' in every collation order here.
        let from = self.key(&format!("{db}."));
        let to = self.key(&format!("{db}/"));
        let mut cursor = self.coll.find(doc! {"_id": {"$gte": &from, "$lt": to}}).await?;
        let mut found = Vec::new();
        while cursor.advance().await? {
            let d: Document = cursor.deserialize_current()?;
            // `$` cannot begin a collection name: that is a database reader's own key.
            let Some(coll) = d.get_str("_id").ok().and_then(|id| id.strip_prefix(from.as_str())).filter(|c| !c.starts_with('$')).map(str::to_string) else { continue };
            if let Some(cp) = parse(&d) {
                found.push((coll, cp));
            }
        }
        Ok(found)
    }


    /// Saves `cp` under lease epoch `epoch`, unless a holder with a newer epoch has saved
    /// since (then `Superseded`, and nothing changes).
    pub async fn save(&self, ns: &str, cp: &Checkpoint, instance: &str, epoch: i64) -> Result<(), CheckpointError> {
        let (token, start_at, copy_at, copy_after) = match &cp.position {
            Position::Token(t) => (t.clone(), Bson::Null, Bson::Null, Bson::Null),
            Position::StartAt(ts) => (Bson::Null, Bson::Timestamp(*ts), Bson::Null, Bson::Null),
            Position::Copying { at, after } => (Bson::Null, Bson::Null, Bson::Timestamp(*at), after.clone().unwrap_or(Bson::Null)),
        };
        let replacement = doc! {
            "_id": self.key(ns),
            "resume_token": token,
            "start_at": start_at,
            "copy_at": copy_at,
            "copy_after": copy_after,
            "event_time": cp.event_time.map(Bson::Timestamp).unwrap_or(Bson::Null),
            "saved_at": bson::DateTime::now(),
            "saved_by": instance,
            "lease_epoch": epoch,
        };
        match self.coll.replace_one(self.not_newer_than(ns, epoch), replacement).with_options(ReplaceOptions::builder().upsert(true).build()).await {
            Ok(_) => Ok(()),
            // The filter missed an existing checkpoint, so the upsert's insert met its `_id`.
            Err(e) if crate::mongo::is_duplicate_key(&e) => Err(CheckpointError::Superseded { ns: ns.to_string(), epoch }),
            Err(e) => Err(e.into()),
        }
    }

    /// Forgets a collection's position (before a fresh initial copy), unless a newer
    /// lease holder wrote it.
    pub async fn clear(&self, ns: &str, epoch: i64) -> Result<(), CheckpointError> {
        if self.coll.delete_one(self.not_newer_than(ns, epoch)).await?.deleted_count == 0 && self.coll.find_one(doc! {"_id": self.key(ns)}).await?.is_some() {
            return Err(CheckpointError::Superseded { ns: ns.to_string(), epoch });
        }
        Ok(())
    }
}

/// A stored checkpoint document's position (`None`: a document of no known shape).
fn parse(d: &Document) -> Option<Checkpoint> {
    let event_time = d.get_timestamp("event_time").ok();
    let position = match (d.get("resume_token"), d.get_timestamp("start_at"), d.get_timestamp("copy_at")) {
        (Some(t), _, _) if *t != Bson::Null => Position::Token(t.clone()),
        (_, Ok(ts), _) => Position::StartAt(ts),
        (_, _, Ok(at)) => Position::Copying { at, after: d.get("copy_after").filter(|b| **b != Bson::Null).cloned() },
        _ => return None,
    };
    Some(Checkpoint { position, event_time })
}

/// The cluster time a MongoDB resume token stands for: its `_data` KeyString starts with
/// a Timestamp (type byte 0x82, then seconds and increment, big-endian). `None` for
/// tokens of another shape (DocumentDB's differ).
pub fn token_cluster_time(token: &Bson) -> Option<Timestamp> {
    let data = token.as_document()?.get_str("_data").ok()?;
    if data.len() < 18 || !data.starts_with("82") {
        return None;
    }
    let time = u32::from_str_radix(data.get(2..10)?, 16).ok()?;
    let increment = u32::from_str_radix(data.get(10..18)?, 16).ok()?;
    Some(Timestamp { time, increment })
}

/// Names of docrepl's own bookkeeping collections: never replicated.
pub const CHECKPOINTS: &str = "checkpoints";
pub const LEASES: &str = "leases";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_time_of_a_mongodb_token() {
        let token = doc! {"_data": "826B00EA26000000042B022C0100296E5A1004BDCBFD80049549B88D039977A0537EF446645F696400646B00EA26B8510FFF174271530004"};
        let ts = token_cluster_time(&Bson::Document(token)).unwrap();
        assert_eq!(ts, Timestamp { time: 0x6B00EA26, increment: 4 });
        assert_eq!(token_cluster_time(&Bson::Document(doc! {"_data": "zz"})), None);
    }
}
