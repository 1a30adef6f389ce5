//! Large documents reach the target with the default settings: an event over the topic's
//! message limit (1 MiB by default, as on MSK) travels in parts the sink joins. A 16 MB
//! document and its updates replicate (MongoDB would refuse its update event with the full
//! document and the patch together; the source drops the patch on the server for such
//! documents, or, with the Amazon DocumentDB pipeline, which cannot judge sizes on the
//! server, reads past the refused event with a stream that leaves the patch out); and a
//! topic created beforehand with a smaller `max.message.bytes` gets parts of its own size.

mod common;

use std::time::Duration;

use bson::{doc, Document};
use rdkafka::message::{Headers, Message};

use common::{consume, Setup};

/// As large as an insert's change event can carry: 16 MiB less room for the event's
/// own fields (the server's limit for a change event is the 16 MiB of a document).
const SIXTEEN_MB: usize = 16 * 1024 * 1024 - 4096;

#[tokio::test]
async fn a_16_mb_document_and_its_updates_replicate_with_the_default_message_limit() {
    big_document_and_its_updates("mongodb").await;
}

#[tokio::test]
async fn a_16_mb_document_and_its_updates_replicate_with_the_documentdb_pipeline() {
    let log = big_document_and_its_updates("documentdb").await;
    assert!(log.contains("reopening without updateDescription"), "the 32 MB event was read past:\n{log}");
}

/// Returns the docrepl log.
async fn big_document_and_its_updates(flavor: &str) -> String {
    let mut setup = Setup::new("big");
    setup.source_extra = format!("flavor = {flavor:?}");
    // The default lease (12 s), whose share for a delivery lets the local broker (sqlite
    // storage) take 16 MB events in time; the test default (6 s) makes it retry them.
    let config = std::fs::read_to_string(setup.config()).unwrap().replace("lease_ttl_ms = 6000", "lease_ttl_ms = 12000");
    let config_path = setup.dir.path().join("big.toml");
    std::fs::write(&config_path, config).unwrap();
    let source = common::mongo(&common::source_uri()).await;
    let coll = source.database(&setup.db).collection::<Document>("c");
    coll.insert_one(doc! {"_id": "first"}).await.unwrap();
    let mut run = setup.spawn_with("run", &config_path, &[]);
    let target = common::mongo(&common::target_uri()).await;
    let copied = target.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(60), "the first document", || async { copied.count_documents(doc! {}).await.unwrap_or(0) == 1 }).await;

    coll.insert_one(doc! {"_id": "big", "n": 0, "pad": "x".repeat(SIXTEEN_MB)}).await.unwrap();
    coll.update_one(doc! {"_id": "big"}, doc! {"$set": {"n": 1}}).await.unwrap();
    // This update's patch alone is 16 MB: patch + full document would be a 32 MB event.
    coll.update_one(doc! {"_id": "big"}, doc! {"$set": {"n": 2, "pad": "y".repeat(SIXTEEN_MB)}}).await.unwrap();
    // Numbers inflate most in Extended JSON (`{"$numberInt":"7"}` for 7 bytes of BSON).
    let numbers: Vec<i32> = (0..1_000_000).collect();
    coll.insert_one(doc! {"_id": "numbers", "a": numbers}).await.unwrap();
    coll.insert_one(doc! {"_id": "after"}).await.unwrap();
    common::eventually(Duration::from_secs(180), "the big document's last update and the next inserts", || async {
        let big = copied.find_one(doc! {"_id": "big"}).projection(doc! {"n": 1}).await.ok().flatten();
        big.and_then(|d| d.get_i32("n").ok()) == Some(2) && copied.count_documents(doc! {}).await.unwrap_or(0) == 4
    })
    .await;
    let (src, dst) = (common::documents(&source, &setup.db, "c").await, common::documents(&target, &setup.db, "c").await);
    assert!(src == dst, "the target differs from the source (sizes {:?} vs {:?})", src.iter().map(|d| d.1.len()).collect::<Vec<_>>(), dst.iter().map(|d| d.1.len()).collect::<Vec<_>>());
    assert!(!run.log_text().contains("dead-letter"), "{}", run.log_text());

    // Every message fits the 1 MiB default, and the parts say so in a header (the local
    // broker serves only part of the topic in the time given).
    let messages = consume(&setup.topic("c"), Duration::from_secs(20), |_| false).await;
    let largest = messages.iter().map(|m| m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len)).max().unwrap_or(0);
    assert!(largest <= 1024 * 1024, "a message of {largest} bytes");
    let parts = messages.iter().filter(|m| m.headers().is_some_and(|h| h.iter().any(|h| h.key == docrepl::parts::HEADER))).count();
    assert!(parts >= 10, "{parts} parts among {} messages", messages.len());
    assert_eq!(run.terminate(Duration::from_secs(15)), Some(0));
    run.log_text()
}

/// Inserts a 300 KB document with `_id` `id` into the source's `c`, starts `docrepl run`
/// and waits up to `within` for the copy on the target: the source and target `c`, and
/// the process.
async fn run_with_a_300_kb_document(
    setup: &Setup,
    id: &str,
    within: Duration,
) -> (mongodb::Collection<Document>, mongodb::Collection<Document>, common::Proc) {
    let source = common::mongo(&common::source_uri()).await;
    let coll = source.database(&setup.db).collection::<Document>("c");
    coll.insert_one(doc! {"_id": id, "pad": "p".repeat(300_000)}).await.unwrap();
    let run = setup.spawn("run", &[]);
    let target = common::mongo(&common::target_uri()).await;
    let copied = target.database(&setup.db).collection::<Document>("c");
    common::eventually(within, "the copied document", || async { copied.count_documents(doc! {}).await.unwrap_or(0) == 1 }).await;
    (coll, copied, run)
}

/// A topic that already exists with a `max.message.bytes` below `kafka.max_message_bytes`
/// used to make the broker refuse every large event, and the reader re-produced from its
/// token forever. The reader reads the topic's limit and sends parts that fit it.
#[tokio::test]
async fn a_topic_with_a_smaller_limit_gets_parts_of_its_size() {
    let setup = Setup::new("smalltopic");
    let admin = docrepl::kafka::admin::TopicAdmin::new(&common::kafka_config(&setup.prefix, 8)).unwrap();
    admin.ensure_topic(&setup.topic("c"), 8, 1, &[("max.message.bytes", "65536".to_string())]).await.unwrap();
    let (coll, copied, mut run) = run_with_a_300_kb_document(&setup, "first", Duration::from_secs(60)).await;
    coll.update_one(doc! {"_id": "first"}, doc! {"$set": {"n": 1}}).await.unwrap();
    common::eventually(Duration::from_secs(60), "its update", || async { copied.count_documents(doc! {"n": 1}).await.unwrap_or(0) == 1 }).await;

    let messages = consume(&setup.topic("c"), Duration::from_secs(20), |m| m.len() >= 20).await;
    let largest = messages.iter().map(|m| m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len)).max().unwrap_or(0);
    assert!(largest <= 65_536, "a message of {largest} bytes on a topic that takes 65536");
    assert!(messages.len() >= 10, "{} messages", messages.len());
    assert!(run.log_text().contains("larger events are sent in parts"), "{}", run.log_text());
    assert_eq!(run.terminate(Duration::from_secs(15)), Some(0));
}

/// A broker that refuses a message as too large (here librdkafka's own limit, set below
/// `kafka.max_message_bytes` through `kafka.properties`, which answers as a broker would)
/// used to make the reader re-produce from its token forever. The reader halves its limit
/// at each refusal and resends from its saved position; the document arrives in parts.
#[tokio::test]
async fn a_broker_refusing_messages_as_too_large_gets_smaller_parts() {
    let mut setup = Setup::new("refused");
    setup.kafka_extra = r#"properties = { "message.max.bytes" = "65536" }"#.into();
    let (coll, copied, mut run) = run_with_a_300_kb_document(&setup, "big", Duration::from_secs(90)).await;
    coll.insert_one(doc! {"_id": "after"}).await.unwrap();
    common::eventually(Duration::from_secs(60), "the next insert", || async { copied.count_documents(doc! {}).await.unwrap_or(0) == 2 }).await;
    let (source, target) = (common::mongo(&common::source_uri()).await, common::mongo(&common::target_uri()).await);
    assert_eq!(common::documents(&source, &setup.db, "c").await, common::documents(&target, &setup.db, "c").await);
    assert!(run.log_text().contains("refused a message as too large"), "{}", run.log_text());
    assert_eq!(run.terminate(Duration::from_secs(15)), Some(0));
}
