//! The generation fence (`docrepl::fence`) against a real broker and a real target: a late
//! sending of an earlier run of a source reader never overwrites what a later run sent,
//! also after the sink restarted (the fence is rebuilt from the history the first sink
//! stored on the target); and the source stamps every record with its run's generation, a
//! higher one after a restart.

mod common;

use std::time::Duration;

use bson::{doc, Document};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use common::Setup;

/// A `c` event of document `_id: id` with field `v`, as docrepl's source writes it.
fn event(db: &str, id: i32, v: i32) -> (Vec<u8>, Vec<u8>) {
    let key = format!(r#"{{"id":"{id}"}}"#).into_bytes();
    let after = format!(r#"{{"_id": {{"$numberInt": "{id}"}}, "v": {{"$numberInt": "{v}"}}}}"#);
    let value = serde_json::json!({
        "before": null, "after": after, "updateDescription": null,
        "source": {"connector": "mongodb", "name": "x", "db": db, "collection": "c", "ts_ms": 1_000, "ord": 0, "snapshot": "false"},
        "op": "c", "ts_ms": 1_000,
    });
    (key, serde_json::to_vec(&value).unwrap())
}

/// Produces events in order (same key, same partition), each stamped as given.
async fn produce(topic: &str, events: &[(Vec<u8>, Vec<u8>, Option<&str>)]) {
    let kafka = common::kafka_config("unused", 8);
    let producer: FutureProducer = docrepl::kafka::producer_config(&kafka).create().unwrap();
    for (key, value, stamp) in events {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).key(key.as_slice()).payload(value.as_slice());
        if let Some(s) = stamp {
            record = record.headers(OwnedHeaders::new().insert(Header { key: docrepl::fence::HEADER, value: Some(*s) }));
        }
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
}

async fn v_of(coll: &mongodb::Collection<Document>, id: i32) -> Option<i32> {
    coll.find_one(doc! {"_id": id}).await.ok().flatten().and_then(|d| d.get_i32("v").ok())
}

#[tokio::test]
async fn a_late_sending_of_an_earlier_run_never_overwrites_a_later_runs_version() {
    let setup = Setup::new("fence");
    let topic = setup.topic("c");
    let kafka = common::kafka_config(&setup.prefix, 8);
    docrepl::kafka::admin::TopicAdmin::new(&kafka).unwrap().ensure_topic(&topic, 8, 1, &[]).await.unwrap();
    let target = common::mongo(&common::target_uri()).await;
    let tcoll = target.database(&setup.db).collection::<Document>("c");
    let db = setup.db.clone();
    let with = |(k, v): (Vec<u8>, Vec<u8>), stamp: Option<&'static str>| (k, v, stamp);

    // Run 10 sent v1 of document 1; run 11 (after a restart) sent it again and then v2;
    // run 10's request, held on a silent link, reaches the broker last. Document 2 has no
    // stamp (another producer's), document 3 is another reader's, with lower generations.
    produce(
        &topic,
        &[
            with(event(&db, 1, 1), Some("src/app.$database@10")),
            with(event(&db, 1, 1), Some("src/app.$database@11")),
            with(event(&db, 1, 2), Some("src/app.$database@11")),
            with(event(&db, 1, 1), Some("src/app.$database@10")),
            with(event(&db, 2, 1), None),
            with(event(&db, 3, 1), Some("src/other.$database@3")),
        ],
    )
    .await;
    let sink = setup.spawn("sink", &[]);
    common::eventually(Duration::from_secs(60), "the last documents applied", || async {
        v_of(&tcoll, 2).await == Some(1) && v_of(&tcoll, 3).await == Some(1)
    })
    .await;
    // Events of one document share a partition and are applied in order: a late v1 that
    // was applied would show here.
    assert_eq!(v_of(&tcoll, 1).await, Some(2), "the late sending of run 10 was applied over run 11's v2:\n{}", sink.log_text());
    assert!(sink.log_text().contains("left out messages of an earlier run"), "{}", sink.log_text());

    // A new sink process (the partition's next owner) judges as the first did: it rebuilds
    // the fence from the history the first stored on the target.
    let mut sink = sink;
    assert_eq!(sink.terminate(Duration::from_secs(20)), Some(0), "{}", sink.log_text());
    produce(&topic, &[with(event(&db, 1, 1), Some("src/app.$database@10")), with(event(&db, 4, 1), None)]).await;
    let sink = setup.spawn("sink", &[]);
    common::eventually(Duration::from_secs(60), "the marker after the late sending applied", || async { v_of(&tcoll, 4).await == Some(1) }).await;
    assert_eq!(v_of(&tcoll, 1).await, Some(2), "after a restart, the late sending of run 10 was applied:\n{}", sink.log_text());
    // A later run of the same reader is applied, of course.
    produce(&topic, &[with(event(&db, 1, 3), Some("src/app.$database@12"))]).await;
    common::eventually(Duration::from_secs(60), "run 12's version applied", || async { v_of(&tcoll, 1).await == Some(3) }).await;
}

/// The stamp of a message (`writer@generation`), if any.
fn stamp_of(m: &rdkafka::message::OwnedMessage) -> Option<(String, i64)> {
    docrepl::fence::stamp_of(m).map(|(w, g)| (w.to_string(), g))
}

#[tokio::test]
async fn every_record_carries_its_runs_generation_and_a_restart_raises_it() {
    let setup = Setup::new("stamp");
    let source = common::mongo(&common::source_uri()).await;
    let coll = source.database(&setup.db).collection::<Document>("c");
    coll.insert_many((0..20).map(|i| doc! {"_id": i})).await.unwrap();
    let mut src = setup.spawn("source", &[]);
    let first = common::consume(&setup.topic("c"), Duration::from_secs(60), |m| m.len() >= 20).await;
    assert_eq!(first.len(), 20, "{}", src.log_text());
    let stamps: Vec<(String, i64)> = first.iter().map(|m| stamp_of(m).expect("every record is stamped")).collect();
    let writer = format!("{}/{}.$database", setup.prefix, setup.db);
    assert!(stamps.iter().all(|(w, _)| *w == writer), "writer {writer}: {stamps:?}");
    let run1 = stamps[0].1;
    assert!(stamps.iter().all(|(_, g)| *g == run1), "{stamps:?}");

    // A new run (another process, after the lease of the first ran out) stamps higher.
    src.kill9();
    let _src = setup.spawn("source", &[]);
    coll.insert_many((20..30).map(|i| doc! {"_id": i})).await.unwrap();
    let all = common::consume(&setup.topic("c"), Duration::from_secs(90), |m| {
        m.iter().filter(|m| stamp_of(m).is_some_and(|(_, g)| g > run1)).count() >= 10
    })
    .await;
    let later: Vec<i64> = all.iter().filter_map(stamp_of).map(|(_, g)| g).filter(|g| *g != run1).collect();
    assert!(later.len() >= 10 && later.iter().all(|g| *g > run1), "run 1 stamped {run1}, then: {later:?}");
}
