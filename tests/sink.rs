//! The sink service against a real broker and a real target: convergence under many
//! updates of the same documents, two members sharing partitions and surviving kill -9,
//! kill -9 + restart, dead letters, and events written the way Debezium writes them.

mod common;

use std::time::Duration;

use bson::{doc, Document};
use rand::{Rng, SeedableRng};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};

use common::{consume, documents, Setup};

/// Random inserts, updates ($set, $unset, $inc, array truncation), replaces and deletes
/// over a few hundred hot documents.
async fn mixed_load(coll: &mongodb::Collection<Document>, seed: u64, ops: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..ops {
        let id = rng.random_range(0..300i32);
        let r: u8 = rng.random_range(0..100);
        let result = match r {
            0..=29 => coll
                .update_one(doc! {"_id": id}, doc! {"$set": {"n": i as i64, "s": format!("v{i}")}, "$push": {"arr": i as i32}})
                .upsert(true)
                .await
                .map(|_| ()),
            30..=44 => coll.update_one(doc! {"_id": id}, doc! {"$unset": {"s": ""}, "$inc": {"c": 1}}).await.map(|_| ()),
            45..=54 => coll
                .update_one(doc! {"_id": id}, vec![doc! {"$set": {"arr": {"$slice": [{"$ifNull": ["$arr", []]}, 1]}}}])
                .await
                .map(|_| ()),
            55..=74 => coll
                .replace_one(doc! {"_id": id}, doc! {"_id": id, "replaced": i as i64, "nested": {"a": [1, {"b": 2}]}})
                .upsert(true)
                .await
                .map(|_| ()),
            75..=89 => coll.delete_one(doc! {"_id": id}).await.map(|_| ()),
            _ => coll.insert_one(doc! {"_id": (seed as i32) * 100_000 + i as i32, "fresh": true}).await.map(|_| ()),
        };
        result.expect("load operation");
    }
}

async fn wait_equal(setup: &Setup, coll: &str, within: Duration) {
    let source = common::mongo(&common::source_uri()).await;
    let target = common::mongo(&common::target_uri()).await;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let a = documents(&source, &setup.db, coll).await;
        let b = documents(&target, &setup.db, coll).await;
        if a == b {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let differing = a.iter().zip(b.iter()).find(|(x, y)| x != y).map(|(x, y)| (x.0.clone(), y.0.clone()));
            panic!("target not equal to source after {within:?}: {} vs {} documents; first difference {differing:?}", a.len(), b.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn many_updates_of_the_same_documents_converge() {
    let setup = Setup::new("mix");
    let client = common::mongo(&common::source_uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    coll.insert_many((0..300).map(|i| doc! {"_id": i, "n": 0i64})).await.unwrap();
    let _source = setup.spawn("source", &[]);
    let _sink = setup.spawn("sink", &[]);
    mixed_load(&coll, 1, 4000).await;
    wait_equal(&setup, "c", Duration::from_secs(120)).await;
}

#[tokio::test]
async fn two_sinks_share_partitions_and_survive_a_kill_9() {
    let setup = Setup::new("two");
    let client = common::mongo(&common::source_uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    coll.insert_many((0..300).map(|i| doc! {"_id": i})).await.unwrap();
    let _source = setup.spawn("source", &[]);
    let mut a = setup.spawn("sink", &[]);
    let b = setup.spawn("sink", &[]);
    mixed_load(&coll, 2, 1500).await;
    wait_equal(&setup, "c", Duration::from_secs(120)).await;
    // The sink can catch up before the group's first rebalance with both members is done
    // (a member that subscribed before the source created the topic joins on its next
    // metadata refresh), so sharing is awaited, not sampled.
    let assigned = |p: &common::Proc| p.log_text().matches("partition assigned").count();
    let shared = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(assigned(&a) > 0 && assigned(&b) > 0) && tokio::time::Instant::now() < shared {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(assigned(&a) > 0 && assigned(&b) > 0, "both members got partitions:\nA:\n{}\nB:\n{}", a.log_text(), b.log_text());

    a.kill9();
    mixed_load(&coll, 3, 1500).await;
    // The survivor takes the dead member's partitions after its session times out.
    wait_equal(&setup, "c", Duration::from_secs(120)).await;
    drop(b);
}

#[tokio::test]
async fn kill_9_of_the_sink_mid_stream_and_restart_ends_equal() {
    let setup = Setup::new("ksink");
    let client = common::mongo(&common::source_uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    let _source = setup.spawn("source", &[]);
    let mut sink = setup.spawn("sink", &[]);
    let load = {
        let coll = coll.clone();
        tokio::spawn(async move { mixed_load(&coll, 4, 4000).await })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    sink.kill9();
    load.await.unwrap();
    let _sink = setup.spawn("sink", &[]);
    wait_equal(&setup, "c", Duration::from_secs(120)).await;
}

async fn produce(topic: &str, messages: &[(Option<&[u8]>, Option<&[u8]>)]) {
    let kafka = common::kafka_config("unused", 8);
    let producer: FutureProducer = docrepl::kafka::producer_config(&kafka).create().unwrap();
    for (key, value) in messages {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
}

async fn create_topic(setup: &Setup, coll: &str) -> String {
    let topic = setup.topic(coll);
    let kafka = common::kafka_config(&setup.prefix, 8);
    docrepl::kafka::admin::TopicAdmin::new(&kafka).unwrap().ensure_topic(&topic, 8, 1, &[]).await.unwrap();
    topic
}

fn create_event(db: &str, coll: &str, id: i32, extra: &str) -> (Vec<u8>, Vec<u8>) {
    let key = format!(r#"{{"id":"{id}"}}"#).into_bytes();
    let after = format!(r#"{{"_id": {{"$numberInt": "{id}"}}{extra}}}"#);
    let value = serde_json::json!({
        "before": null, "after": after, "updateDescription": null,
        "source": {"connector": "mongodb", "name": "x", "db": db, "collection": coll, "ts_ms": 0, "ord": 0, "snapshot": "false"},
        "op": "c", "ts_ms": 0,
    });
    (key, serde_json::to_vec(&value).unwrap())
}

#[tokio::test]
async fn poison_messages_go_to_the_dead_letter_topic_and_the_rest_is_applied() {
    let mut setup = Setup::new("dlq");
    setup.sink_extra = "duplicate_key_retry_ms = 1000".into();
    let target = common::mongo(&common::target_uri()).await;
    let tcoll = target.database(&setup.db).collection::<Document>("c");
    tcoll
        .create_index(mongodb::IndexModel::builder().keys(doc! {"email": 1}).options(
            mongodb::options::IndexOptions::builder().unique(true).sparse(true).build(),
        ).build())
        .await
        .unwrap();
    let topic = create_topic(&setup, "c").await;
    let mut messages: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    for id in 1..=10 {
        let (k, v) = create_event(&setup.db, "c", id, "");
        messages.push((k, Some(v)));
    }
    let bad: Vec<&[u8]> = vec![b"{not json", br#"{"op":"x","after":"{}"}"#, &[0xff, 0xfe, 0x00], br#"{"op":"c","after":"{\"_id\": {\"$bad\": 1}}"}"#];
    for b in &bad {
        messages.push((br#"{"id":"1"}"#.to_vec(), Some(b.to_vec())));
    }
    let (k, v) = create_event(&setup.db, "c", 20, r#", "email": "same@example.com""#);
    messages.push((k, Some(v)));
    let (k, v) = create_event(&setup.db, "c", 21, r#", "email": "same@example.com""#);
    messages.push((k, Some(v)));
    let refs: Vec<(Option<&[u8]>, Option<&[u8]>)> =
        messages.iter().map(|(k, v)| (Some(k.as_slice()), v.as_deref())).collect();
    produce(&topic, &refs).await;

    let _sink = setup.spawn("sink", &[]);
    common::eventually(Duration::from_secs(60), "valid documents applied", || async {
        tcoll.count_documents(doc! {}).await.unwrap_or(0) == 11
    })
    .await;
    let letters = consume(&setup.dead_letter_topic(), Duration::from_secs(60), |m| m.len() >= 5).await;
    assert_eq!(letters.len(), 5, "3 undecodable + 1 refused by the target + 1 lasting duplicate key");
    let reasons: Vec<String> = letters
        .iter()
        .map(|m| {
            let h = m.headers().expect("headers");
            let reason = h.iter().find(|h| h.key == "docrepl.reason").and_then(|h| h.value).expect("reason header");
            assert!(h.iter().any(|h| h.key == "docrepl.source.topic" && h.value == Some(topic.as_bytes())));
            assert!(h.iter().any(|h| h.key == "docrepl.source.offset"));
            String::from_utf8_lossy(reason).into_owned()
        })
        .collect();
    assert_eq!(reasons.iter().filter(|r| r.contains("undecodable")).count(), 3, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("unknown op")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("$bad")), "an _id the target refuses: {reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("11000")), "{reasons:?}");
    // The dead letter keeps the original message.
    assert!(letters.iter().any(|m| m.payload() == Some(b"{not json".as_slice())));
}

/// Inserts are written with `insert`; one whose document is already on the target (a
/// replay after a restart, or the target written by someone else) replaces it instead of
/// failing, and its neighbours in the batch are applied once.
#[tokio::test]
async fn an_insert_of_a_document_already_on_the_target_replaces_it() {
    let setup = Setup::new("reins");
    let target = common::mongo(&common::target_uri()).await;
    let tcoll = target.database(&setup.db).collection::<Document>("c");
    tcoll.insert_many([doc! {"_id": 2, "stale": true}, doc! {"_id": 4, "stale": true}]).await.unwrap();
    let topic = create_topic(&setup, "c").await;
    let messages: Vec<(Vec<u8>, Vec<u8>)> =
        (1..=5).map(|id| create_event(&setup.db, "c", id, r#", "fresh": true"#)).collect();
    let refs: Vec<(Option<&[u8]>, Option<&[u8]>)> =
        messages.iter().map(|(k, v)| (Some(k.as_slice()), Some(v.as_slice()))).collect();
    produce(&topic, &refs).await;

    let _sink = setup.spawn("sink", &[]);
    common::eventually(Duration::from_secs(60), "every insert applied", || async {
        tcoll.count_documents(doc! {"fresh": true}).await.unwrap_or(0) == 5
    })
    .await;
    assert_eq!(tcoll.count_documents(doc! {}).await.unwrap(), 5);
    for id in [2, 4] {
        let d = tcoll.find_one(doc! {"_id": id}).await.unwrap().unwrap();
        assert_eq!(d, doc! {"_id": id, "fresh": true}, "replaced whole, not merged");
    }
    let letters = consume(&setup.dead_letter_topic(), Duration::from_secs(3), |_| false).await;
    assert!(letters.is_empty(), "nothing dead-lettered: {} letters", letters.len());
}

/// Events as a real Debezium MongoDB connector 2.x writes them: schema/payload wrapped,
/// relaxed and legacy Extended JSON, `u` events without `after` (change_streams mode),
/// deletes and tombstones.
#[tokio::test]
async fn debezium_written_events_are_applied() {
    let setup = Setup::new("dbz");
    let topic = create_topic(&setup, "customers").await;
    let db = setup.db.clone();
    let source = |op: &str| {
        serde_json::json!({"version": "2.5.4.Final", "connector": "mongodb", "name": "dbserver1", "ts_ms": 1_700_000_000_000i64,
            "snapshot": if op == "r" { "true" } else { "false" }, "db": db, "sequence": null, "rs": "rs0",
            "collection": "customers", "ord": 1, "lsid": null, "txnNumber": null})
    };
    let wrap = |payload: serde_json::Value| serde_json::to_vec(&serde_json::json!({"schema": {"type": "struct", "optional": false}, "payload": payload})).unwrap();
    let key = |id: &str| serde_json::to_vec(&serde_json::json!({"schema": {"type": "struct"}, "payload": {"id": id}})).unwrap();
    let oid = "65976a473f3a210c022ffc55";
    let oid_key = format!("{{\"$oid\": \"{oid}\"}}");
    let m1 = wrap(serde_json::json!({"before": null,
        "after": format!(r#"{{"_id": {{"$oid": "{oid}"}}, "first_name": "Anne", "born": {{"$date": -86400000}}, "avatar": {{"$binary": "AAEC", "$type": "00"}}, "orders": 3, "tags": ["a", "b", "c"]}}"#),
        "updateDescription": null, "source": source("r"), "op": "r", "ts_ms": 1_700_000_000_001i64, "transaction": null}));
    let m2 = wrap(serde_json::json!({"before": null, "after": null,
        "updateDescription": {"removedFields": ["orders"], "updatedFields": r#"{"first_name": "Anne Marie", "address.city": "Oslo"}"#, "truncatedArrays": [{"field": "tags", "size": 1}]},
        "source": source("u"), "op": "u", "ts_ms": 1_700_000_000_002i64, "transaction": null}));
    let m3 = wrap(serde_json::json!({"before": null, "after": r#"{"_id": 1004, "first_name": "Bob", "spent": {"$numberDecimal": "10.50"}}"#,
        "updateDescription": null, "source": source("c"), "op": "c", "ts_ms": 1_700_000_000_003i64, "transaction": null}));
    let m4 = wrap(serde_json::json!({"before": null, "after": r#"{"_id": 1005, "first_name": "Gone"}"#,
        "updateDescription": null, "source": source("c"), "op": "c", "ts_ms": 1_700_000_000_004i64, "transaction": null}));
    let m5 = wrap(serde_json::json!({"before": null, "after": null, "updateDescription": null,
        "source": source("d"), "op": "d", "ts_ms": 1_700_000_000_005i64, "transaction": null}));
    let (k_oid, k1004, k1005) = (key(&oid_key), key("1004"), key("1005"));
    produce(&topic, &[
        (Some(&k_oid), Some(&m1)),
        (Some(&k_oid), Some(&m2)),
        (Some(&k1004), Some(&m3)),
        (Some(&k1005), Some(&m4)),
        (Some(&k1005), Some(&m5)),
        (Some(&k1005), None),
    ]).await;

    let _sink = setup.spawn("sink", &[]);
    let target = common::mongo(&common::target_uri()).await;
    let coll = target.database(&setup.db).collection::<Document>("customers");
    common::eventually(Duration::from_secs(60), "Debezium events applied", || async {
        coll.count_documents(doc! {}).await.unwrap_or(0) == 2
            && coll.find_one(doc! {"first_name": "Anne Marie"}).await.ok().flatten().is_some()
    })
    .await;
    let anne = coll.find_one(doc! {"_id": bson::oid::ObjectId::parse_str(oid).unwrap()}).await.unwrap().unwrap();
    assert_eq!(anne.get_str("first_name").unwrap(), "Anne Marie");
    assert_eq!(anne.get_document("address").unwrap().get_str("city").unwrap(), "Oslo");
    assert!(!anne.contains_key("orders"), "removed field");
    assert_eq!(anne.get_array("tags").unwrap().len(), 1, "truncated array");
    assert_eq!(anne.get_datetime("born").unwrap().timestamp_millis(), -86_400_000);
    assert_eq!(anne.get_binary_generic("avatar").unwrap(), &vec![0u8, 1, 2]);
    let bob = coll.find_one(doc! {"_id": 1004}).await.unwrap().unwrap();
    assert_eq!(bob.get("spent").unwrap(), &bson::Bson::Decimal128("10.50".parse().unwrap()));
    assert!(coll.find_one(doc! {"_id": 1005}).await.unwrap().is_none(), "deleted");
}
