//! docrepl's heartbeat: sent by an idle reader to every partition of each of its topics
//! (as Debezium's `heartbeat.interval.ms` sends one to its heartbeat topic), so that a
//! sink's recovery point and lag keep moving while nothing changes. Its `source.ts_ms` is
//! the source cluster time up to which the reader has published every change: a sink that
//! has applied a partition up to the heartbeat holds that partition's changes up to then.
//! A Debezium "message" event (`op: "m"`) with a `docrepl.heartbeat` block. Pure.

use super::{CONNECTOR, VERSION};
use crate::event::SourceInfo;

/// The `message.prefix` of a heartbeat.
pub const PREFIX: &str = "docrepl.heartbeat";

/// Key and value of the heartbeat for `partition`; `db` and `coll` name the topic's
/// namespace (`coll` empty on a topic per database).
pub fn encode(partition: i32, source: &SourceInfo, db: &str, coll: &str, now_ms: i64) -> (Vec<u8>, Vec<u8>) {
    let key = serde_json::json!({"docrepl_heartbeat": partition}).to_string().into_bytes();
    let value = serde_json::json!({
        "before": null,
        "after": null,
        "source": {
            "version": VERSION, "connector": CONNECTOR, "name": source.name, "ts_ms": source.ts_ms,
            "snapshot": "false", "db": db, "collection": coll, "rs": source.rs,
        },
        "op": "m",
        "ts_ms": now_ms,
        "message": {"prefix": PREFIX},
        "docrepl": {"heartbeat": {"partition": partition}},
    });
    (key, value.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debezium::Decoded;
    use crate::event::SnapshotMarker;

    #[test]
    fn round_trips_its_source_time() {
        let source = SourceInfo { name: "app".into(), rs: "rs0".into(), ts_ms: 1_700_000_000_000, ord: 0, snapshot: SnapshotMarker::No, lsid: None, txn_number: None };
        let (key, value) = encode(3, &source, "shop", "", 5);
        assert_eq!(String::from_utf8(key).unwrap(), r#"{"docrepl_heartbeat":3}"#);
        assert_eq!(crate::debezium::decode(None, Some(&value), "app.shop").unwrap(), Decoded::Heartbeat { source_ms: 1_700_000_000_000 });
    }
}
