//! High availability of the source: two instances with one config; exactly one reads a
//! collection (lease), the other stands by and takes over after a kill -9 of the active
//! one, from the last saved token, without loss.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bson::{doc, Document};
use common::{consume, distinct_keys_at_least, key_id, Setup};

#[tokio::test]
async fn standby_source_takes_over_after_kill_9_without_loss() {
    let mut setup = Setup::new("ha");
    setup.source_extra = "collections = [\"c\"]".into();
    let client = common::mongo(&common::source_uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    coll.insert_one(doc! {"_id": -1}).await.unwrap();

    let mut a = setup.spawn("source", &[]);
    common::eventually(Duration::from_secs(30), "first instance reads", || async { a.log_text().contains("streaming changes") }).await;
    let b = setup.spawn("source", &[]);
    common::eventually(Duration::from_secs(30), "second instance stands by", || async {
        b.log_text().contains("standing by")
    })
    .await;
    assert!(!b.log_text().contains("lease acquired"), "only one instance reads a collection");

    let writer = common::spawn_inserts(&coll, 40, 100);
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.kill9();
    let killed = Instant::now();
    common::eventually(Duration::from_secs(20), "standby takes over", || async { b.log_text().contains("lease acquired") }).await;
    let takeover = killed.elapsed();
    assert!(takeover < Duration::from_secs(15), "takeover took {takeover:?}");
    writer.await.unwrap();

    let msgs = consume(&setup.topic("c"), Duration::from_secs(90), distinct_keys_at_least(4001)).await;
    let ids: HashSet<String> = msgs.iter().map(key_id).collect();
    let missing: Vec<i32> = (-1..4000).filter(|i| !ids.contains(&i.to_string())).take(10).collect();
    assert!(missing.is_empty(), "lost across the takeover (first 10): {missing:?}\n{}", b.log_text());
}
