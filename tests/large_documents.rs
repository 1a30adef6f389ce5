//! Large documents: a 15 MB document and its updates replicate when the topic allows
//! messages that large (MongoDB would refuse its update event with the full document and
//! the patch together; the source drops the patch on the server for such documents, or,
//! with the Amazon DocumentDB pipeline, which cannot judge sizes on the server, reads past
//! the refused event with a stream that leaves the patch out), and
//! a document over the topic's limit goes to the dead-letter topic with its `_id` and a
//! reason while the stream goes on.

mod common;

use std::time::Duration;

use bson::{doc, Document};
use rdkafka::message::{Headers, Message};

use common::{consume, Setup};

const FIFTEEN_MB: usize = 15 * 1024 * 1024;

#[tokio::test]
async fn a_15_mb_document_and_its_updates_replicate() {
    big_document_and_its_updates("mongodb").await;
}

#[tokio::test]
async fn a_15_mb_document_and_its_updates_replicate_with_the_documentdb_pipeline() {
    let log = big_document_and_its_updates("documentdb").await;
    assert!(log.contains("reopening without updateDescription"), "the 30 MB event was read past:\n{log}");
}

/// Returns the docrepl log.
async fn big_document_and_its_updates(flavor: &str) -> String {
    let mut setup = Setup::new("big");
    setup.kafka_extra = "max_message_bytes = 33554432".into();
    setup.source_extra = format!("flavor = {flavor:?}");
    let source = common::mongo(&common::source_uri()).await;
    let coll = source.database(&setup.db).collection::<Document>("c");
    coll.insert_one(doc! {"_id": "first"}).await.unwrap();
    let mut run = setup.spawn("run", &[]);
    let target = common::mongo(&common::target_uri()).await;
    let copied = target.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(60), "the first document", || async { copied.count_documents(doc! {}).await.unwrap_or(0) == 1 }).await;

    coll.insert_one(doc! {"_id": "big", "n": 0, "pad": "x".repeat(FIFTEEN_MB)}).await.unwrap();
    coll.update_one(doc! {"_id": "big"}, doc! {"$set": {"n": 1}}).await.unwrap();
    // This update's patch alone is 15 MB: patch + full document would be a 30 MB event.
    coll.update_one(doc! {"_id": "big"}, doc! {"$set": {"n": 2, "pad": "y".repeat(FIFTEEN_MB)}}).await.unwrap();
    coll.insert_one(doc! {"_id": "after"}).await.unwrap();
    common::eventually(Duration::from_secs(120), "the big document's last update and the next insert", || async {
        let big = copied.find_one(doc! {"_id": "big"}).projection(doc! {"n": 1}).await.ok().flatten();
        big.and_then(|d| d.get_i32("n").ok()) == Some(2) && copied.count_documents(doc! {"_id": "after"}).await.unwrap_or(0) == 1
    })
    .await;
    let (src, dst) = (common::documents(&source, &setup.db, "c").await, common::documents(&target, &setup.db, "c").await);
    assert!(src == dst, "the target differs from the source (sizes {:?} vs {:?})", src.iter().map(|d| d.1.len()).collect::<Vec<_>>(), dst.iter().map(|d| d.1.len()).collect::<Vec<_>>());
    assert!(!run.log_text().contains("dead-letter"), "{}", run.log_text());
    assert_eq!(run.terminate(Duration::from_secs(15)), Some(0));
    run.log_text()
}

#[tokio::test]
async fn a_document_over_the_topic_limit_is_dead_lettered_and_the_stream_goes_on() {
    let setup = Setup::new("oversize"); // kafka.max_message_bytes: 1 MiB by default
    let source = common::mongo(&common::source_uri()).await;
    let coll = source.database(&setup.db).collection::<Document>("c");
    coll.insert_one(doc! {"_id": "first"}).await.unwrap();
    let run = setup.spawn("run", &[]);
    let target = common::mongo(&common::target_uri()).await;
    let copied = target.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(60), "the first document", || async { copied.count_documents(doc! {}).await.unwrap_or(0) == 1 }).await;

    coll.insert_one(doc! {"_id": "too-big", "pad": "x".repeat(2 * 1024 * 1024)}).await.unwrap();
    coll.insert_many((0..100).map(|i| doc! {"_id": i})).await.unwrap();
    common::eventually(Duration::from_secs(60), "the documents after the oversize one", || async {
        copied.count_documents(doc! {}).await.unwrap_or(0) == 101
    })
    .await;

    let letters = consume(&setup.dead_letter_topic(), Duration::from_secs(30), |m| !m.is_empty()).await;
    let letter = letters.first().expect("a dead letter for the oversize document");
    assert!(String::from_utf8_lossy(letter.key().unwrap_or_default()).contains("too-big"), "the key names the _id");
    assert!(letter.payload().is_none(), "only key and reason, not the document");
    let reason = letter
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "docrepl.reason").and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned())))
        .expect("a reason header");
    assert!(reason.contains("too-big") && reason.contains("kafka.max_message_bytes"), "{reason}");
    assert_eq!(copied.count_documents(doc! {"_id": "too-big"}).await.unwrap(), 0);
    drop(run);
}
