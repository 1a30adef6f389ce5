//! The source service against a real mongod replica set and a real broker: envelopes and
//! partitioning, the initial copy + stream handoff, kill -9 + restart, lost history, DDL.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bson::{doc, Bson, Document};
use rdkafka::message::{Message, OwnedMessage};
use serde_json::Value;

use common::{consume, distinct_keys_at_least, key_id, Setup};

/// Java's murmur2 (what Kafka's default partitioner and Debezium use).
fn murmur2(data: &[u8]) -> i32 {
    let seed: u32 = 0x9747b28c;
    let m: u32 = 0x5bd1e995;
    let r = 24;
    let len = data.len();
    let mut h: u32 = seed ^ (len as u32);
    let chunks = len / 4;
    for i in 0..chunks {
        let mut k = u32::from_le_bytes([data[4 * i], data[4 * i + 1], data[4 * i + 2], data[4 * i + 3]]);
        k = k.wrapping_mul(m);
        k ^= k >> r;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    let tail = &data[chunks * 4..];
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(m);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(m);
    h ^= h >> 15;
    h as i32
}

fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fffffff) % partitions
}

fn json(m: &OwnedMessage) -> Option<Value> {
    m.payload().map(|p| serde_json::from_slice(p).expect("value is JSON"))
}

#[tokio::test]
async fn change_events_become_debezium_envelopes_in_the_key_partition() {
    let setup = Setup::new("env");
    let client = common::mongo(&common::source_uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("orders");
    coll.insert_one(doc! {"_id": 0, "seed": true}).await.unwrap();
    let mut source = setup.spawn("source", &[]);

    // The initial copy produced `r` for _id 0; wait until the stream is open (an update
    // read after the delete that follows it would find no document to look up).
    let topic = setup.topic("orders");
    consume(&topic, Duration::from_secs(60), |m| !m.is_empty()).await;
    common::eventually(Duration::from_secs(60), "the change stream open", || async { source.log_text().contains("streaming changes") }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let oid = bson::oid::ObjectId::new();
    coll.insert_one(doc! {"_id": oid, "n": 1i64, "arr": [1, 2, 3, 4]}).await.unwrap();
    coll.update_one(doc! {"_id": oid}, doc! {"$set": {"n": 2i64, "new": "x"}}).await.unwrap();
    coll.update_one(doc! {"_id": oid}, vec![doc! {"$set": {"arr": {"$slice": ["$arr", 2]}}}]).await.unwrap();
    coll.replace_one(doc! {"_id": oid}, doc! {"_id": oid, "replaced": true}).await.unwrap();
    coll.delete_one(doc! {"_id": oid}).await.unwrap();
    for i in 1..=50 {
        coll.insert_one(doc! {"_id": format!("s{i}")}).await.unwrap();
    }

    let msgs = consume(&topic, Duration::from_secs(60), |m| m.len() >= 1 + 6 + 50).await;
    assert!(source.wait_exit(Duration::from_millis(10)).is_none(), "source exited early:\n{}", source.log_text());

    assert!(msgs.len() >= 57, "only {} messages:\n{}", msgs.len(), source.log_text());
    let seed = msgs.iter().find(|m| key_id(m) == "0").expect("the copied document");
    let first = json(seed).unwrap();
    assert_eq!(first["op"], "r");
    assert_eq!(first["source"]["snapshot"], "true");

    let oid_key = format!("{{\"$oid\":\"{}\"}}", oid.to_hex());
    let mine: Vec<&OwnedMessage> = msgs.iter().filter(|m| key_id(m) == oid_key).collect();
    let ops: Vec<String> = mine.iter().map(|m| json(m).map(|v| v["op"].as_str().unwrap().to_string()).unwrap_or("tombstone".into())).collect();
    assert_eq!(ops, ["c", "u", "u", "u", "d", "tombstone"]);
    let partitions: HashSet<i32> = mine.iter().map(|m| m.partition()).collect();
    assert_eq!(partitions.len(), 1, "one document's events in one partition");
    let key = mine[0].key().unwrap();
    assert_eq!(mine[0].partition(), java_partition(key, 8), "partitioned like Java clients (murmur2)");
    assert_eq!(std::str::from_utf8(key).unwrap(), format!("{{\"id\":{}}}", serde_json::to_string(&oid_key).unwrap()));

    let create = json(mine[0]).unwrap();
    let after: Value = serde_json::from_str(create["after"].as_str().unwrap()).unwrap();
    assert_eq!(after["n"], serde_json::json!({"$numberLong": "1"}), "canonical Extended JSON");
    assert_eq!(create["source"]["connector"], "mongodb");
    assert_eq!(create["source"]["db"], setup.db.as_str());
    assert_eq!(create["source"]["collection"], "orders");
    assert_eq!(create["source"]["rs"], "rs-source");
    assert!(create["source"]["ts_ms"].as_i64().unwrap() > 0);

    let update = json(mine[1]).unwrap();
    let desc = &update["updateDescription"];
    let updated: Value = serde_json::from_str(desc["updatedFields"].as_str().unwrap()).unwrap();
    assert_eq!(updated["n"], serde_json::json!({"$numberLong": "2"}));
    assert_eq!(updated["new"], "x");
    assert!(update["after"].is_string(), "update carries the looked-up full document");

    let truncate = json(mine[2]).unwrap();
    assert_eq!(truncate["updateDescription"]["truncatedArrays"], serde_json::json!([{"field": "arr", "size": 2}]));

    let replace = json(mine[3]).unwrap();
    let after: Value = serde_json::from_str(replace["after"].as_str().unwrap()).unwrap();
    assert_eq!(after["replaced"], true);

    let delete = json(mine[4]).unwrap();
    assert!(delete["after"].is_null());
    assert!(mine[5].payload().is_none(), "tombstone after the delete");

    // String keys are quoted, as Debezium writes them.
    assert!(msgs.iter().any(|m| key_id(m) == "\"s1\""));
    assert_eq!(source.terminate(Duration::from_secs(15)), Some(0), "SIGTERM exits 0:\n{}", source.log_text());
}

/// The initial copy and the stream that follows it miss nothing while writes go on.
#[tokio::test]
async fn initial_copy_hands_over_to_the_stream_without_a_gap() {
    let setup = Setup::new("copy");
    let client = common::mongo(&common::source_uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("items");
    let docs: Vec<Document> = (0..20_000).map(|i| doc! {"_id": i, "v": "x".repeat(50)}).collect();
    coll.insert_many(docs).await.unwrap();

    let writer = {
        let coll = coll.clone();
        tokio::spawn(async move {
            for i in 20_000..25_000 {
                coll.insert_one(doc! {"_id": i}).await.unwrap();
                if i % 1000 == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _source = setup.spawn("source", &[]);
    writer.await.unwrap();

    let msgs = consume(&setup.topic("items"), Duration::from_secs(120), distinct_keys_at_least(25_000)).await;
    let ids: HashSet<String> = msgs.iter().map(key_id).collect();
    let missing: Vec<i32> = (0..25_000).filter(|i| !ids.contains(&i.to_string())).take(10).collect();
    assert!(missing.is_empty(), "missing _ids (first 10): {missing:?}");
}

/// A source streaming `events` while `_id`s 0..6000 are being inserted (with -1 copied
/// first), 1.2 s into that load: the moment the restart tests stop it.
async fn source_under_load(name: &str) -> (Setup, common::Proc, tokio::task::JoinHandle<()>) {
    let setup = Setup::new(name);
    let client = common::mongo(&common::source_uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("events");
    coll.insert_one(doc! {"_id": -1}).await.unwrap();
    let source = setup.spawn("source", &[]);
    consume(&setup.topic("events"), Duration::from_secs(60), |m| !m.is_empty()).await;
    let writer = common::spawn_inserts(&coll, 30, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    (setup, source, writer)
}

/// kill -9 at any moment and a restart lose no event (duplicates are allowed).
#[tokio::test]
async fn kill_9_and_restart_loses_nothing() {
    let (setup, mut source, writer) = source_under_load("kill").await;
    source.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The lease of the killed instance must expire before the new one reads.
    let _source = setup.spawn("source", &[]);
    writer.await.unwrap();

    let msgs = consume(&setup.topic("events"), Duration::from_secs(120), distinct_keys_at_least(6001)).await;
    let ids: HashSet<String> = msgs.iter().map(key_id).collect();
    let missing: Vec<i32> = (-1..6000).filter(|i| !ids.contains(&i.to_string())).take(10).collect();
    assert!(missing.is_empty(), "events lost across kill -9 (first 10 missing _ids): {missing:?}");
}

/// SIGTERM during load: exit 0 within 10 s after saving the acknowledged position, and a
/// restart goes on from there: no event lost, none published twice.
#[tokio::test]
async fn sigterm_during_load_exits_0_and_the_restart_neither_loses_nor_repeats() {
    let (setup, mut source, writer) = source_under_load("term").await;
    let stopping = std::time::Instant::now();
    assert_eq!(source.terminate(Duration::from_secs(10)), Some(0), "SIGTERM under load:\n{}", source.log_text());
    assert!(stopping.elapsed() < Duration::from_secs(10));
    let _source = setup.spawn("source", &[]);
    writer.await.unwrap();

    let msgs = consume(&setup.topic("events"), Duration::from_secs(120), distinct_keys_at_least(6001)).await;
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for m in &msgs {
        *seen.entry(key_id(m)).or_default() += 1;
    }
    let missing: Vec<i32> = (-1..6000).filter(|i| !seen.contains_key(&i.to_string())).take(10).collect();
    assert!(missing.is_empty(), "events lost across SIGTERM (first 10 missing _ids): {missing:?}");
    let repeated: Vec<&String> = seen.iter().filter(|(_, n)| **n > 1).map(|(k, _)| k).take(10).collect();
    assert!(repeated.is_empty(), "events published twice across a graceful restart (first 10): {repeated:?}");
}

/// drop and rename are reported, never crash the reader; a re-created collection is read
/// again: on the database's stream (the default) and on a collection's own stream.
#[tokio::test]
async fn drop_and_rename_do_not_crash_the_reader() {
    drop_and_rename("ddl", "database").await;
}

#[tokio::test]
async fn drop_and_rename_do_not_crash_a_collection_stream() {
    drop_and_rename("ddlc", "collection").await;
}

async fn drop_and_rename(name: &str, level: &str) {
    let mut setup = Setup::new(name);
    setup.source_extra = format!("collections = [\"c\"]\nstream_level = \"{level}\"");
    let client = common::mongo(&common::source_uri()).await;
    let db = client.database(&setup.db);
    db.collection::<Document>("c").insert_one(doc! {"_id": 1}).await.unwrap();
    let mut source = setup.spawn("source", &[]);
    let topic = setup.topic("c");
    consume(&topic, Duration::from_secs(60), |m| !m.is_empty()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    db.collection::<Document>("c").drop().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    db.collection::<Document>("c").insert_one(doc! {"_id": 2}).await.unwrap();
    client
        .database("admin")
        .run_command(doc! {"renameCollection": format!("{}.c", setup.db), "to": format!("{}.c2", setup.db)})
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    db.collection::<Document>("c").insert_one(doc! {"_id": 3}).await.unwrap();

    let msgs = consume(&topic, Duration::from_secs(60), |m| {
        let ids: HashSet<String> = m.iter().map(key_id).collect();
        ids.contains("2") && ids.contains("3")
    })
    .await;
    let ids: HashSet<String> = msgs.iter().map(key_id).collect();
    assert!(ids.contains("2") && ids.contains("3"), "events after drop/rename: {ids:?}\n{}", source.log_text());
    assert!(source.wait_exit(Duration::from_millis(10)).is_none(), "reader crashed:\n{}", source.log_text());
    let log = source.log_text();
    assert!(log.contains("DDL event"), "{log}");
    // Only a collection's stream ends at its collection's drop; a database's goes on.
    assert_eq!(log.contains("invalidated"), level == "collection", "{log}");
}

/// Keys decoded back by the sink's decoder match the documents' _ids.
#[tokio::test]
async fn every_bson_type_round_trips_through_the_topic() {
    let setup = Setup::new("types");
    let client = common::mongo(&common::source_uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("t");
    let original = doc! {
        "_id": bson::oid::ObjectId::new(),
        "i64": i64::MAX,
        "dec": "-1.2345678901234567890123456789E+100".parse::<bson::Decimal128>().unwrap(),
        "old": bson::DateTime::from_millis(-2_208_988_800_000),
        "bin": bson::Binary { subtype: bson::spec::BinarySubtype::UserDefined(0x85), bytes: vec![1, 2, 3] },
        "re": bson::Regex { pattern: "a+".into(), options: "im".into() },
        "ts": bson::Timestamp { time: 5, increment: 6 },
        "min": Bson::MinKey, "max": Bson::MaxKey,
        "nested": {"ключ": [[1.5f64, -0.0f64], {"x": Bson::Null}]},
    };
    coll.insert_one(original.clone()).await.unwrap();
    let _source = setup.spawn("source", &[]);
    let msgs = consume(&setup.topic("t"), Duration::from_secs(60), |m| !m.is_empty()).await;
    let m = &msgs[0];
    let decoded = docrepl::debezium::decode(m.key(), m.payload(), m.topic()).unwrap();
    let docrepl::debezium::Decoded::Event(ev) = decoded else { panic!("tombstone") };
    let stored = client
        .database(&setup.db)
        .collection::<bson::RawDocumentBuf>("t")
        .find_one(doc! {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.after.unwrap().as_bytes(), stored.as_bytes(), "byte-for-byte equal BSON");
}

/// An initial copy interrupted by kill -9 goes on from the last `_id` Kafka acknowledged
/// instead of starting over: the first document is published once, every one at least once.
#[tokio::test]
async fn an_interrupted_copy_resumes_after_the_last_acknowledged_id() {
    let mut setup = Setup::new("resume");
    setup.source_extra = "collections = [\"c\"]\ncopy_batch_size = 500".into();
    let client = common::mongo(&common::source_uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    for chunk in 0..6 {
        coll.insert_many((0..10_000).map(|i| doc! {"_id": chunk * 10_000 + i, "pad": "some payload to copy"})).await.unwrap();
    }
    let checkpoints = client.database("docrepl").collection::<Document>("checkpoints");
    let key = format!("{}/{}.c", setup.prefix, setup.db);
    let mut source = setup.spawn("source", &[]);
    common::eventually(Duration::from_secs(60), "a saved copy position", || async {
        let cp = checkpoints.find_one(doc! {"_id": &key}).await.ok().flatten();
        cp.is_some_and(|d| d.get_i32("copy_after").is_ok_and(|after| after > 0))
    })
    .await;
    source.kill9();
    let cp = checkpoints.find_one(doc! {"_id": &key}).await.unwrap().unwrap();
    let after = cp.get_i32("copy_after").unwrap();
    assert!(after < 59_999, "the copy finished before the kill (after {after}); the test needs it mid-way");

    let _source = setup.spawn("source", &[]);
    let msgs = consume(&setup.topic("c"), Duration::from_secs(180), distinct_keys_at_least(60_000)).await;
    let ids: HashSet<String> = msgs.iter().map(key_id).collect();
    assert_eq!(ids.len(), 60_000, "every document copied");
    let first = msgs.iter().filter(|m| key_id(m) == "0").count();
    assert_eq!(first, 1, "the copy started over instead of resuming after _id {after}");
}

/// `1`, `NumberLong(1)`, `1.0` and `NumberDecimal("1")` are one `_id` to MongoDB: a delete
/// of one and an insert of another must be applied in order, so all their events share a
/// key and a partition, and the target ends with the document the source has.
#[tokio::test]
async fn numerically_equal_ids_share_a_partition_and_stay_in_order() {
    let setup = Setup::new("numid");
    let client = common::mongo(&common::source_uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    coll.insert_one(doc! {"_id": "seed"}).await.unwrap();
    let run = setup.spawn("run", &[]);
    let topic = setup.topic("c");
    consume(&topic, Duration::from_secs(60), |m| !m.is_empty()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let ids = [
        bson::Bson::Int32(1),
        bson::Bson::Double(1.0),
        bson::Bson::Int64(1),
        bson::Bson::Decimal128("1.0".parse().unwrap()),
        bson::Bson::Double(1.0),
    ];
    for (i, id) in ids.iter().enumerate() {
        coll.insert_one(doc! {"_id": id.clone(), "version": i as i32}).await.unwrap();
        if i + 1 < ids.len() {
            coll.delete_one(doc! {"_id": id.clone()}).await.unwrap();
        }
    }
    // insert, delete (+ tombstone) for each but the last, which stays.
    let wanted = 1 + ids.len() + 2 * (ids.len() - 1);
    let msgs = consume(&topic, Duration::from_secs(60), |m| m.len() >= wanted).await;
    let mine: Vec<&OwnedMessage> = msgs.iter().filter(|m| key_id(m) != "\"seed\"").collect();
    assert_eq!(mine.len(), wanted - 1, "{}", run.log_text());
    let partitions: HashSet<i32> = mine.iter().map(|m| m.partition()).collect();
    assert_eq!(partitions.len(), 1, "events of one _id in one partition: {partitions:?}");
    assert!(mine.iter().all(|m| key_id(m) == "1"), "one key for them: {:?}", mine.iter().map(|m| key_id(m)).collect::<Vec<_>>());
    let (code, out) = common::verify(&setup.config(), 60);
    assert_eq!(code, Some(0), "{out}");
    let target = common::mongo(&common::target_uri()).await.database(&setup.db).collection::<Document>("c");
    let last = target.find_one(doc! {"_id": 1}).await.unwrap().expect("the last version on the target");
    assert_eq!(last.get("_id"), Some(&bson::Bson::Double(1.0)));
    assert_eq!(last.get_i32("version").unwrap(), 4);
}

/// `source.capture_mode = "change_streams"` (Debezium's patch-only mode): update events
/// carry the patch and `after: null` (the source asks for no lookup), and the sink still
/// makes the target equal, for every kind of patch: set, unset, a new nested field, an
/// array truncated by a pipeline update, several updates of one document in one batch,
/// and a replace (which carries its document).
#[tokio::test]
async fn patch_only_updates_reach_an_equal_target() {
    let mut setup = Setup::new("patches");
    setup.source_extra = "collections = [\"c\"]\ncapture_mode = \"change_streams\"".into();
    let client = common::mongo(&common::source_uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    coll.insert_many((0..50).map(|i| doc! {"_id": i, "n": i, "arr": [1, 2, 3, 4], "gone": "soon"})).await.unwrap();
    let mut run = setup.spawn("run", &[]);
    common::eventually(Duration::from_secs(60), "the change stream open", || async { run.log_text().contains("streaming changes") }).await;
    for i in 0..50 {
        coll.update_one(doc! {"_id": i}, doc! {"$inc": {"n": 100}, "$set": {"sub.x": i}, "$unset": {"gone": ""}}).await.unwrap();
    }
    coll.update_one(doc! {"_id": 1}, vec![doc! {"$set": {"arr": {"$slice": ["$arr", 2]}}}]).await.unwrap();
    coll.update_one(doc! {"_id": 2}, doc! {"$push": {"arr": 5}}).await.unwrap();
    coll.update_one(doc! {"_id": 2}, doc! {"$set": {"arr.0": "first"}}).await.unwrap();
    coll.replace_one(doc! {"_id": 3}, doc! {"_id": 3, "replaced": true}).await.unwrap();
    coll.update_one(doc! {"_id": 3}, doc! {"$set": {"after_replace": 1}}).await.unwrap();

    let topic = setup.topic("c");
    let msgs = consume(&topic, Duration::from_secs(60), |m| m.iter().filter(|m| json(m).is_some_and(|v| v["op"] == "u")).count() >= 55).await;
    let updates: Vec<Value> = msgs.iter().filter_map(json).filter(|v| v["op"] == "u").collect();
    let patches: Vec<&Value> = updates.iter().filter(|v| !v["updateDescription"].is_null()).collect();
    assert_eq!(patches.len(), 54, "every update but the replace carries its patch");
    assert!(patches.iter().all(|v| v["after"].is_null()), "no looked-up document in a patch event");

    let (code, out) = common::verify(&setup.config(), 60);
    assert_eq!(code, Some(0), "{out}\n{}", run.log_text());
    let target = common::mongo(&common::target_uri()).await;
    let t = target.database(&setup.db).collection::<Document>("c");
    assert_eq!(t.find_one(doc! {"_id": 2}).await.unwrap(), Some(doc! {"_id": 2, "n": 102, "arr": ["first", 2, 3, 4, 5], "sub": {"x": 2}}));
    assert_eq!(run.terminate(Duration::from_secs(20)), Some(0));
}
