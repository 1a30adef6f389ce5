//! Bad input on the topic, fuzz-style: thousands of random and truncated JSON values,
//! wrong types, unknown `op`s, huge values and invalid UTF-8, between valid events. The
//! sink does not crash, every bad message lands in the dead-letter topic with a reason
//! (matched by source partition and offset), and every valid event is applied.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bson::{doc, Document};
use rand::{Rng, SeedableRng};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};

use common::{consume, Setup};

fn valid_event(db: &str, id: i32) -> (Vec<u8>, Vec<u8>) {
    let value = serde_json::json!({
        "before": null, "after": format!(r#"{{"_id": {{"$numberInt": "{id}"}}, "v": {id}}}"#),
        "source": {"connector": "mongodb", "name": "x", "db": db, "collection": "c", "ts_ms": 0, "ord": 0, "snapshot": "false"},
        "op": "c", "ts_ms": 0,
    });
    (format!(r#"{{"id":"{id}"}}"#).into_bytes(), serde_json::to_vec(&value).unwrap())
}

/// One malformed message of a random kind.
fn bad_message(rng: &mut rand::rngs::StdRng, db: &str) -> (Option<Vec<u8>>, Vec<u8>) {
    let id = rng.random_range(100_000..200_000);
    let (key, valid) = valid_event(db, id);
    let value: Vec<u8> = match rng.random_range(0..9) {
        // Random bytes, mostly invalid UTF-8.
        0 => (0..rng.random_range(1..200)).map(|_| rng.random()).collect(),
        // A valid event cut short.
        1 => valid[..rng.random_range(1..valid.len() - 1)].to_vec(),
        // Wrong types.
        2 => br#"{"op": 5, "after": "{}"}"#.to_vec(),
        3 => format!(r#"{{"op": "c", "after": {id}, "source": {{"db": "{db}", "collection": "c"}}}}"#).into_bytes(),
        // Unknown op.
        4 => String::from_utf8(valid.clone()).unwrap().replace(r#""op":"c""#, r#""op":"x""#).into_bytes(),
        // A huge value that is not Extended JSON.
        5 => format!(r#"{{"op": "c", "after": "{{\"_id\": {{\"$numberLong\": \"{}\"}}}}", "source": {{"db": "{db}", "collection": "c"}}}}"#, "9".repeat(300_000)).into_bytes(),
        // Invalid UTF-8 inside otherwise plausible JSON.
        6 => {
            let mut v = valid.clone();
            let at = rng.random_range(1..v.len() - 1);
            v[at] = 0xff;
            v
        }
        // Not an object at all.
        7 => b"[1, 2, 3]".to_vec(),
        // A `c` without `after`.
        _ => format!(r#"{{"op": "c", "source": {{"db": "{db}", "collection": "c"}}}}"#).into_bytes(),
    };
    (rng.random_bool(0.8).then_some(key), value)
}

/// The collection topic `c` (8 partitions) and a producer for it.
async fn topic_and_producer(setup: &Setup) -> (String, FutureProducer) {
    let topic = setup.topic("c");
    let kafka = common::kafka_config(&setup.prefix, 8);
    docrepl::kafka::admin::TopicAdmin::new(&kafka).unwrap().ensure_topic(&topic, 8, 1, &[]).await.unwrap();
    (topic, docrepl::kafka::producer_config(&kafka).create().unwrap())
}

/// Produces one message and waits for the broker; its (partition, offset).
async fn send(producer: &FutureProducer, topic: &str, key: Option<&[u8]>, value: &[u8]) -> (i32, i64) {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(value);
    if let Some(k) = key {
        record = record.key(k);
    }
    let delivery = producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    (delivery.partition, delivery.offset)
}

/// A header of a consumed message, as text.
fn header(m: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    m.headers().and_then(|h| h.iter().find(|h| h.key == name).and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned())))
}

/// A hand-written `c` event with `after` (Extended JSON text) and `source`.
fn create_event(after: &str, source: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"op": "c", "after": after, "source": source, "ts_ms": 0})).unwrap()
}

/// A hand-written `u` event with only `updatedFields` (Extended JSON text) and `source`.
fn patch_event(updated_fields: &str, source: &serde_json::Value) -> Vec<u8> {
    let update = serde_json::json!({"updatedFields": updated_fields, "removedFields": []});
    serde_json::to_vec(&serde_json::json!({"op": "u", "after": null, "updateDescription": update, "source": source, "ts_ms": 0})).unwrap()
}

/// The `source` block of a hand-written event for collection `c` of `db`.
fn source_block(db: &str) -> serde_json::Value {
    serde_json::json!({"connector": "mongodb", "name": "x", "db": db, "collection": "c", "ts_ms": 0, "ord": 0, "snapshot": "false"})
}

#[tokio::test]
async fn thousands_of_bad_messages_are_dead_lettered_and_every_valid_event_applied() {
    let setup = Setup::new("fuzz");
    let (topic, producer) = topic_and_producer(&setup).await;

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut bad: HashSet<(i32, i64)> = HashSet::new();
    let mut valid = 0;
    for i in 0..3000 {
        let (key, value) = if i % 3 == 0 {
            valid += 1;
            let (k, v) = valid_event(&setup.db, i / 3);
            (Some(k), v)
        } else {
            let (k, v) = bad_message(&mut rng, &setup.db);
            // The decoder is the oracle: only what it refuses counts as bad.
            if docrepl::debezium::decode(k.as_deref(), Some(&v), &topic).is_ok() {
                continue;
            }
            (k, v)
        };
        let at = send(&producer, &topic, key.as_deref(), &value).await;
        if i % 3 != 0 {
            bad.insert(at);
        }
    }
    assert!(bad.len() > 1500, "the generator made too few bad messages: {}", bad.len());

    let mut sink = setup.spawn("sink", &[]);
    let target = common::mongo(&common::target_uri()).await.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(120), "every valid event applied", || async {
        target.count_documents(doc! {}).await.unwrap_or(0) == valid
    })
    .await;

    let letters = consume(&setup.dead_letter_topic(), Duration::from_secs(120), |m| m.len() >= bad.len()).await;
    let mut lettered = HashSet::new();
    for m in &letters {
        let reason = header(m, "docrepl.reason").expect("a reason header");
        assert!(!reason.is_empty());
        let partition: i32 = header(m, "docrepl.source.partition").unwrap().parse().unwrap();
        let offset: i64 = header(m, "docrepl.source.offset").unwrap().parse().unwrap();
        lettered.insert((partition, offset));
    }
    let missing: Vec<_> = bad.difference(&lettered).take(5).collect();
    assert!(missing.is_empty(), "bad messages not in the dead-letter topic (first 5 of {}): {missing:?}", bad.len() - lettered.len());
    assert_eq!(lettered.len(), bad.len(), "dead letters for messages that were not bad");
    assert_eq!(target.count_documents(doc! {"_id": {"$gte": 100_000}}).await.unwrap(), 0, "a bad message was applied");
    assert_eq!(sink.terminate(Duration::from_secs(15)), Some(0), "the sink survived:\n{}", sink.log_text());
}

/// Input that used to panic a worker or corrupt a document: a NUL byte in a field name or a
/// regex of `after`, a NUL in `updatedFields` (once sent as an empty update, which replaced
/// the target document with just its `_id`), and a patch setting array element 4e9. Each is
/// a dead letter with a reason, and the valid event after it on the same key is applied.
#[tokio::test]
async fn nul_bytes_and_absurd_array_indexes_are_dead_letters_not_panics() {
    let setup = Setup::new("nul");
    let (topic, producer) = topic_and_producer(&setup).await;
    let db = &setup.db;
    let source = source_block(db);
    let event = |op: &str, after: Option<String>, update: Option<serde_json::Value>| {
        serde_json::to_vec(&serde_json::json!({"before": null, "after": after, "updateDescription": update, "source": source, "op": op, "ts_ms": 0})).unwrap()
    };
    let bad: Vec<Vec<u8>> = vec![
        event("c", Some(r#"{"_id": {"$numberInt": "1"}, "a\u0000b": 1}"#.into()), None),
        event("c", Some(r#"{"_id": {"$numberInt": "2"}, "r": {"$regularExpression": {"pattern": "a\u0000", "options": ""}}}"#.into()), None),
        event("u", None, Some(serde_json::json!({"updatedFields": r#"{"x\u0000y": 1}"#, "removedFields": [], "truncatedArrays": []}))),
        event("u", None, Some(serde_json::json!({"updatedFields": "{\"arr.4000000000\": 1}", "removedFields": [], "truncatedArrays": []}))),
    ];
    let target = common::mongo(&common::target_uri()).await.database(db).collection::<Document>("c");
    // Documents 3 and 4 exist on the target, so the bad patches have something to damage.
    target.insert_many([doc! {"_id": 3, "keep": true}, doc! {"_id": 4, "keep": true, "arr": [0]}]).await.unwrap();
    for (i, value) in bad.iter().enumerate() {
        let id = (i + 1) as i32;
        let key = format!(r#"{{"id":"{id}"}}"#);
        for value in [value.clone(), event("c", Some(format!(r#"{{"_id": {{"$numberInt": "{id}"}}, "keep": true, "ok": {id}}}"#)), None)] {
            send(&producer, &topic, Some(key.as_bytes()), &value).await;
        }
    }
    let mut sink = setup.spawn("sink", &[]);
    common::eventually(Duration::from_secs(120), "every valid event after a bad one", || async {
        target.count_documents(doc! {"ok": {"$exists": true}}).await.unwrap_or(0) == 4
    })
    .await;
    let letters = consume(&setup.dead_letter_topic(), Duration::from_secs(60), |m| m.len() >= 4).await;
    assert_eq!(letters.len(), 4, "one dead letter per bad message:\n{}", sink.log_text());
    for m in &letters {
        let reason = header(m, "docrepl.reason").expect("a reason header");
        assert!(reason.contains("NUL") || reason.contains("past MongoDB's limit"), "{reason}");
    }
    assert!(!sink.log_text().contains("panicked"), "{}", sink.log_text());
    assert_eq!(sink.terminate(Duration::from_secs(15)), Some(0), "the sink survived:\n{}", sink.log_text());
}

/// A dead letter larger than the dead-letter topic takes (an existing topic with a small
/// `max.message.bytes`, as MSK's 1 MB default is against a 5 MB document) used to be retried
/// forever, stalling its partition. It is sent cut to its key, reason and source
/// coordinates, and the partition goes on.
#[tokio::test]
async fn a_dead_letter_too_large_for_its_topic_is_cut_not_retried_forever() {
    // The broker enforces the dead-letter topic's own 2 KB limit.
    let setup = Setup::new("dlqsize");
    let (topic, producer) = topic_and_producer(&setup).await;
    let admin = docrepl::kafka::admin::TopicAdmin::new(&common::kafka_config(&setup.prefix, 8)).unwrap();
    admin.ensure_topic(&setup.dead_letter_topic(), 1, 1, &[("max.message.bytes", "2048".to_string())]).await.unwrap();
    // Random letters: compressed, the letter still exceeds the topic's limit.
    let noise: String = rand::Rng::sample_iter(rand::rng(), rand::distr::Alphanumeric).take(20_000).map(char::from).collect();
    let poison = format!("{{not json {noise}");
    let (key, valid) = valid_event(&setup.db, 1);
    for value in [poison.as_bytes(), valid.as_slice()] {
        send(&producer, &topic, Some(&key), value).await;
    }
    let mut sink = setup.spawn("sink", &[]);
    let target = common::mongo(&common::target_uri()).await.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(60), "the valid event after the poison one", || async {
        target.count_documents(doc! {"_id": 1}).await.unwrap_or(0) == 1
    })
    .await;
    let letters = consume(&setup.dead_letter_topic(), Duration::from_secs(60), |m| !m.is_empty()).await;
    let letter = letters.first().expect("the poison message's dead letter");
    assert!(letter.payload().is_none(), "the value is left out");
    assert!(header(letter, "docrepl.cut").is_some_and(|c| c.contains("20010 bytes")), "{:?}", header(letter, "docrepl.cut"));
    assert!(header(letter, "docrepl.reason").is_some() && header(letter, "docrepl.source.offset").is_some());
    assert_eq!(sink.terminate(Duration::from_secs(15)), Some(0), "{}", sink.log_text());
}

/// A full document and, in the same batch, a patch that cannot apply to it (`a.b` inside
/// a string): the patch used to vanish while folding (the target kept the document without
/// a trace). Now the server gets it, refuses it (PathNotViable), and it is a dead letter.
#[tokio::test]
async fn a_patch_that_cannot_apply_to_its_document_is_a_dead_letter_not_dropped() {
    let setup = Setup::new("patchfail");
    let (topic, producer) = topic_and_producer(&setup).await;
    let source = source_block(&setup.db);
    let full = create_event(r#"{"_id": {"$numberInt": "1"}, "a": "text"}"#, &source);
    let patch = patch_event(r#"{"a.b": {"$numberInt": "1"}}"#, &source);
    for value in [full, patch] {
        send(&producer, &topic, Some(br#"{"id":"1"}"#), &value).await;
    }
    let mut sink = setup.spawn("sink", &[]);
    let letters = consume(&setup.dead_letter_topic(), Duration::from_secs(60), |m| !m.is_empty()).await;
    let letter = letters.first().unwrap_or_else(|| panic!("no dead letter for the refused patch:\n{}", sink.log_text()));
    let reason = header(letter, "docrepl.reason");
    assert!(reason.as_deref().is_some_and(|r| r.contains("code 28")), "{reason:?}");
    let target = common::mongo(&common::target_uri()).await.database(&setup.db).collection::<Document>("c");
    assert_eq!(target.find_one(doc! {"_id": 1}).await.unwrap(), Some(doc! {"_id": 1, "a": "text"}));
    assert_eq!(sink.terminate(Duration::from_secs(15)), Some(0), "{}", sink.log_text());
}

/// A document's patches in one batch, the middle one refused (`a.b` inside a string):
/// applied in rounds, the refusal skipped the valid patch after it and dead-lettered all
/// three. Now each patch applies whole or not at all, in order, in one write: the target
/// gets the first and the third, and only the refused one is a dead letter.
#[tokio::test]
async fn a_refused_patch_among_several_is_the_only_dead_letter() {
    let setup = Setup::new("patchrounds");
    let (topic, producer) = topic_and_producer(&setup).await;
    let source = source_block(&setup.db);
    let key = br#"{"id":"1"}"#;
    send(&producer, &topic, Some(key), &create_event(r#"{"_id": {"$numberInt": "1"}, "a": "text", "n": {"$numberInt": "0"}}"#, &source)).await;
    let mut sink = setup.spawn("sink", &[]);
    let target = common::mongo(&common::target_uri()).await.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(60), "the document", || async { target.count_documents(doc! {"_id": 1}).await.unwrap_or(0) == 1 }).await;
    assert_eq!(sink.terminate(Duration::from_secs(15)), Some(0), "{}", sink.log_text());

    // Sent while no sink runs, so the next one takes the three in one batch.
    for fields in [r#"{"n": {"$numberInt": "1"}}"#, r#"{"a.b": {"$numberInt": "1"}}"#, r#"{"n": {"$numberInt": "3"}, "m": {"$numberInt": "1"}}"#] {
        send(&producer, &topic, Some(key), &patch_event(fields, &source)).await;
    }
    let mut sink = setup.spawn("sink", &[]);
    common::eventually(Duration::from_secs(60), "the patches", || async { target.count_documents(doc! {"m": 1}).await.unwrap_or(0) == 1 }).await;
    assert_eq!(target.find_one(doc! {"_id": 1}).await.unwrap(), Some(doc! {"_id": 1, "a": "text", "n": 3, "m": 1}));
    let letters = consume(&setup.dead_letter_topic(), Duration::from_secs(15), |_| false).await;
    assert_eq!(letters.len(), 1, "one dead letter, for the refused patch: {:?}", letters.iter().map(|l| header(l, "docrepl.reason")).collect::<Vec<_>>());
    assert!(header(&letters[0], "docrepl.source.offset").as_deref() == Some("2"), "{:?}", header(&letters[0], "docrepl.source.offset"));
    assert_eq!(sink.terminate(Duration::from_secs(15)), Some(0), "{}", sink.log_text());
}
