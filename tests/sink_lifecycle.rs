//! The sink's life cycle: SIGTERM while the target is down abandons the uncommitted batch
//! (replayed at the next start) and exits 0; `--from-beginning` rebuilds a target from
//! what the topic retains.

mod common;

use std::time::Duration;

use bson::{doc, Document};
use rdkafka::producer::{FutureProducer, FutureRecord};

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
