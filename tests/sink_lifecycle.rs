//! The sink's life cycle: SIGTERM while the target is down abandons the uncommitted batch
//! (replayed at the next start) and exits 0; `--from-beginning` and `--from-timestamp`
//! rebuild a target from what the topic retains; a committed offset that retention
//! deleted stops the sink with the partition named; the docs/s ceiling holds.

mod common;

use std::time::Duration;

use bson::{doc, Document};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use common::Setup;

async fn produce_creates(setup: &Setup, coll: &str, ids: std::ops::Range<i32>) {
    let kafka = common::kafka_config(&setup.prefix, 8);
    let topic = setup.topic(coll);
    docrepl::kafka::admin::TopicAdmin::new(&kafka).unwrap().ensure_topic(&topic, 8, 1, &[]).await.unwrap();
    let producer: FutureProducer = docrepl::kafka::producer_config(&kafka).create().unwrap();
    for id in ids {
        let key = format!(r#"{{"id":"{id}"}}"#);
        let value = serde_json::json!({
            "after": format!(r#"{{"_id": {{"$numberInt": "{id}"}}, "v": "x"}}"#),
            "source": {"db": setup.db, "collection": coll}, "op": "c",
        })
        .to_string();
        producer.send(FutureRecord::to(&topic).key(&key).payload(&value), Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
}

/// Deletes the records before `offset` in every partition of `topic`, as retention does.
async fn delete_records_before(setup: &Setup, topic: &str, offset: Offset) {
    let admin: AdminClient<DefaultClientContext> =
        docrepl::kafka::base_client_config(&common::kafka_config(&setup.prefix, 8)).create().unwrap();
    let mut partitions = TopicPartitionList::new();
    for p in 0..8 {
        partitions.add_partition_offset(topic, p, offset).unwrap();
    }
    admin.delete_records(&partitions, &AdminOptions::new()).await.expect("delete records");
}

#[tokio::test]
async fn sigterm_while_the_target_is_down_exits_0_and_loses_nothing() {
    let mut target = common::OwnMongod::start(27517).await;
    let setup = Setup::new("term");
    let path = setup.config_with_target(&target.uri());
    produce_creates(&setup, "c", 0..100).await;
    let mut sink = setup.spawn_with("sink", &path, &[]);
    let client = common::mongo(&target.uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(60), "first events applied", || async {
        coll.count_documents(doc! {}).await.unwrap_or(0) == 100
    })
    .await;

    target.stop(true);
    produce_creates(&setup, "c", 100..200).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // the worker is retrying against a dead target
    let started = std::time::Instant::now();
    assert_eq!(sink.terminate(Duration::from_secs(10)), Some(0), "SIGTERM with the target down:\n{}", sink.log_text());
    assert!(started.elapsed() < Duration::from_secs(10));

    target.restart().await;
    let _sink = setup.spawn_with("sink", &path, &[]);
    let client = common::mongo(&target.uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(60), "the abandoned batch is applied after the restart", || async {
        coll.count_documents(doc! {}).await.unwrap_or(0) == 200
    })
    .await;
}

#[tokio::test]
async fn from_beginning_rebuilds_the_target() {
    let setup = Setup::new("replay");
    produce_creates(&setup, "c", 0..50).await;
    let target = common::mongo(&common::target_uri()).await;
    let coll = target.database(&setup.db).collection::<Document>("c");
    let mut sink = setup.spawn("sink", &[]);
    common::eventually(Duration::from_secs(60), "applied", || async { coll.count_documents(doc! {}).await.unwrap_or(0) == 50 }).await;
    assert_eq!(sink.terminate(Duration::from_secs(10)), Some(0));

    coll.drop().await.unwrap();
    // A plain restart resumes after the committed offsets: nothing to apply.
    let mut sink = setup.spawn("sink", &[]);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 0, "committed offsets were kept");
    assert_eq!(sink.terminate(Duration::from_secs(10)), Some(0));

    let _sink = setup.spawn("sink", &["--from-beginning"]);
    common::eventually(Duration::from_secs(60), "rebuilt from the topic", || async {
        coll.count_documents(doc! {}).await.unwrap_or(0) == 50
    })
    .await;
}

#[tokio::test]
async fn from_timestamp_replays_only_what_came_after() {
    let setup = Setup::new("fromts");
    produce_creates(&setup, "c", 0..40).await;
    // Kafka timestamps are milliseconds; keep clear of the boundary on both sides.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let from = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    produce_creates(&setup, "c", 40..70).await;

    let from = humantime::format_rfc3339_millis(from).to_string();
    let mut sink = setup.spawn("sink", &["--from-timestamp", &from]);
    let target = common::mongo(&common::target_uri()).await;
    let coll = target.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(60), "the later events applied", || async {
        coll.count_documents(doc! {"_id": {"$gte": 40}}).await.unwrap_or(0) == 30
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(coll.count_documents(doc! {"_id": {"$lt": 40}}).await.unwrap(), 0, "events before {from} were replayed");
    assert_eq!(sink.terminate(Duration::from_secs(10)), Some(0), "{}", sink.log_text());
}

#[tokio::test]
async fn a_committed_offset_deleted_by_retention_stops_the_sink_naming_the_partition() {
    let setup = Setup::new("retention");
    produce_creates(&setup, "c", 0..40).await;
    let target = common::mongo(&common::target_uri()).await;
    let coll = target.database(&setup.db).collection::<Document>("c");
    let mut sink = setup.spawn("sink", &[]);
    common::eventually(Duration::from_secs(60), "applied", || async { coll.count_documents(doc! {}).await.unwrap_or(0) == 40 }).await;
    assert_eq!(sink.terminate(Duration::from_secs(10)), Some(0));

    // While the sink is down more events arrive, and retention deletes everything the
    // topic holds: the committed offsets now point before the earliest kept record.
    produce_creates(&setup, "c", 40..80).await;
    let topic = setup.topic("c");
    delete_records_before(&setup, &topic, Offset::End).await;

    let mut sink = setup.spawn("sink", &[]);
    let code = sink.wait_exit(Duration::from_secs(60));
    let log = sink.log_text();
    assert!(matches!(code, Some(c) if c != 0), "the sink must stop with an error, got {code:?}:\n{log}");
    assert!(log.contains("retention") && log.contains(&format!("topic {topic} partition")), "the error names the partition:\n{log}");
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 40, "nothing jumped ahead silently");
}

#[tokio::test]
async fn the_docs_per_second_ceiling_holds() {
    let mut setup = Setup::new("rate");
    setup.sink_extra = "max_docs_per_sec = 100".into();
    produce_creates(&setup, "c", 0..500).await;
    let target = common::mongo(&common::target_uri()).await;
    let coll = target.database(&setup.db).collection::<Document>("c");
    let mut sink = setup.spawn("sink", &[]);
    // At 100/s with a bucket of 100, the last of 500 documents is written at least 4 s
    // after the first is allowed. Measured from the last moment the target was still
    // empty (half of that, for a first write that is slow to become visible); without a
    // ceiling the whole backlog lands in one batch, within one poll.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut last_empty = std::time::Instant::now();
    let all_at = loop {
        let n = coll.count_documents(doc! {}).await.unwrap_or(0);
        let now = std::time::Instant::now();
        if n == 0 {
            last_empty = now;
        }
        if n == 500 {
            break now;
        }
        assert!(now < deadline, "only {n} of 500 documents after 90 s:\n{}", sink.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = all_at - last_empty;
    assert!(took >= Duration::from_secs(2), "500 documents at max_docs_per_sec = 100 landed within {took:?}");
    assert_eq!(sink.terminate(Duration::from_secs(10)), Some(0));
}

/// A new sink group (a third region added later) on a topic whose first records retention
/// already deleted must not start at the earliest retained offset: the target would miss
/// every document whose events are gone. It refuses, naming topic, partition and offset.
#[tokio::test]
async fn a_new_group_on_a_topic_that_lost_its_beginning_refuses_to_start() {
    let setup = Setup::new("newgroup");
    produce_creates(&setup, "c", 0..40).await;
    let topic = setup.topic("c");
    delete_records_before(&setup, &topic, Offset::Offset(2)).await;

    let mut sink = setup.spawn("sink", &[]);
    let code = sink.wait_exit(Duration::from_secs(60));
    let log = sink.log_text();
    assert!(matches!(code, Some(c) if c != 0), "the sink must refuse to start, got {code:?}:\n{log}");
    assert!(log.contains(&format!("topic {topic} partition")) && log.contains("earliest retained offset is 2"), "{log}");
    assert!(log.contains("--from-beginning"), "says what to do:\n{log}");
    let target = common::mongo(&common::target_uri()).await;
    assert_eq!(target.database(&setup.db).collection::<Document>("c").count_documents(doc! {}).await.unwrap(), 0, "nothing applied");

    // Told to, it starts from what the topic keeps.
    let mut replay = setup.spawn("sink", &["--from-beginning"]);
    let coll = target.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(60), "the retained events applied", || async {
        coll.count_documents(doc! {}).await.unwrap_or(0) > 0
    })
    .await;
    assert_eq!(replay.terminate(Duration::from_secs(10)), Some(0), "{}", replay.log_text());
}
