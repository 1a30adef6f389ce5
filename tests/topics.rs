//! Topics against the real broker's own rules: a CreateTopics the broker refuses stops
//! the source with the reason and the fix, and a topic whose `max.message.bytes` is
//! lowered while docrepl runs makes the broker refuse a large event (it holds a whole
//! record batch to the limit): the source stops, saying to set `kafka.max_message_bytes`,
//! and once that is done the event arrives in parts the broker takes, nothing lost.

mod common;

use std::time::Duration;

use bson::{doc, Document};
use rand::RngCore;

use common::Setup;

#[tokio::test]
async fn a_replication_factor_the_cluster_cannot_give_stops_the_source_with_the_fix() {
    let mut setup = Setup::new("rf3");
    setup.source_extra = "collections = [\"c\"]".into();
    setup.kafka_extra = "replication_factor = 3".into();
    let source = common::mongo(&common::source_uri()).await;
    source.database(&setup.db).collection::<Document>("c").insert_one(doc! {"_id": 1}).await.unwrap();
    let mut run = setup.spawn("source", &[]);
    let code = run.wait_exit(Duration::from_secs(60));
    let log = run.log_text();
    assert!(code.is_some_and(|c| c != 0), "the source went on: {log}");
    assert!(log.contains("refused replication factor 3") && log.contains("kafka.replication_factor"), "{log}");
}

#[tokio::test]
async fn a_topic_limit_lowered_while_running_stops_the_source_until_the_limit_is_set() {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let mut setup = Setup::new("lowered");
    setup.source_extra = "collections = [\"c\"]".into();
    let source = common::mongo(&common::source_uri()).await;
    let coll = source.database(&setup.db).collection::<Document>("c");
    coll.insert_one(doc! {"_id": "small"}).await.unwrap();
    let mut run = setup.spawn("run", &[]);
    let target = common::mongo(&common::target_uri()).await;
    let copied = target.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(60), "the first document", || async { copied.count_documents(doc! {}).await.unwrap_or(0) == 1 }).await;

    // The topic was created with docrepl's 1 MiB limit; now it takes 64 KiB only.
    let admin: AdminClient<DefaultClientContext> = docrepl::kafka::base_client_config(&common::kafka_config(&setup.prefix, 8)).create().unwrap();
    let topic = setup.topic("c");
    let lowered = AlterConfig::new(ResourceSpecifier::Topic(&topic)).set("max.message.bytes", "65536");
    let results = admin.alter_configs(&[lowered], &AdminOptions::new().request_timeout(Some(Duration::from_secs(15)))).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    // 300 KB of random bytes: compression cannot bring the event under the new limit.
    let mut noise = vec![0u8; 300_000];
    rand::rng().fill_bytes(&mut noise);
    coll.insert_one(doc! {"_id": "big", "noise": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: noise }}).await.unwrap();
    let code = run.wait_exit(Duration::from_secs(120));
    let log = run.log_text();
    assert!(code.is_some_and(|c| c != 0) && log.contains("set kafka.max_message_bytes to at most the topic's max.message.bytes"), "{log}");

    // As the error says: the configured limit down to the topic's, and started again.
    setup.kafka_extra = "max_message_bytes = 65536".into();
    let mut run = setup.spawn("run", &[]);
    common::eventually(Duration::from_secs(120), "the 300 KB document", || async { copied.count_documents(doc! {}).await.unwrap_or(0) == 2 }).await;
    assert_eq!(common::documents(&source, &setup.db, "c").await, common::documents(&target, &setup.db, "c").await, "byte for byte");
    assert_eq!(run.terminate(Duration::from_secs(15)), Some(0), "{}", run.log_text());
}

/// The sink subscribes by pattern, and librdkafka matches a pattern against the cluster's
/// topics only when it refreshes its metadata (every 5 s as docrepl sets it): the copy of
/// a collection whose topic appeared after the sink started waited that long. The sink
/// now asks for the topic list itself, often, while the cluster is small. Here
/// librdkafka's refresh is set to 10 minutes, so only the sink's own discovery can bring
/// the new topic's first document within the minute.
#[tokio::test]
async fn a_topic_created_after_the_sink_started_is_found_without_librdkafkas_refresh() {
    let mut setup = Setup::new("discover");
    setup.source_extra = "collections = [\"c\"]".into();
    setup.kafka_extra = "[kafka.properties]\n\"topic.metadata.refresh.interval.ms\" = \"600000\"".into();
    let mut sink = setup.spawn("sink", &[]);
    common::eventually(Duration::from_secs(60), "the sink in its group", || async { sink.log_text().contains("sink joined the consumer group") }).await;
    let source = common::mongo(&common::source_uri()).await;
    source.database(&setup.db).collection::<Document>("c").insert_one(doc! {"_id": 1, "v": "first"}).await.unwrap();
    let mut run = setup.spawn("source", &[]);
    let target = common::mongo(&common::target_uri()).await;
    let tc = target.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(60), "the new topic's first document on the target", || async {
        tc.find_one(doc! {"_id": 1}).await.ok().flatten().is_some()
    })
    .await;
    assert_eq!(run.terminate(Duration::from_secs(20)), Some(0));
    assert_eq!(sink.terminate(Duration::from_secs(20)), Some(0));
}
