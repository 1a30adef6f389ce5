//! Proves the real environment the other tests stand on: two MongoDB replica sets with
//! change streams, and a Kafka-protocol broker with multi-partition topics, an idempotent
//! lz4 producer and consumer groups.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bson::doc;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use docrepl::kafka::{admin::TopicAdmin, consumer_config, producer_config};

#[tokio::test]
async fn both_replica_sets_answer_and_stream_changes() {
    for (uri, set) in [(common::source_uri(), "rs-source"), (common::target_uri(), "rs-target")] {
        let client = common::mongo(&uri).await;
        let hello = client.database("admin").run_command(doc! {"hello": 1}).await.unwrap();
        assert_eq!(hello.get_str("setName").unwrap(), set, "{uri} is not the expected replica set");
        assert!(hello.get_bool("isWritablePrimary").unwrap());

        let coll = client.database("docrepl_env_test").collection::<bson::Document>(&common::unique("cs"));
        let mut stream = coll.watch().await.unwrap();
        coll.insert_one(doc! {"_id": 1, "x": "hello"}).await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("no change event within 20 s")
            .expect("stream ended")
            .unwrap();
        assert_eq!(event.operation_type, mongodb::change_stream::event::OperationType::Insert);
        assert_eq!(event.full_document.unwrap().get_str("x").unwrap(), "hello");
        coll.drop().await.unwrap();
    }
}

#[tokio::test]
async fn keyed_messages_stay_in_one_partition_through_a_consumer_group() {
    let prefix = common::unique("envtest");
    let kafka = common::kafka_config(&prefix, 8);
    let topic = kafka.topic_for("db", "coll");
    TopicAdmin::new(&kafka).unwrap().ensure_topic(&topic, 8, 1, &[]).await.unwrap();

    let producer: FutureProducer = producer_config(&kafka).create().unwrap();
    let mut sent: HashMap<String, usize> = HashMap::new();
    let mut deliveries = Vec::new();
    for i in 0..1000 {
        let key = format!("key-{}", i % 100);
        let payload = format!("message {i}");
        *sent.entry(key.clone()).or_default() += 1;
        let record = FutureRecord::to(&topic).key(&key).payload(&payload);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
    }
    for d in deliveries {
        d.await.expect("delivery").map_err(|(e, _)| e).expect("delivery ok");
    }

    let consumer: StreamConsumer =
        consumer_config(&kafka, &common::unique("envgroup"), 6000).set("auto.offset.reset", "earliest").create().unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut total = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while total < 1000 {
        let msg = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {total} of 1000 messages consumed within 60 s"))
            .unwrap();
        let key = String::from_utf8(msg.key().unwrap().to_vec()).unwrap();
        let p = *partition_of.entry(key.clone()).or_insert(msg.partition());
        assert_eq!(p, msg.partition(), "key {key} seen in partitions {p} and {}", msg.partition());
        *seen.entry(key).or_default() += 1;
        total += 1;
    }
    assert_eq!(seen, sent);
    let partitions: std::collections::HashSet<i32> = partition_of.values().copied().collect();
    assert!(partitions.len() > 1, "100 keys all landed in one partition: {partitions:?}");
}
