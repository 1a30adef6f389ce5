//! Turns what the change stream (or the initial copy) returns into docrepl's event model.

use bson::{Bson, RawDocumentBuf, Timestamp};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};

use crate::event::{ChangeEvent, Namespace, Op, SnapshotMarker, SourceInfo, TruncatedArray, UpdateDescription};

/// What one change stream event means to the reader.
#[derive(Debug)]
pub enum StreamItem {
    Change(Box<ChangeEvent>),
    /// drop / rename / dropDatabase: reported, never a crash.
    Ddl { kind: String, to: Option<String>, cluster_time: Option<Timestamp> },
    /// The stream ended for good (after a drop or rename); reopen after `cluster_time`.
    Invalidate { cluster_time: Option<Timestamp> },
    /// The collection's options or indexes changed (`create`, `createIndexes`,
    /// `dropIndexes`, `modify`: reported with `showExpandedEvents`): its metadata is sent
    /// again (see `metadata`).
    Metadata(String),
    /// A type this version does not replicate (shardCollection, ...): skipped with a log line.
    Skipped(String),
}

/// The expanded events that change a collection's metadata.
const METADATA_EVENTS: [&str; 4] = ["create", "createIndexes", "dropIndexes", "modify"];

/// Static facts every event of a collection carries.
#[derive(Debug, Clone)]
pub struct Origin {
    pub ns: Namespace,
    pub name: String,
    pub rs: String,
}

impl Origin {
    fn source(&self, ts: Option<Timestamp>, snapshot: SnapshotMarker) -> SourceInfo {
        let ts = ts.unwrap_or(Timestamp { time: 0, increment: 0 });
        SourceInfo {
            name: self.name.clone(),
            rs: self.rs.clone(),
            ts_ms: ts.time as i64 * 1000,
            ord: ts.increment,
            snapshot,
            lsid: None,
            txn_number: None,
        }
    }

    /// A document of the initial copy, read at cluster time `at`.
    pub fn snapshot_read(&self, doc: RawDocumentBuf, at: Timestamp) -> Result<ChangeEvent, String> {
        let id = doc
            .get("_id")
            .map_err(|e| e.to_string())?
            .ok_or("document without _id")?
            .try_into()
            .map_err(|e: bson::raw::Error| e.to_string())?;
        Ok(ChangeEvent {
            op: Op::Read,
            ns: self.ns.clone(),
            id,
            after: Some(doc),
            update: None,
            source: self.source(Some(at), SnapshotMarker::Yes),
        })
    }

    pub fn convert(&self, ev: ChangeStreamEvent<RawDocumentBuf>) -> StreamItem {
        let op = match &ev.operation_type {
            OperationType::Insert => Op::Create,
            OperationType::Update | OperationType::Replace => Op::Update,
            OperationType::Delete => Op::Delete,
            OperationType::Drop | OperationType::DropDatabase | OperationType::Rename => {
                return StreamItem::Ddl {
                    kind: format!("{:?}", ev.operation_type),
                    to: ev.to.map(|t| format!("{}.{}", t.db, t.coll.unwrap_or_default())),
                    cluster_time: ev.cluster_time,
                }
            }
            OperationType::Invalidate => return StreamItem::Invalidate { cluster_time: ev.cluster_time },
            OperationType::Other(kind) if METADATA_EVENTS.contains(&kind.as_str()) => return StreamItem::Metadata(kind.clone()),
            other => return StreamItem::Skipped(format!("{other:?}")),
        };
        let id = ev.document_key.as_ref().and_then(|k| k.get("_id")).cloned().unwrap_or(Bson::Null);
        let update = match (&ev.operation_type, ev.update_description) {
            (OperationType::Update, Some(u)) => Some(UpdateDescription {
                updated_fields: u.updated_fields,
                removed_fields: u.removed_fields,
                truncated_arrays: u
                    .truncated_arrays
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| TruncatedArray { field: t.field, size: t.new_size.max(0) as u32 })
                    .collect(),
            }),
            // A large document's update may have had its patch projected away (see
            // reader::change_stream_pipeline); the full document still carries the change.
            (OperationType::Update, None) => None,
            _ => None,
        };
        let mut source = self.source(ev.cluster_time, SnapshotMarker::No);
        source.lsid = ev.lsid.map(|l| Bson::Document(l).into_relaxed_extjson().to_string());
        source.txn_number = ev.txn_number;
        let after = if op == Op::Delete { None } else { ev.full_document };
        StreamItem::Change(Box::new(ChangeEvent { op, ns: self.ns.clone(), id, after, update, source }))
    }
}

/// `{"_id": …}` of a document key, for error messages.
pub fn describe_id(id: &Bson) -> String {
    crate::debezium::id_relaxed_json(id)
}
