//! The change event model shared by both sides: what the source reads from a change
//! stream (or the initial copy) and what the sink decodes from the topic.

use bson::{Bson, Document, RawDocumentBuf};

/// A database and collection name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace {
    pub db: String,
    pub coll: String,
}

impl Namespace {
    pub fn new(db: impl Into<String>, coll: impl Into<String>) -> Self {
        Namespace { db: db.into(), coll: coll.into() }
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.db, self.coll)
    }
}

/// Debezium's operation codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `r`: a document read by the initial copy.
    Read,
    /// `c`: an insert.
    Create,
    /// `u`: an update or a replace.
    Update,
    /// `d`: a delete.
    Delete,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
        }
    }

    pub fn from_code(code: &str) -> Option<Op> {
        match code {
            "r" => Some(Op::Read),
            "c" => Some(Op::Create),
            "u" => Some(Op::Update),
            "d" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// An array that an update shortened to `size` elements.
#[derive(Debug, Clone, PartialEq)]
pub struct TruncatedArray {
    pub field: String,
    pub size: u32,
}

/// What an update changed, as the change stream reports it. Applied in this order:
/// truncate the arrays, then set `updated_fields`, then remove `removed_fields`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpdateDescription {
    pub updated_fields: Document,
    pub removed_fields: Vec<String>,
    pub truncated_arrays: Vec<TruncatedArray>,
}

/// Whether a `r` event belongs to the initial copy, in Debezium's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMarker {
    /// A streamed change (`"false"`).
    No,
    /// A document of the initial copy (`"true"`).
    Yes,
    /// The last document of the initial copy (`"last"`).
    Last,
}

impl SnapshotMarker {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMarker::No => "false",
            SnapshotMarker::Yes => "true",
            SnapshotMarker::Last => "last",
        }
    }
}

/// Where an event came from: the Debezium `source` block.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// The logical name of the source (Debezium's `topic.prefix`).
    pub name: String,
    /// The replica set name of the source cluster.
    pub rs: String,
    /// Cluster time of the change, milliseconds since the epoch (seconds × 1000).
    pub ts_ms: i64,
    /// The increment of the cluster time: orders events within one second.
    pub ord: u32,
    pub snapshot: SnapshotMarker,
    /// Session id of a multi-document transaction, as JSON.
    pub lsid: Option<String>,
    pub txn_number: Option<i64>,
}

/// One change to one document.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub op: Op,
    pub ns: Namespace,
    /// The document's `_id`, with its exact BSON type where known.
    pub id: Bson,
    /// The full document after the change (`c`, `r`, replace, and updates whose lookup
    /// found the document); `None` for deletes and for updates known only by their patch.
    pub after: Option<RawDocumentBuf>,
    /// For updates: the patch.
    pub update: Option<UpdateDescription>,
    pub source: SourceInfo,
}

impl ChangeEvent {
    /// True when the event carries the whole document (it replaces whatever came before).
    pub fn is_full_document(&self) -> bool {
        self.op != Op::Delete && self.after.is_some()
    }
}
