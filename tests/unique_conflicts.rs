//! Unique secondary indexes across partitions. Swapping two documents' emails on the
//! source (x→tmp, y→x, tmp→y) puts `_id`s of different partitions in a conflict the
//! target resolves only once both partitions have caught up. With one partition held back
//! (a backlog ahead of the swap, paced by `max_docs_per_sec`), the conflict used to be
//! retried for `duplicate_key_retry_ms` and then dead-lettered: the target kept the wrong
//! emails. Now it waits while any partition of the topic is behind the conflicting event,
//! and a document whose events were folded is written one event at a time meanwhile (its
//! intermediate `tmp` is what frees `x`).

mod common;

use std::time::Duration;

use bson::{doc, Document};
use docrepl::kafka::partitioner::partition_for_key;
use rdkafka::producer::{FutureProducer, FutureRecord};

use common::Setup;

fn key(id: i32) -> String {
    format!(r#"{{"id":"{id}"}}"#)
}

fn event(setup: &Setup, id: i32, email: &str, ts_ms: i64) -> String {
    serde_json::json!({
        "after": format!(r#"{{"_id": {{"$numberInt": "{id}"}}, "email": "{email}"}}"#),
        "source": {"db": setup.db, "collection": "c", "ts_ms": ts_ms}, "op": "u",
    })
    .to_string()
}

async fn send(producer: &FutureProducer, topic: &str, id: i32, value: &str) {
    producer.send(FutureRecord::to(topic).key(&key(id)).payload(value), Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
}

#[tokio::test]
async fn a_swap_across_partitions_waits_for_the_partition_behind_instead_of_dead_lettering() {
    let mut setup = Setup::new("unique");
    setup.sink_extra = "duplicate_key_retry_ms = 1000\nmax_docs_per_sec = 500".into();
    let kafka = common::kafka_config(&setup.prefix, 8);
    let topic = setup.topic("c");
    docrepl::kafka::admin::TopicAdmin::new(&kafka).unwrap().ensure_topic(&topic, 8, 1, &[]).await.unwrap();
    let producer: FutureProducer = docrepl::kafka::producer_config(&kafka).create().unwrap();
    let partition = |id: i32| partition_for_key(key(id).as_bytes(), 8);
    let (a, b) = (1, (2..100).find(|&i| partition(i) != partition(1)).unwrap());
    let target = common::mongo(&common::target_uri()).await;
    let coll = target.database(&setup.db).collection::<Document>("c");
    target
        .database(&setup.db)
        .run_command(doc! {"createIndexes": "c", "indexes": [{"key": {"email": 1}, "name": "email", "unique": true}]})
        .await
        .unwrap();

    send(&producer, &topic, a, &event(&setup, a, "x", 10)).await;
    send(&producer, &topic, b, &event(&setup, b, "y", 11)).await;
    let mut sink = setup.spawn("sink", &[]);
    common::eventually(Duration::from_secs(60), "the two documents", || async { coll.count_documents(doc! {}).await.unwrap_or(0) == 2 }).await;

    // B's partition gets a backlog of 4,000 older events first: at 500 docs/s, B's part
    // of the swap is applied some 8 s after A's.
    let backlog: Vec<i32> = (1000..100_000).filter(|&i| partition(i) == partition(b)).take(4000).collect();
    let sends = backlog.iter().map(|&i| {
        let value = event(&setup, i, &format!("backlog-{i}"), 50_000);
        let (producer, topic) = (producer.clone(), topic.clone());
        async move { send(&producer, &topic, i, &value).await }
    });
    futures::future::join_all(sends).await;
    send(&producer, &topic, a, &event(&setup, a, "tmp", 100_000)).await;
    send(&producer, &topic, b, &event(&setup, b, "x", 100_001)).await;
    send(&producer, &topic, a, &event(&setup, a, "y", 100_002)).await;

    common::eventually(Duration::from_secs(90), "the swap applied", || async {
        let email = |id: i32| {
            let coll = coll.clone();
            async move { coll.find_one(doc! {"_id": id}).await.ok().flatten().and_then(|d| d.get_str("email").ok().map(str::to_string)) }
        };
        email(a).await.as_deref() == Some("y") && email(b).await.as_deref() == Some("x")
    })
    .await;
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2 + backlog.len() as u64);
    let log = sink.log_text();
    assert!(!log.contains("sending message to the dead-letter topic"), "{log}");
    assert!(log.contains("waits for the other partitions"), "the wait is reported:\n{log}");
    assert_eq!(sink.terminate(Duration::from_secs(15)), Some(0), "{}", sink.log_text());
}
