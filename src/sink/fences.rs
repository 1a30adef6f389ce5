//! Where each partition's fence history is kept (see `crate::fence`): one document per
//! topic partition in `<sink.state_database>.fences` on the target, written when a
//! generation was raised (a reader restarted or moved: rare), before the offset past it
//! is committed, and read when a worker starts. Keyed by topic and partition only, not
//! by group: the history is a function of the partition's log, the same for any reader.

use bson::{doc, Document};
use mongodb::Collection;

use crate::fence::WriterHistory;

const FENCES: &str = "fences";

#[derive(Clone)]
pub struct FenceStore {
    coll: Collection<Document>,
}

impl FenceStore {
    pub fn new(client: &mongodb::Client, state_database: &str) -> Self {
        FenceStore { coll: client.database(state_database).collection(FENCES) }
    }

    fn id(topic: &str, partition: i32) -> String {
        format!("{topic}/{partition}")
    }

    /// The stored history of a partition (none yet: empty). A document this version
    /// cannot read counts as none: that gives up the fence, never a message.
    pub async fn load(&self, topic: &str, partition: i32) -> mongodb::error::Result<Vec<WriterHistory>> {
        let Some(found) = self.coll.find_one(doc! {"_id": Self::id(topic, partition)}).await? else { return Ok(Vec::new()) };
        let writers = found.get_array("writers").map(|a| a.to_vec()).unwrap_or_default();
        Ok(writers.into_iter().filter_map(|w| bson::from_bson::<WriterHistory>(w).ok()).collect())
    }

    pub async fn save(&self, topic: &str, partition: i32, history: &[WriterHistory]) -> mongodb::error::Result<()> {
        let writers = bson::to_bson(history).map_err(|e| mongodb::error::Error::custom(format!("fence history: {e}")))?;
        let entry = doc! {
            "_id": Self::id(topic, partition),
            "topic": topic,
            "partition": partition,
            "writers": writers,
            "saved_at": bson::DateTime::now(),
        };
        self.coll.replace_one(doc! {"_id": Self::id(topic, partition)}, entry).upsert(true).await.map(drop)
    }
}
