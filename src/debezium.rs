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

use bson::{Bson, Document, RawDocumentBuf};
use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::extjson::normalize_legacy_extjson;
use crate::event::{
    ChangeEvent, Namespace, Op, SnapshotMarker, SourceInfo, TruncatedArray, UpdateDescription,
};

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
    let update_description = event.update.as_ref().map(|u| UpdateOut {
        removed_fields: &u.removed_fields,
        updated_fields: Bson::Document(u.updated_fields.clone()).into_canonical_extjson().to_string(),
        truncated_arrays: u
            .truncated_arrays
            .iter()
            .map(|t| TruncatedOut { field: &t.field, size: t.size })
            .collect(),
    });
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

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// The value as it arrives, parsed in one pass without building a JSON tree for the
/// envelope (the hot path of the sink). Unknown fields are ignored.
#[derive(Deserialize)]
struct EnvelopeIn<'a> {
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "after_in")]
    after: Option<AfterIn>,
    #[serde(rename = "updateDescription", default)]
    update_description: Option<Value>,
    #[serde(borrow, default)]
    source: Option<SourceIn<'a>>,
    /// Connect's JSON converter with schemas: the event is the payload.
    #[serde(borrow, default)]
    payload: Option<Box<EnvelopeIn<'a>>>,
    #[serde(default)]
    schema: Option<serde::de::IgnoredAny>,
    /// docrepl's own control data (the clear marker).
    #[serde(default)]
    docrepl: Option<Value>,
}

/// The `after` field as it is read: its Extended JSON text goes straight into BSON while
/// serde_json still holds it unescaped (no owned copy of the text per event).
enum AfterIn {
    Document(RawDocumentBuf),
    /// A string that is not Extended JSON of a document: why.
    Invalid(String),
    /// Some other JSON value (null is `None`).
    NotText,
}

fn after_in<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<AfterIn>, D::Error> {
    use serde::de::{IgnoredAny, MapAccess, SeqAccess};
    struct AfterVisitor;
    impl<'de> serde::de::Visitor<'de> for AfterVisitor {
        type Value = Option<AfterIn>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("Extended JSON text or null")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
            Ok(Some(match crate::extjson::parse_document(text) {
                Ok(doc) => AfterIn::Document(doc),
                Err(e) => AfterIn::Invalid(e.to_string()),
            }))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Some(AfterIn::NotText))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Some(AfterIn::NotText))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Some(AfterIn::NotText))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Some(AfterIn::NotText))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Some(AfterIn::NotText))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Some(AfterIn::NotText))
        }
    }
    de.deserialize_any(AfterVisitor)
}

#[derive(Deserialize, Default)]
struct SourceIn<'a> {
    #[serde(borrow, default)]
    db: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    collection: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    rs: Option<Cow<'a, str>>,
    #[serde(default)]
    ts_ms: Option<i64>,
    #[serde(default)]
    ord: Option<i64>,
    #[serde(default)]
    snapshot: Option<Value>,
    #[serde(default)]
    lsid: Option<Value>,
    #[serde(rename = "txnNumber", default)]
    txn_number: Option<i64>,
}

/// Decodes one message. `topic` names the namespace when the value has no `source` block.
pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>, topic: &str) -> Result<Decoded, DecodeError> {
    let value = match value {
        None => return Ok(Decoded::Tombstone),
        Some(v) => v,
    };
    let text = std::str::from_utf8(value).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    if text.trim() == "null" {
        return Ok(Decoded::Tombstone);
    }
    if !text.trim_start().starts_with('{') {
        return Err(DecodeError::NotAnObject);
    }
    let mut envelope: EnvelopeIn<'_> =
        serde_json::from_str(text).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    if envelope.schema.is_some() {
        match envelope.payload.take() {
            Some(payload) => envelope = *payload,
            None => return Ok(Decoded::Tombstone),
        }
    }

    let op_code = envelope.op.as_deref().ok_or(DecodeError::MissingField("op"))?;
    if op_code == "t" {
        return decode_clear(&envelope, topic);
    }
    let op = Op::from_code(op_code).ok_or_else(|| DecodeError::UnknownOp(op_code.to_string()))?;

    let after = match envelope.after.take() {
        None => None,
        Some(AfterIn::NotText) => return Err(DecodeError::MissingField("after")),
        // A delete's document is not needed (Debezium sends none).
        Some(_) if op == Op::Delete => None,
        Some(AfterIn::Document(doc)) => Some(doc),
        Some(AfterIn::Invalid(message)) => return Err(DecodeError::ExtJson { field: "after", message }),
    };
    let update = match envelope.update_description.take() {
        None | Some(Value::Null) => None,
        Some(Value::Object(u)) => Some(decode_update_description(u)?),
        Some(_) => return Err(DecodeError::MissingField("updateDescription")),
    };
    match op {
        Op::Create | Op::Read if after.is_none() => return Err(DecodeError::MissingField("after")),
        Op::Update if after.is_none() && update.is_none() => return Err(DecodeError::EmptyUpdate),
        _ => {}
    }

    let id = match after.as_ref().and_then(|d| d.get("_id").ok().flatten()) {
        Some(id) => Bson::try_from(id).map_err(|e| DecodeError::ExtJson { field: "after._id", message: e.to_string() })?,
        None => decode_key_id(key)?,
    };
    let source = envelope.source.unwrap_or_default();
    let ns = namespace_of(&source, topic)?;
    let source = decode_source(source);
    Ok(Decoded::Event(ChangeEvent { op, ns, id, after, update, source }))
}

/// A truncate is applied only as docrepl's clear marker: a truncate from another
/// producer names no partition share, and clearing a whole collection from one partition's
/// worker while the others apply newer events would lose them.
fn decode_clear(envelope: &EnvelopeIn<'_>, topic: &str) -> Result<Decoded, DecodeError> {
    let clear = envelope.docrepl.as_ref().and_then(|d| d.get("clear")).ok_or(DecodeError::ForeignTruncate)?;
    let number = |field: &'static str| {
        clear.get(field).and_then(Value::as_i64).and_then(|n| i32::try_from(n).ok()).ok_or(DecodeError::MissingField(field))
    };
    let (partition, partitions) = (number("partition")?, number("partitions")?);
    if partitions < 1 || !(0..partitions).contains(&partition) {
        return Err(DecodeError::MissingField("docrepl.clear.partition"));
    }
    let ns = match &envelope.source {
        Some(source) => namespace_of(source, topic)?,
        None => namespace_of(&SourceIn::default(), topic)?,
    };
    let reason = clear.get("reason").and_then(Value::as_str).unwrap_or("unspecified").to_string();
    Ok(Decoded::Clear(ClearMarker { ns, partition, partitions, reason }))
}

/// Debezium's JSON converter with `schemas.enable=true` wraps values in
/// `{"schema": …, "payload": …}`; the event is the payload.
fn unwrap_connect_envelope(root: Value) -> Value {
    match root {
        Value::Object(mut o) if o.contains_key("schema") && o.contains_key("payload") => {
            o.remove("payload").unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// The `_id` from a key `{"id":"<relaxed Extended JSON>"}` (possibly Connect-wrapped).
/// Relaxed JSON may not say whether a number was int32 or int64; MongoDB's `_id` equality
/// compares numbers by value, so deletes and patches by this `_id` still find the document.
pub fn decode_key_id(key: Option<&[u8]>) -> Result<Bson, DecodeError> {
    let key = key.ok_or_else(|| DecodeError::MissingId("the message has no key".into()))?;
    let root: Value =
        serde_json::from_slice(key).map_err(|e| DecodeError::MissingId(format!("key is not JSON: {e}")))?;
    let id_text = match unwrap_connect_envelope(root) {
        Value::Object(o) => match o.get("id") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(DecodeError::MissingId("key has no string field `id`".into())),
        },
        _ => return Err(DecodeError::MissingId("key is not a JSON object".into())),
    };
    let mut id: Value = serde_json::from_str(&id_text)
        .map_err(|e| DecodeError::MissingId(format!("key id is not Extended JSON: {e}")))?;
    normalize_legacy_extjson(&mut id);
    let id = Bson::try_from(id).map_err(|e| DecodeError::MissingId(format!("key id is not Extended JSON: {e}")))?;
    match crate::extjson::c_string_problem(&id) {
        Some(problem) => Err(DecodeError::MissingId(format!("key id: {problem}"))),
        None => Ok(id),
    }
}

fn decode_update_description(mut u: Map<String, Value>) -> Result<UpdateDescription, DecodeError> {
    let updated_fields = match u.remove("updatedFields") {
        None | Some(Value::Null) => Document::new(),
        Some(Value::String(s)) => parse_extjson_document(&s, "updateDescription.updatedFields")?,
        // Some writers put the object itself rather than its JSON text.
        Some(Value::Object(o)) => extjson_object_to_document(o, "updateDescription.updatedFields")?,
        Some(_) => return Err(DecodeError::MissingField("updateDescription.updatedFields")),
    };
    let removed_fields = match u.remove("removedFields") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(DecodeError::MissingField("updateDescription.removedFields")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(DecodeError::MissingField("updateDescription.removedFields")),
    };
    let truncated_arrays = match u.remove("truncatedArrays") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|v| {
                let field = v.get("field").and_then(Value::as_str);
                // MongoDB calls it newSize; Debezium calls it size.
                let size = v.get("size").or_else(|| v.get("newSize")).and_then(Value::as_u64);
                match (field, size) {
                    (Some(f), Some(s)) if s <= u32::MAX as u64 => {
                        Ok(TruncatedArray { field: f.to_string(), size: s as u32 })
                    }
                    _ => Err(DecodeError::MissingField("updateDescription.truncatedArrays")),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(DecodeError::MissingField("updateDescription.truncatedArrays")),
    };
    let patch = UpdateDescription { updated_fields, removed_fields, truncated_arrays };
    check_patch(&patch)?;
    Ok(patch)
}

/// The most elements MongoDB pads an array with when a patch sets past its end (the
/// server refuses more): a patch beyond it never came from a change stream, and folding
/// it in memory would allocate billions of nulls.
pub const MAX_ARRAY_PADDING: u64 = 1_500_000;

/// Refuses patches BSON or MongoDB cannot carry out: NUL bytes in field names or paths
/// (BSON's C strings cannot hold them; left in, the update would be sent empty), and array
/// indexes past MongoDB's padding limit.
fn check_patch(patch: &UpdateDescription) -> Result<(), DecodeError> {
    let field = "updateDescription";
    let bad = |message: String| DecodeError::ExtJson { field, message };
    if let Some(problem) = crate::extjson::document_c_string_problem(&patch.updated_fields) {
        return Err(bad(problem));
    }
    let paths = patch.updated_fields.keys().chain(patch.removed_fields.iter()).chain(patch.truncated_arrays.iter().map(|t| &t.field));
    for path in paths {
        if let Some(problem) = crate::extjson::field_name_problem(path) {
            return Err(bad(problem));
        }
        if let Some(index) = path.split('.').filter_map(|p| p.parse::<u64>().ok()).find(|i| *i > MAX_ARRAY_PADDING) {
            return Err(bad(format!("field path {path:?} sets array element {index}, past MongoDB's limit of {MAX_ARRAY_PADDING}")));
        }
    }
    Ok(())
}

fn namespace_of(source: &SourceIn<'_>, topic: &str) -> Result<Namespace, DecodeError> {
    if let (Some(db), Some(coll)) = (source.db.as_deref(), source.collection.as_deref()) {
        return Ok(Namespace::new(db, coll));
    }
    let mut parts = topic.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_prefix), Some(db), Some(coll)) if !db.is_empty() && !coll.is_empty() => {
            Ok(Namespace::new(db, coll))
        }
        _ => Err(DecodeError::MissingNamespace(topic.to_string())),
    }
}

fn decode_source(source: SourceIn<'_>) -> SourceInfo {
    let snapshot = match &source.snapshot {
        Some(Value::String(s)) if s == "true" => SnapshotMarker::Yes,
        Some(Value::String(s)) if s == "last" => SnapshotMarker::Last,
        Some(Value::Bool(true)) => SnapshotMarker::Yes,
        _ => SnapshotMarker::No,
    };
    SourceInfo {
        name: source.name.map(Cow::into_owned).unwrap_or_default(),
        rs: source.rs.map(Cow::into_owned).unwrap_or_default(),
        ts_ms: source.ts_ms.unwrap_or(0),
        ord: source.ord.unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
        snapshot,
        lsid: match source.lsid {
            Some(Value::String(s)) => Some(s),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        },
        txn_number: source.txn_number,
    }
}

/// Parses an Extended JSON document (canonical, relaxed or legacy), keeping field order.
pub fn parse_extjson_document(text: &str, field: &'static str) -> Result<Document, DecodeError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| DecodeError::ExtJson { field, message: e.to_string() })?;
    match value {
        Value::Object(o) => extjson_object_to_document(o, field),
        _ => Err(DecodeError::ExtJson { field, message: "not a JSON object".into() }),
    }
}

fn extjson_object_to_document(o: Map<String, Value>, field: &'static str) -> Result<Document, DecodeError> {
    let mut value = Value::Object(o);
    normalize_legacy_extjson(&mut value);
    match Bson::try_from(value) {
        Ok(Bson::Document(d)) => Ok(d),
        Ok(_) => Err(DecodeError::ExtJson { field, message: "a type wrapper, not a document".into() }),
        Err(e) => Err(DecodeError::ExtJson { field, message: e.to_string() }),
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId, spec::BinarySubtype, Binary, DateTime, Decimal128, Regex, Timestamp};

    fn source() -> SourceInfo {
        SourceInfo {
            name: "docrepl".into(),
            rs: "rs0".into(),
            ts_ms: 1_700_000_000_000,
            ord: 3,
            snapshot: SnapshotMarker::No,
            lsid: None,
            txn_number: None,
        }
    }

    fn event(op: Op, doc: Option<Document>) -> ChangeEvent {
        let id = doc.as_ref().and_then(|d| d.get("_id").cloned()).unwrap_or(Bson::Int32(7));
        ChangeEvent {
            op,
            ns: Namespace::new("app", "orders"),
            id,
            after: doc.map(|d| RawDocumentBuf::from_document(&d).unwrap()),
            update: None,
            source: source(),
        }
    }

    fn round_trip(ev: &ChangeEvent) -> ChangeEvent {
        let key = encode_key(&ev.id);
        let value = encode_value(ev, 1).unwrap();
        match decode(Some(&key), Some(&value), "docrepl.app.orders").unwrap() {
            Decoded::Event(e) => e,
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn keys_look_like_debeziums() {
        let oid = ObjectId::parse_str("65976a473f3a210c022ffc55").unwrap();
        assert_eq!(encode_key(&Bson::ObjectId(oid)), br#"{"id":"{\"$oid\":\"65976a473f3a210c022ffc55\"}"}"#);
        assert_eq!(encode_key(&Bson::Int32(1234)), br#"{"id":"1234"}"#);
        assert_eq!(encode_key(&Bson::Int64(-5_000_000_000)), br#"{"id":"-5000000000"}"#);
        // The direct forms are what bson's relaxed text gives.
        for id in [Bson::Int32(-7), Bson::Int64(1 << 40), Bson::ObjectId(oid)] {
            let via_bson = serde_json::to_vec(&KeyOut { id: id_relaxed_json(&id) }).unwrap();
            assert_eq!(encode_key(&id), via_bson);
        }
        assert_eq!(encode_key(&Bson::String("abc".into())), br#"{"id":"\"abc\""}"#);
    }

    #[test]
    fn numerically_equal_ids_share_a_key() {
        let one = encode_key(&Bson::Int32(1));
        for same in [Bson::Int64(1), Bson::Double(1.0), Bson::Decimal128("1".parse().unwrap()), Bson::Decimal128("1.00".parse().unwrap()), Bson::Decimal128("1E+0".parse().unwrap())] {
            assert_eq!(encode_key(&same), one, "{same:?}");
            assert_eq!(id_fold_key(&same), id_fold_key(&Bson::Int32(1)), "{same:?}");
        }
        assert_eq!(encode_key(&Bson::Double(-0.0)), encode_key(&Bson::Int32(0)));
        // Not whole, or too large to be exact: Debezium's text.
        assert_eq!(encode_key(&Bson::Double(1.5)), br#"{"id":"1.5"}"#);
        assert_ne!(encode_key(&Bson::Double(1e300)), encode_key(&Bson::Int64(i64::MAX)));
    }

    #[test]
    fn values_have_debeziums_layout() {
        let mut ev = event(Op::Update, Some(doc! {"_id": 1, "s": "a\"b"}));
        ev.update = Some(UpdateDescription { updated_fields: doc! {"s": "a\"b"}, removed_fields: vec!["x".into()], truncated_arrays: vec![] });
        let value = String::from_utf8(encode_value(&ev, 5).unwrap()).unwrap();
        let expected = serde_json::json!({
            "before": null,
            "after": r#"{"_id":{"$numberInt":"1"},"s":"a\"b"}"#,
            "updateDescription": {"removedFields": ["x"], "updatedFields": r#"{"s":"a\"b"}"#, "truncatedArrays": []},
            "source": {
                "version": VERSION, "connector": "mongodb", "name": "docrepl", "ts_ms": 1_700_000_000_000i64,
                "snapshot": "false", "db": "app", "sequence": null, "collection": "orders", "ord": 3,
                "lsid": null, "txnNumber": null, "rs": "rs0",
            },
            "op": "u",
            "ts_ms": 5,
            "transaction": null,
        });
        assert_eq!(value, expected.to_string());
        let delete = encode_value(&event(Op::Delete, Some(doc! {"_id": 1})), 5).unwrap();
        assert!(String::from_utf8(delete).unwrap().starts_with(r#"{"before":null,"after":null,"updateDescription":null,"source":{"#));
    }

    #[test]
    fn every_bson_type_survives_byte_for_byte() {
        let doc = doc! {
            "_id": ObjectId::new(),
            "big": 9_007_199_254_740_993i64,
            "i32": -5i32,
            "dbl": 0.1f64,
            "negzero": -0.0f64,
            "nan": f64::NAN,
            "dec": "1234.5678901234567890".parse::<Decimal128>().unwrap(),
            "old": DateTime::from_millis(-86_400_000_123),
            "far": DateTime::from_millis(253_402_300_800_001),
            "bin": Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 1, 2, 255] },
            "uuid": Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] },
            "user": Binary { subtype: BinarySubtype::UserDefined(0x80), bytes: vec![9] },
            "re": Regex { pattern: "^a.*b$".into(), options: "imsx".into() },
            "ts": Timestamp { time: 1_700_000_000, increment: 42 },
            "min": Bson::MinKey,
            "max": Bson::MaxKey,
            "null": Bson::Null,
            "nested": { "arr": [[1, 2], [], [{"x": "y"}]], "ключ": "значение", "🔑": true },
            "code": Bson::JavaScriptCode("function(){}".into()),
            "sym": Bson::Symbol("s".into()),
            "undef": Bson::Undefined,
        };
        let ev = event(Op::Create, Some(doc));
        let back = round_trip(&ev);
        assert_eq!(back.after.as_ref().unwrap().as_bytes(), ev.after.as_ref().unwrap().as_bytes());
        assert_eq!(back.op, Op::Create);
        assert_eq!(back.ns, ev.ns);
    }

    #[test]
    fn delete_takes_id_from_key() {
        let mut ev = event(Op::Delete, None);
        ev.id = Bson::String("abc".into());
        let back = round_trip(&ev);
        assert_eq!(back.op, Op::Delete);
        assert_eq!(back.id, Bson::String("abc".into()));
        assert!(back.after.is_none());
    }

    #[test]
    fn update_description_round_trips() {
        let mut ev = event(Op::Update, None);
        ev.update = Some(UpdateDescription {
            updated_fields: doc! {"a.2": 5i64, "b": {"c": 1}},
            removed_fields: vec!["x".into()],
            truncated_arrays: vec![TruncatedArray { field: "a".into(), size: 3 }],
        });
        let back = round_trip(&ev);
        assert_eq!(back.update, ev.update);
        assert_eq!(back.id, Bson::Int32(7));
    }

    #[test]
    fn tombstones_and_bad_input() {
        assert_eq!(decode(Some(b"{}"), None, "t"), Ok(Decoded::Tombstone));
        assert!(matches!(decode(None, Some(b"{nope"), "t"), Err(DecodeError::InvalidJson(_))));
        assert!(matches!(decode(None, Some(&[0xff, 0xfe]), "t"), Err(DecodeError::InvalidJson(_))));
        assert_eq!(decode(None, Some(b"[1]"), "t"), Err(DecodeError::NotAnObject));
        assert_eq!(decode(None, Some(br#"{"op":"x"}"#), "t"), Err(DecodeError::UnknownOp("x".into())));
        assert_eq!(decode(None, Some(br#"{"op":"c","after":null}"#), "t"), Err(DecodeError::MissingField("after")));
        assert_eq!(decode(Some(br#"{"id":"1"}"#), Some(br#"{"op":"u"}"#), "p.d.c"), Err(DecodeError::EmptyUpdate));
    }

    /// A `u` event as Debezium 2.x writes it in `change_streams` mode (no `after`), wrapped
    /// by the JSON converter with schemas, with a legacy-form key.
    #[test]
    fn debezium_wrapped_update_without_after() {
        let key = br#"{"schema":{"type":"struct"},"payload":{"id":"{\"$oid\": \"65976a473f3a210c022ffc55\"}"}}"#;
        let value = br#"{"schema":{"type":"struct"},"payload":{"before":null,"after":null,
            "updateDescription":{"removedFields":["gone"],"updatedFields":"{\"n\": {\"$numberLong\": \"5\"}, \"when\": {\"$date\": 1700000000000}, \"bin\": {\"$binary\": \"AAE=\", \"$type\": \"00\"}}","truncatedArrays":null},
            "source":{"version":"2.5.0.Final","connector":"mongodb","name":"dbserver1","ts_ms":1700000000000,"snapshot":"false","db":"inventory","sequence":null,"rs":"rs0","collection":"customers","ord":1,"lsid":null,"txnNumber":null},
            "op":"u","ts_ms":1700000000123,"transaction":null}}"#;
        let Decoded::Event(ev) = decode(Some(key), Some(value), "dbserver1.inventory.customers").unwrap() else {
            panic!("tombstone")
        };
        assert_eq!(ev.ns, Namespace::new("inventory", "customers"));
        assert_eq!(ev.id, Bson::ObjectId(ObjectId::parse_str("65976a473f3a210c022ffc55").unwrap()));
        let u = ev.update.unwrap();
        assert_eq!(u.removed_fields, vec!["gone".to_string()]);
        assert_eq!(u.updated_fields.get_i64("n").unwrap(), 5);
        assert_eq!(u.updated_fields.get_datetime("when").unwrap().timestamp_millis(), 1_700_000_000_000);
        assert_eq!(u.updated_fields.get_binary_generic("bin").unwrap(), &vec![0u8, 1]);
    }

    #[test]
    fn relaxed_after_and_topic_namespace() {
        let value = br#"{"after":"{\"_id\": 5, \"price\": 1.5, \"at\": {\"$date\": \"2024-01-02T03:04:05.006Z\"}}","op":"r"}"#;
        let Decoded::Event(ev) = decode(None, Some(value), "pfx.shop.items").unwrap() else { panic!() };
        assert_eq!(ev.ns, Namespace::new("shop", "items"));
        assert_eq!(ev.id, Bson::Int32(5));
        let doc = ev.after.unwrap().to_document().unwrap();
        assert_eq!(doc.get_f64("price").unwrap(), 1.5);
    }

    #[test]
    fn fold_keys_treat_numbers_by_value() {
        assert_eq!(id_fold_key(&Bson::Int32(5)), id_fold_key(&Bson::Int64(5)));
        assert_eq!(id_fold_key(&Bson::Double(5.0)), id_fold_key(&Bson::Int64(5)));
        assert_ne!(id_fold_key(&Bson::String("5".into())), id_fold_key(&Bson::Int32(5)));
    }

    #[test]
    fn clear_markers_round_trip_and_foreign_truncates_are_refused() {
        let marker = ClearMarker { ns: Namespace::new("app", "orders"), partition: 3, partitions: 8, reason: "dropped".into() };
        let source = SourceInfo {
            name: "docrepl".into(),
            rs: "rs0".into(),
            ts_ms: 1_700_000_000_000,
            ord: 1,
            snapshot: SnapshotMarker::Yes,
            lsid: None,
            txn_number: None,
        };
        let (key, value) = encode_clear_marker(&marker, &source, 1);
        assert_eq!(decode(Some(&key), Some(&value), "docrepl.app.orders").unwrap(), Decoded::Clear(marker));

        let foreign = br#"{"op":"t","source":{"db":"app","collection":"orders"}}"#;
        assert!(matches!(decode(None, Some(foreign), "docrepl.app.orders"), Err(DecodeError::ForeignTruncate)));
        let out_of_range = br#"{"op":"t","source":{"db":"app","collection":"orders"},"docrepl":{"clear":{"partition":8,"partitions":8}}}"#;
        assert!(decode(None, Some(out_of_range), "docrepl.app.orders").is_err());
    }

    proptest::proptest! {
        /// Whatever arrives on the topic, decoding returns (a value or an error), never panics.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            key in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..64)),
            value in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..512)),
        ) {
            let _ = decode(key.as_deref(), value.as_deref(), "docrepl.app.orders");
        }

        /// Envelopes that are almost right: every prefix of a valid one, and valid ones with
        /// one byte changed, decode or fail cleanly.
        #[test]
        fn damaged_envelopes_never_panic(cut in 0usize..400, at in 0usize..400, byte in proptest::num::u8::ANY) {
            let ev = event(Op::Update, Some(doc! {"_id": 1, "a": [1, {"b": "x"}], "d": 1.5}));
            let key = encode_key(&ev.id);
            let value = encode_value(&ev, 1).unwrap();
            let _ = decode(Some(&key), Some(&value[..cut.min(value.len())]), "docrepl.app.orders");
            let mut changed = value.clone();
            let i = at % changed.len();
            changed[i] = byte;
            let _ = decode(Some(&key), Some(&changed), "docrepl.app.orders");
        }

        /// NUL bytes anywhere in field names, regexes or patch paths are refused, never a
        /// panic (BSON's C strings cannot hold them), and so are absurd array indexes.
        #[test]
        fn nul_bytes_and_huge_indexes_are_refused(pre in "[a-z]{0,3}", post in "[a-z]{0,3}", index in 1_500_001u64..u64::MAX) {
            // `escaped` goes into Extended JSON text (where JSON escapes it), `nul` is the
            // field name itself.
            let escaped = format!("{pre}\\u0000{post}");
            let nul = format!("{pre}\0{post}");
            let source = serde_json::json!({"db": "d", "collection": "c"});
            let values = [
                serde_json::json!({"op": "c", "after": format!(r#"{{"_id": 1, "{escaped}": 1}}"#), "source": source}),
                serde_json::json!({"op": "c", "after": format!(r#"{{"_id": 1, "x": {{"{escaped}": 1}}}}"#), "source": source}),
                serde_json::json!({"op": "c", "after": format!(r#"{{"_id": 1, "r": {{"$regularExpression": {{"pattern": "{escaped}", "options": ""}}}}}}"#), "source": source}),
                serde_json::json!({"op": "u", "updateDescription": {"updatedFields": format!(r#"{{"{escaped}": 1}}"#), "removedFields": []}, "source": source}),
                serde_json::json!({"op": "u", "updateDescription": {"updatedFields": "{}", "removedFields": [nul]}, "source": source}),
                serde_json::json!({"op": "u", "updateDescription": {"updatedFields": format!(r#"{{"a.{index}": 1}}"#), "removedFields": []}, "source": source}),
            ];
            for v in values {
                let text = serde_json::to_vec(&v).unwrap();
                let decoded = decode(Some(br#"{"id":"1"}"#), Some(&text), "docrepl.d.c");
                let message = decoded.err().map(|e| e.to_string()).unwrap_or_default();
                proptest::prop_assert!(message.contains("NUL") || message.contains("past MongoDB's limit"), "{v}: {message}");
            }
        }
    }
}
