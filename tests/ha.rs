//! High availability of the source: two instances with one config; exactly one reads a
//! collection (lease), the other stands by and takes over after a kill -9 of the active
//! one, from the last saved token, without loss; a holder cut off from the lease store
//! falls silent before its lease could pass to anyone.

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

/// A holder cut off from the lease store stops producing before its lease could expire
/// (so a successor never overlaps with it), and goes on without loss once the store is
/// back. The lease store is a mongod of the test's own (`source.state.uri`), stopped
/// while inserts keep coming.
#[tokio::test]
async fn a_holder_cut_off_from_the_lease_store_falls_silent_before_its_lease_ends() {
    let mut state = common::OwnMongod::start(27717).await;
    let mut setup = Setup::new("fence");
    setup.source_extra = format!("collections = [\"c\"]\n[source.state]\nuri = {:?}", state.uri());
    let client = common::mongo(&common::source_uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    coll.insert_one(doc! {"_id": -1}).await.unwrap();
    let source = setup.spawn("source", &[]);
    consume(&setup.topic("c"), Duration::from_secs(60), |m| !m.is_empty()).await;

    // 12 s of inserts; the lease store goes away 2 s in.
    let writer = common::spawn_inserts(&coll, 100, 50);
    tokio::time::sleep(Duration::from_secs(2)).await;
    state.stop(false);
    let cut_at = std::time::SystemTime::now();
    writer.await.unwrap();
    let lease_ttl = Duration::from_millis(6000); // Setup's source.lease_ttl_ms

    let msgs = consume(&setup.topic("c"), Duration::from_secs(15), |_| false).await;
    let produced_at = |m: &rdkafka::message::OwnedMessage| {
        use rdkafka::Message;
        m.timestamp().to_millis().map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms as u64))
    };
    let last = msgs.iter().filter_map(produced_at).max().expect("messages have timestamps");
    assert!(
        last <= cut_at + lease_ttl,
        "produced {:?} after the lease store went away (a successor may take over after {lease_ttl:?}):\n{}",
        last.duration_since(cut_at).unwrap_or_default(),
        source.log_text()
    );
    let ids: HashSet<String> = msgs.iter().map(key_id).collect();
    assert!(ids.len() < 5001, "every insert was published although the lease could not be renewed");

    // The store is back: the reader renews, resumes from its saved token, loses nothing.
    state.restart().await;
    let msgs = consume(&setup.topic("c"), Duration::from_secs(120), distinct_keys_at_least(5001)).await;
    let ids: HashSet<String> = msgs.iter().map(key_id).collect();
    let missing: Vec<i32> = (-1..5000).filter(|i| !ids.contains(&i.to_string())).take(10).collect();
    assert!(missing.is_empty(), "lost after the lease store came back (first 10): {missing:?}\n{}", source.log_text());
}

/// A reader that lost its lease must not overwrite its successor's checkpoint: every save
/// carries the lease epoch it was made under, and one older than the saved one is refused.
#[tokio::test]
async fn a_replaced_readers_checkpoint_save_is_refused() {
    use docrepl::source::{Checkpoint, CheckpointError, CheckpointStore, Position};
    let client = common::mongo(&common::source_uri()).await;
    let db = client.database(&common::unique("cpfence"));
    let store = CheckpointStore::new(&db, "scope");
    let at = |t: u32| Checkpoint { position: Position::StartAt(bson::Timestamp { time: t, increment: 1 }), event_time: None };
    store.save("d.c", &at(100), "old", 5).await.unwrap();
    // The successor took the lease over (epoch 7) and saved a newer position.
    store.save("d.c", &at(200), "new", 7).await.unwrap();
    let late = store.save("d.c", &at(150), "old", 5).await;
    assert!(matches!(late, Err(CheckpointError::Superseded { .. })), "{late:?}");
    assert!(matches!(store.clear("d.c", 5).await, Err(CheckpointError::Superseded { .. })));
    assert_eq!(store.load("d.c").await.unwrap().map(|c| c.position), Some(at(200).position), "the successor's checkpoint stands");
    // The successor itself goes on saving (same or newer epoch), and may clear.
    store.save("d.c", &at(300), "new", 8).await.unwrap();
    store.clear("d.c", 8).await.unwrap();
    assert!(store.load("d.c").await.unwrap().is_none());
    db.drop().await.unwrap();
}
