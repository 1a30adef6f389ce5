//! Debezium MongoDB envelope encoding and decoding (pure, no I/O).
//!
//! Key: `{"id":"<_id as relaxed Extended JSON>"}`. Value: `before`, `after` (the full
//! document as a canonical Extended JSON v2 string), `updateDescription`, `source`, `op`,
//! `ts_ms`, `transaction` — the layout of Debezium's MongoDB connector 2.x with
//! `capture.mode=change_streams_update_full`. Canonical Extended JSON keeps every BSON type
//! exact, so `decode(encode(doc))` gives the same BSON bytes back.
//!
//! Decoding also accepts what a real Debezium connector writes: relaxed or legacy
//! (`$date` as millis, `$binary` + `$type`, `$regex` + `$options`) Extended JSON, values
//! wrapped in a Connect `{"schema":…,"payload":…}` envelope, and `u` events that carry only
//! `updateDescription`.

use bson::Bson;

use serde::Serialize;

use crate::event::{ChangeEvent, Namespace, Op, SourceInfo};

mod decode;
pub mod exact;
pub mod heartbeat;
pub mod metadata;
#[cfg(test)]
mod tests;

pub use decode::{decode, decode_key_id, parse_extjson_document, MAX_ARRAY_PADDING};
pub use metadata::MetadataMessage;

/// The connector name written in `source.connector`.
pub const CONNECTOR: &str = "mongodb";
/// The version written in `source.version`.
pub const VERSION: &str = concat!("docrepl-", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EncodeError {
    #[error("document is not valid BSON: {0}")]
    InvalidBson(String),
}

/// Why a message on the topic could not be decoded. The text goes into the dead-letter
/// topic's `docrepl.reason` header.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("value is not valid UTF-8 JSON: {0}")]
    InvalidJson(String),
    #[error("value is not a JSON object")]
    NotAnObject,
    #[error("field `{0}` is missing or has the wrong type")]
    MissingField(&'static str),
    #[error("unknown op {0:?} (expected c, u, d or r)")]
    UnknownOp(String),
    #[error("field `{field}` is not valid Extended JSON: {message}")]
    ExtJson { field: &'static str, message: String },
    #[error("cannot tell the document's _id: no `after._id` and no usable message key ({0})")]
    MissingId(String),
    #[error("`u` event carries neither `after` nor `updateDescription`")]
    EmptyUpdate,
    #[error("cannot tell the namespace: no `source.db`/`source.collection` and topic {0:?} is not <prefix>.<db>.<collection>")]
    MissingNamespace(String),
    #[error("a truncate event (op \"t\") that is not docrepl's clear marker: truncates are not replicated")]
    ForeignTruncate,
    #[error("a message event (op \"m\") that is not docrepl's metadata message: nothing to apply")]
    ForeignMessage,
}

/// What one message on the topic means.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A tombstone (null value) after a delete: only for log compaction, nothing to apply.
    Tombstone,
    Event(ChangeEvent),
    /// docrepl's clear marker: the sink deletes this partition's share of the target
    /// collection (history lost and re-copied, or the collection dropped on the source).
    Clear(ClearMarker),
    /// docrepl's metadata message: the target collection's options and indexes follow
    /// the source's (see `metadata`).
    Metadata(MetadataMessage),
    /// docrepl's heartbeat: every change of this partition up to `source_ms` (source
    /// cluster time) was published before it (see `heartbeat`).
    Heartbeat { source_ms: i64 },
}

/// Sent by the source to every partition of a collection's topic when the target must
/// lose its documents: before a fresh copy that replaces lost change history
/// (`on_history_lost = "recopy"`: documents deleted while the history was lost would
/// otherwise stay on the target for good; the copy, which follows in the same partition,
/// puts back every document that still exists), and for a drop or rename of the source
/// collection when `source.ddl = "replicate"`. The sink deletes the target documents whose
/// key maps to this partition. Written as a Debezium truncate (`op: "t"`) with a
/// `docrepl.clear` block saying which share and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearMarker {
    pub ns: Namespace,
    pub partition: i32,
    pub partitions: i32,
    /// For people reading the topic and the sink's log.
    pub reason: String,
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// The Kafka key of a document: `{"id":"<relaxed Extended JSON of _id>"}`, as Debezium
/// writes it, except that a double or decimal `_id` holding a whole number (below 2^53)
/// gets the key of that integer: MongoDB's `_id` index takes `1`, `NumberLong(1)`, `1.0`
/// and `NumberDecimal("1")` for the same document, so their events must share a
/// partition to stay in order (a delete of `1` then an insert of `1.0`). The exact type
/// still travels in `after`.
pub fn encode_key(id: &Bson) -> Vec<u8> {
    use std::io::Write;
    // The usual `_id` types written directly; the rest through bson's relaxed text.
    let mut out = Vec::with_capacity(48);
    let _ = match id {
        Bson::Int32(i) => write!(out, r#"{{"id":"{i}"}}"#),
        Bson::Int64(i) => write!(out, r#"{{"id":"{i}"}}"#),
        Bson::ObjectId(oid) => write!(out, r#"{{"id":"{{\"$oid\":\"{}\"}}"}}"#, oid.to_hex()),
        other => match whole_number(other) {
            Some(n) => write!(out, r#"{{"id":"{n}"}}"#),
            None => serde_json::to_writer(&mut out, &KeyOut { id: id_relaxed_json(other) }).map_err(std::io::Error::other),
        },
    };
    out
}

/// The integer a double or decimal holds, when it is a whole number below 2^53 in size
/// (where a double is exact).
fn whole_number(id: &Bson) -> Option<i64> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let value = match id {
        Bson::Double(d) => *d,
        // Decimal128's text (`1`, `1.0`, `1E+2`, `-0`) reads as a double exactly when it is
        // a whole number of this size.
        Bson::Decimal128(d) => d.to_string().parse::<f64>().ok()?,
        _ => return None,
    };
    (value.is_finite() && value.fract() == 0.0 && value.abs() < EXACT).then_some(value as i64)
}

/// The relaxed Extended JSON text of an `_id`, as Debezium puts it in the key:
/// `{"$oid":"…"}`, `1234`, `"abc"`.
pub fn id_relaxed_json(id: &Bson) -> String {
    id.clone().into_relaxed_extjson().to_string()
}

/// A string that is equal for two `_id`s exactly when MongoDB's `_id` index treats them
/// as the same document. Numbers compare by value across int32/int64/double there, so
/// they are normalised; everything else is its relaxed Extended JSON. Folding groups by it.
pub fn id_fold_key(id: &Bson) -> String {
    match id {
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Double(_) | Bson::Decimal128(_) => match whole_number(id) {
            Some(n) => n.to_string(),
            None => id_relaxed_json(id),
        },
        other => id_relaxed_json(other),
    }
}

/// The Kafka value of an event.
pub fn encode_value(event: &ChangeEvent, now_ms: i64) -> Result<Vec<u8>, EncodeError> {
    let after = event.after.as_ref().filter(|_| event.op != Op::Delete);
    let mut out = Vec::with_capacity(after.map_or(0, |a| a.as_bytes().len() * 3) + 512);
    // `after` is written by hand, escaped while it is generated (serializing the finished
    // text as a string escaped it in a second pass over a second buffer: `cargo bench
    // --bench codec` encode 1.41 -> 1.07 µs small, 19.9 -> 10.0 µs 16 KB); the fields
    // after it by serde, as an object whose `{` becomes the `,`.
    out.extend_from_slice(br#"{"before":null,"after":"#);
    match after {
        Some(raw) => {
            out.push(b'"');
            crate::extjson::write_canonical_document_in_string(raw, &mut out)
                .map_err(|e| EncodeError::InvalidBson(e.to_string()))?;
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    // The updated fields as BSON once: their text and the exact block both come from it.
    let updated = match &event.update {
        Some(u) => Some((u, bson::RawDocumentBuf::from_document(&u.updated_fields).map_err(|e| EncodeError::InvalidBson(e.to_string()))?)),
        None => None,
    };
    let update_description = match &updated {
        Some((u, raw)) => Some(UpdateOut {
            removed_fields: &u.removed_fields,
            updated_fields: crate::extjson::canonical_document(raw).map_err(|e| EncodeError::InvalidBson(e.to_string()))?,
            truncated_arrays: u.truncated_arrays.iter().map(|t| TruncatedOut { field: &t.field, size: t.size }).collect(),
        }),
        None => None,
    };
    let s = &event.source;
    let rest = ValueRest {
        update_description,
        source: SourceOut {
            version: VERSION,
            connector: CONNECTOR,
            name: &s.name,
            ts_ms: s.ts_ms,
            snapshot: s.snapshot.as_str(),
            db: &event.ns.db,
            sequence: None,
            collection: &event.ns.coll,
            ord: s.ord,
            lsid: s.lsid.as_deref(),
            txn_number: s.txn_number,
            rs: &s.rs,
        },
        op: event.op.code(),
        ts_ms: now_ms,
        transaction: None,
        docrepl: exact_block(after, updated.as_ref().map(|(u, raw)| (*u, raw))),
    };
    let brace = out.len();
    serde_json::to_writer(&mut out, &rest).map_err(|e| EncodeError::InvalidBson(e.to_string()))?;
    out[brace] = b',';
    Ok(out)
}

/// Key and value of the clear marker for one partition (see [`ClearMarker`]). The key
/// is never a document key, so compaction keeps one marker per partition.
pub fn encode_clear_marker(marker: &ClearMarker, source: &SourceInfo, now_ms: i64) -> (Vec<u8>, Vec<u8>) {
    let key = serde_json::json!({"docrepl_clear": marker.partition}).to_string().into_bytes();
    let value = serde_json::json!({
        "before": null,
        "after": null,
        "source": {
            "version": VERSION, "connector": CONNECTOR, "name": source.name, "ts_ms": source.ts_ms,
            "snapshot": "true", "db": marker.ns.db, "collection": marker.ns.coll, "rs": source.rs,
        },
        "op": "t",
        "ts_ms": now_ms,
        "docrepl": {"clear": {"partition": marker.partition, "partitions": marker.partitions, "reason": marker.reason}},
    });
    (key, value.to_string().into_bytes())
}

#[derive(Serialize)]
struct KeyOut {
    id: String,
}

/// The envelope's fields after `after`, in Debezium's order.
#[derive(Serialize)]
struct ValueRest<'a> {
    #[serde(rename = "updateDescription")]
    update_description: Option<UpdateOut<'a>>,
    source: SourceOut<'a>,
    op: &'static str,
    ts_ms: i64,
    transaction: Option<()>,
    /// Only when a document's Extended JSON is ambiguous (see `exact`).
    #[serde(skip_serializing_if = "Option::is_none")]
    docrepl: Option<ExactOut>,
}

#[derive(Serialize)]
struct ExactOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    after_bson: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_fields_bson: Option<String>,
}

/// The exact BSON of `after` and of the patch's updated fields, for those whose field
/// names Extended JSON cannot carry unambiguously (`$`-prefixed); `None` for the rest.
/// `update`: the patch with its updated fields as BSON.
fn exact_block(
    after: Option<&bson::RawDocumentBuf>,
    update: Option<(&crate::event::UpdateDescription, &bson::RawDocumentBuf)>,
) -> Option<ExactOut> {
    let after_bson = after.filter(|a| exact::has_dollar_field(a)).map(|a| exact::encode(a));
    let updated_fields_bson = update.and_then(|(u, raw)| {
        let dollar_path = u.updated_fields.keys().any(|k| k.split('.').any(|c| c.starts_with('$')));
        (dollar_path || exact::has_dollar_field(raw)).then(|| exact::encode(raw))
    });
    (after_bson.is_some() || updated_fields_bson.is_some()).then_some(ExactOut { after_bson, updated_fields_bson })
}

#[derive(Serialize)]
struct UpdateOut<'a> {
    #[serde(rename = "removedFields")]
    removed_fields: &'a [String],
    #[serde(rename = "updatedFields")]
    updated_fields: String,
    #[serde(rename = "truncatedArrays")]
    truncated_arrays: Vec<TruncatedOut<'a>>,
}

#[derive(Serialize)]
struct TruncatedOut<'a> {
    field: &'a str,
    size: u32,
}

#[derive(Serialize)]
struct SourceOut<'a> {
    version: &'static str,
    connector: &'static str,
    name: &'a str,
    ts_ms: i64,
    snapshot: &'static str,
    db: &'a str,
    sequence: Option<String>,
    collection: &'a str,
    ord: u32,
    lsid: Option<&'a str>,
    #[serde(rename = "txnNumber")]
    txn_number: Option<i64>,
    rs: &'a str,
}

