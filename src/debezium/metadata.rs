//! docrepl's metadata message: a collection's options and index list (see
//! `crate::metadata`), as state, on every partition of the collection's topic. Written as
//! a Debezium "message" event (`op: "m"`, the code Debezium gives to messages that change
//! no row, which its consumers pass over) with a `docrepl.metadata` block. Pure.
//!
//! Every partition gets it so that each sink worker creates the target collection with
//! the source's options before it writes the first document of its share (a collation or
//! `capped` cannot be added later); only the worker of the `home` partition builds and
//! drops indexes and changes options, so one worker per collection does that work.

use serde_json::Value;

use super::{DecodeError, CONNECTOR, VERSION};
use crate::event::SourceInfo;
use crate::metadata::CollectionMetadata;

/// The `message.prefix` of a metadata message (Debezium's "message" events carry one).
pub const PREFIX: &str = "docrepl.metadata";

/// One partition's copy of a collection's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataMessage {
    pub metadata: CollectionMetadata,
    pub partition: i32,
    pub partitions: i32,
    /// The partition whose worker applies indexes and options.
    pub home: i32,
}

/// Key and value of `message`. The key names the namespace and the partition, so a
/// compacted topic keeps the newest metadata of each collection on each partition.
pub fn encode(message: &MetadataMessage, source: &SourceInfo, now_ms: i64) -> (Vec<u8>, Vec<u8>) {
    let ns = &message.metadata.ns;
    let key = serde_json::json!({"docrepl_metadata": ns.to_string(), "partition": message.partition}).to_string().into_bytes();
    let state = bson::RawDocumentBuf::from_document(&message.metadata.to_document())
        .ok()
        .and_then(|raw| crate::extjson::canonical_document(&raw).ok())
        .unwrap_or_else(|| "{}".into());
    let value = serde_json::json!({
        "before": null,
        "after": null,
        "source": {
            "version": VERSION, "connector": CONNECTOR, "name": source.name, "ts_ms": source.ts_ms,
            "snapshot": "false", "db": ns.db, "collection": ns.coll, "rs": source.rs,
        },
        "op": "m",
        "ts_ms": now_ms,
        "message": {"prefix": PREFIX},
        "docrepl": {"metadata": {"partition": message.partition, "partitions": message.partitions, "home": message.home, "state": state}},
    });
    (key, value.to_string().into_bytes())
}

/// Reads the `docrepl` block of an `op: "m"` value.
pub(super) fn decode(docrepl: Option<&Value>) -> Result<MetadataMessage, DecodeError> {
    let block = docrepl.and_then(|d| d.get("metadata")).ok_or(DecodeError::ForeignMessage)?;
    let int = |field: &'static str| {
        block.get(field).and_then(Value::as_i64).and_then(|n| i32::try_from(n).ok()).ok_or(DecodeError::MissingField(field))
    };
    let (partition, partitions, home) = (int("partition")?, int("partitions")?, int("home")?);
    if partitions <= 0 || !(0..partitions).contains(&partition) || !(0..partitions).contains(&home) {
        return Err(DecodeError::MissingField("docrepl.metadata.partition"));
    }
    let state = block.get("state").and_then(Value::as_str).ok_or(DecodeError::MissingField("docrepl.metadata.state"))?;
    let raw = crate::extjson::parse_document(state).map_err(|e| DecodeError::ExtJson { field: "docrepl.metadata.state", message: e.to_string() })?;
    let doc = raw.to_document().map_err(|e| DecodeError::ExtJson { field: "docrepl.metadata.state", message: e.to_string() })?;
    let metadata = CollectionMetadata::from_document(&doc).map_err(|e| DecodeError::ExtJson { field: "docrepl.metadata.state", message: e.to_string() })?;
    Ok(MetadataMessage { metadata, partition, partitions, home })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debezium::Decoded;
    use crate::event::{Namespace, SnapshotMarker};
    use crate::metadata::Kind;
    use bson::doc;

    fn source() -> SourceInfo {
        SourceInfo { name: "app".into(), rs: "rs0".into(), ts_ms: 1000, ord: 1, snapshot: SnapshotMarker::No, lsid: None, txn_number: None }
    }

    #[test]
    fn round_trips_with_exact_types() {
        let metadata = CollectionMetadata {
            ns: Namespace::new("shop", "orders"),
            kind: Kind::Collection,
            options: doc! {"validator": {"at": {"$gt": bson::DateTime::from_millis(5)}}, "size": 4096i64},
            indexes: Some(vec![doc! {"key": {"_id": 1}, "name": "_id_"}, doc! {"key": {"a": 1.5}, "name": "a"}]),
        };
        let message = MetadataMessage { metadata, partition: 2, partitions: 4, home: 1 };
        let (key, value) = encode(&message, &source(), 7);
        assert_eq!(String::from_utf8(key).unwrap(), r#"{"docrepl_metadata":"shop.orders","partition":2}"#);
        match crate::debezium::decode(None, Some(&value), "app.shop.orders").unwrap() {
            Decoded::Metadata(back) => assert_eq!(back, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_message_event_of_another_producer_is_refused_with_a_reason() {
        let value = br#"{"op":"m","message":{"prefix":"x","content":"AA=="},"source":{"db":"a","collection":"b"}}"#;
        assert_eq!(crate::debezium::decode(None, Some(value), "p.a.b"), Err(DecodeError::ForeignMessage));
        let bad = br#"{"op":"m","docrepl":{"metadata":{"partition":5,"partitions":4,"home":0,"state":"{}"}}}"#;
        assert!(crate::debezium::decode(None, Some(bad), "p.a.b").is_err());
    }
}
