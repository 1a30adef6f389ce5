//! Clearing a partition's share of a target collection (a clear marker: see
//! `debezium::ClearMarker`).

use bson::{rawdoc, Bson, RawDocumentBuf};

use super::{CommandError, WriteOutcome, Writer};
use crate::event::Namespace;
use crate::kafka::partitioner::partition_for_key;

impl Writer {
    /// Deletes the documents of `ns` whose Kafka key falls in `partition` of
    /// `partitions` (a clear marker's share: see `debezium::ClearMarker`). Scans the
    /// `_id`s and deletes in chunks, so memory stays bounded. Returns how many it deleted.
    /// Stops (with `CommandError::Stopped`) when `stop` is cancelled: a revoked worker must
    /// not go on deleting what the partition's new owner writes.
    pub async fn clear_partition_share(
        &self,
        ns: &Namespace,
        partition: i32,
        partitions: i32,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<u64, CommandError> {
        use futures::TryStreamExt;
        let failed = |source| CommandError::from_mongo(ns, source);
        let coll = self.client.database(&ns.db).collection::<RawDocumentBuf>(&ns.coll);
        let mut cursor = coll.find(bson::doc! {}).projection(bson::doc! {"_id": 1}).batch_size(10_000).await.map_err(failed)?;
        let mut chunk: Vec<(usize, RawDocumentBuf)> = Vec::new();
        let mut deleted = 0u64;
        loop {
            let next = cursor.try_next().await.map_err(failed)?;
            let id = next.as_ref().and_then(|d| d.get("_id").ok().flatten()).map(|id| id.to_raw_bson());
            if let Some(id) = id {
                let mine = Bson::try_from(id.clone())
                    .map(|b| partition_for_key(&crate::debezium::encode_key(&b), partitions) == partition)
                    .unwrap_or(false);
                if mine {
                    chunk.push((chunk.len(), rawdoc! {"q": {"_id": id}, "limit": 1}));
                }
            }
            if chunk.len() >= 10_000 || (next.is_none() && !chunk.is_empty()) {
                if stop.is_cancelled() {
                    return Err(CommandError::Stopped { ns: ns.to_string() });
                }
                let n = chunk.len() as u64;
                let mut outcome = WriteOutcome::default();
                self.run(ns, "delete", "deletes", std::mem::take(&mut chunk), &mut outcome).await?;
                if let Some(f) = outcome.failures.first() {
                    return Err(CommandError::DeleteRefused { ns: ns.to_string(), code: f.code, message: f.message.clone() });
                }
                deleted += n;
            }
            if next.is_none() {
                return Ok(deleted);
            }
        }
    }
}
