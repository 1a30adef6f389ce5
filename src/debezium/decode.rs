//! Decoding a message of the topic: docrepl's own envelopes and what a real Debezium
//! connector writes (relaxed or legacy Extended JSON, Connect's schema wrapper, `u`
//! events with only `updateDescription`), into a [`Decoded`]. Pure, no I/O.

use bson::{Bson, Document, RawDocumentBuf};
use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{ClearMarker, DecodeError, Decoded};
use crate::event::{ChangeEvent, Namespace, Op, SnapshotMarker, SourceInfo, TruncatedArray, UpdateDescription};
use crate::extjson::normalize_legacy_extjson;
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
    /// docrepl's own data: the clear marker, the exact BSON of ambiguous documents.
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
    if op_code == "m" {
        if envelope.docrepl.as_ref().is_some_and(|d| d.get("heartbeat").is_some()) {
            let source_ms = envelope.source.as_ref().and_then(|s| s.ts_ms).ok_or(DecodeError::MissingField("source.ts_ms"))?;
            return Ok(Decoded::Heartbeat { source_ms });
        }
        return super::metadata::decode(envelope.docrepl.as_ref()).map(Decoded::Metadata);
    }
    let op = Op::from_code(op_code).ok_or_else(|| DecodeError::UnknownOp(op_code.to_string()))?;

    // The exact BSON, where the Extended JSON text is ambiguous (see `exact`).
    let exact = |field: &'static str| -> Result<Option<RawDocumentBuf>, DecodeError> {
        match envelope.docrepl.as_ref().and_then(|d| d.get(field)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => super::exact::decode(text).map(Some).map_err(|message| DecodeError::ExtJson { field, message }),
            Some(_) => Err(DecodeError::MissingField(field)),
        }
    };
    let exact_after = exact("after_bson")?;
    let exact_updated = exact("updated_fields_bson")?;
    let after = match envelope.after.take() {
        None => None,
        Some(AfterIn::NotText) => return Err(DecodeError::MissingField("after")),
        // A delete's document is not needed (Debezium sends none).
        Some(_) if op == Op::Delete => None,
        Some(_) if exact_after.is_some() => exact_after,
        Some(AfterIn::Document(doc)) => Some(doc),
        Some(AfterIn::Invalid(message)) => return Err(DecodeError::ExtJson { field: "after", message }),
    };
    let update = match envelope.update_description.take() {
        None | Some(Value::Null) => None,
        Some(Value::Object(u)) => Some(decode_update_description(u, exact_updated)?),
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

/// `exact_updated`: the updated fields' exact BSON, read instead of their text when given.
fn decode_update_description(mut u: Map<String, Value>, exact_updated: Option<RawDocumentBuf>) -> Result<UpdateDescription, DecodeError> {
    let exact_updated = exact_updated
        .map(|raw| raw.to_document().map_err(|e| DecodeError::ExtJson { field: "updated_fields_bson", message: e.to_string() }))
        .transpose()?;
    let updated_fields = match u.remove("updatedFields") {
        _ if exact_updated.is_some() => exact_updated.unwrap_or_default(),
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


