//! A rebalance while one member's write is stuck: the write must never land after the
//! partition's new owner wrote newer versions. A `failCommand` fail point holds member A's
//! next write for longer than the group's session timeout while member B joins and takes
//! partitions over; B applies version 2 and then version 3 of every document. A's held
//! write (version 2) used to land after that (the revoke gave up waiting for it after
//! 30 s), leaving documents at version 2 for good.
//! Now every write carries `maxTimeMS` (the server refuses to apply it later) and a
//! client-side timeout below the session timeout, and a partition never has two workers.

mod common;

use std::time::{Duration, Instant};

use bson::{doc, Document};
use rdkafka::producer::{FutureProducer, FutureRecord};

use common::Setup;

const DOCS: i32 = 40;

async fn produce_version(setup: &Setup, producer: &FutureProducer, v: i32) {
    let topic = setup.topic("c");
    for id in 0..DOCS {
        let key = format!(r#"{{"id":"{id}"}}"#);
        let value = serde_json::json!({
            "after": format!(r#"{{"_id": {{"$numberInt": "{id}"}}, "v": {{"$numberInt": "{v}"}}}}"#),
            "source": {"db": setup.db, "collection": "c"}, "op": "u",
        })
        .to_string();
        producer.send(FutureRecord::to(&topic).key(&key).payload(&value), Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
}

async fn at_version(coll: &mongodb::Collection<Document>, v: i32) -> u64 {
    coll.count_documents(doc! {"v": v}).await.unwrap_or(0)
}

#[tokio::test]
async fn a_write_held_across_a_rebalance_never_lands_after_the_new_owner() {
    let args = ["--setParameter", "enableTestCommands=1"].iter().map(|s| s.to_string()).collect();
    let target = common::OwnMongod::start_with(27561, args, "").await;
    let setup = Setup::new("rebalance");
    let kafka = common::kafka_config(&setup.prefix, 8);
    docrepl::kafka::admin::TopicAdmin::new(&kafka).unwrap().ensure_topic(&setup.topic("c"), 8, 1, &[]).await.unwrap();
    let producer: FutureProducer = docrepl::kafka::producer_config(&kafka).create().unwrap();
    let member = |name: &str| {
        let path = setup.config_with_target(&format!("{}&appName={name}", target.uri()));
        let own = setup.dir.path().join(format!("{name}.toml"));
        std::fs::rename(path, &own).unwrap();
        own
    };
    let (config_a, config_b) = (member("member-a"), member("member-b"));
    let client = common::mongo(&target.uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");

    produce_version(&setup, &producer, 1).await;
    let mut a = setup.spawn_with("sink", &config_a, &[]);
    common::eventually(Duration::from_secs(60), "version 1 applied by member A", || async { at_version(&coll, 1).await == DOCS as u64 }).await;

    // A's next write is held for 40 s: longer than the session timeout (6 s) and than
    // the 30 s the revoke used to wait for a worker before giving its partition up.
    let hold = Duration::from_secs(40);
    client
        .database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": {"times": 1}, "data": {
            "failCommands": ["insert", "update"], "blockConnection": true, "blockTimeMS": hold.as_millis() as i64, "appName": "member-a",
        }})
        .await
        .unwrap();
    let held_at = Instant::now();
    produce_version(&setup, &producer, 2).await;
    let mut b = setup.spawn_with("sink", &config_b, &[]);
    common::eventually(Duration::from_secs(60), "member B to take partitions", || async { b.log_text().contains("worker started") }).await;
    common::eventually(Duration::from_secs(60), "version 2 everywhere", || async { at_version(&coll, 2).await == DOCS as u64 }).await;
    produce_version(&setup, &producer, 3).await;
    common::eventually(Duration::from_secs(60), "version 3 everywhere", || async { at_version(&coll, 3).await == DOCS as u64 }).await;
    // Past the end of the hold: a held write that was going to land has landed.
    if let Some(left) = (hold + Duration::from_secs(3)).checked_sub(held_at.elapsed()) {
        tokio::time::sleep(left).await;
    }
    assert_eq!(at_version(&coll, 3).await, DOCS as u64, "documents went back to an older version after the rebalance:\nA:\n{}\nB:\n{}", a.log_text(), b.log_text());
    assert_eq!(a.terminate(Duration::from_secs(15)), Some(0), "{}", a.log_text());
    assert_eq!(b.terminate(Duration::from_secs(15)), Some(0), "{}", b.log_text());
}
