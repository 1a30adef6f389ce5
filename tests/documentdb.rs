//! Amazon DocumentDB's answers, reproduced on a real mongod: each test's source is a mongod
//! of its own (`enableTestCommands=1`) whose `failCommand` fail point makes docrepl's
//! change-stream `aggregate` fail with the code DocumentDB would send, and docrepl runs
//! with `source.flavor = "documentdb"` (or `mongodb` for the pipeline fallback).
//!
//! - 136 on the first open and again on a fresh stream: change streams not enabled for the
//!   collection; fatal, names the `modifyChangeStreams` command, never a recopy loop;
//! - 136 once, on a stream from a saved token: lost history (`on_history_lost` applies);
//! - 136 once, on the first open right after a copy: the copy outran the history (fatal
//!   even with `recopy`);
//! - 9 "Invalid resume token": lost history;
//! - an unsupported stage on the first open, then success: the DocumentDB pipeline form.
//!
//! The fail point's message is mongod's own ("Failing command via 'failCommand'
//! failpoint"), so these cases are told apart by code and by probing, as on DocumentDB.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use bson::{doc, Document};

use common::{OwnMongod, Setup};

/// The next `times` aggregate commands from docrepl fail with `code`.
async fn fail_aggregates(client: &mongodb::Client, code: i32, times: i32) {
    client
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": times},
            "data": {"failCommands": ["aggregate"], "errorCode": code, "appName": "docrepl"},
        })
        .await
        .expect("configureFailPoint (mongod runs with enableTestCommands=1)");
}

async fn own_source(port: u16) -> OwnMongod {
    OwnMongod::start_with(port, vec!["--setParameter".into(), "enableTestCommands=1".into()], "").await
}

/// A config reading collection `c` from `source`, with extra `[source]` lines. The
/// database's stream unless `extra` says otherwise: `auto` would first open (probe) a
/// database stream, which would take the fail point's first answer.
fn config(setup: &mut Setup, source: &OwnMongod, extra: &str) -> PathBuf {
    let level = if extra.contains("stream_level") { "" } else { "stream_level = \"database\"\n" };
    setup.source_extra = format!("collections = [\"c\"]\n{level}{extra}");
    let text = std::fs::read_to_string(setup.config()).unwrap().replace(&common::source_uri(), &source.uri());
    let path = setup.dir.path().join(format!("{}.toml", common::unique("cfg")));
    std::fs::write(&path, text).unwrap();
    path
}

async fn target_count(setup: &Setup) -> u64 {
    let target = common::mongo(&common::target_uri()).await;
    target.database(&setup.db).collection::<Document>("c").count_documents(doc! {}).await.unwrap_or(0)
}

/// Runs `docrepl <command>` over a source with 50 documents in `c` whose next `times`
/// change-stream aggregates fail with `code`; waits for it to stop and returns its log.
async fn run_until_it_stops(setup: &mut Setup, source: &OwnMongod, extra: &str, code: i32, times: i32, command: &str) -> String {
    let cfg = config(setup, source, extra);
    let client = common::mongo(&source.uri()).await;
    client.database(&setup.db).collection::<Document>("c").insert_many((0..50).map(|i| doc! {"_id": i})).await.unwrap();
    fail_aggregates(&client, code, times).await;
    let mut proc_ = setup.spawn_with(command, &cfg, &[]);
    let exit = proc_.wait_exit(Duration::from_secs(90));
    let log = proc_.log_text();
    assert!(matches!(exit, Some(c) if c != 0), "must stop, got {exit:?}:\n{log}");
    log
}

#[tokio::test]
async fn change_streams_not_enabled_stop_with_the_command_to_run() {
    let source = own_source(27831).await;
    for (level, ns, coll) in [("database", "$database", ""), ("collection", "c", "c")] {
        let mut setup = Setup::new("notenabled");
        let extra = format!("flavor = \"documentdb\"\non_history_lost = \"recopy\"\nstream_level = \"{level}\"");
        // The stream's open and the fresh probe stream both answer 136.
        let log = run_until_it_stops(&mut setup, &source, &extra, 136, 2, "source").await;
        assert!(log.contains(&format!("change streams are not enabled for {}.{ns}", setup.db)), "{level}: {log}");
        assert!(
            log.contains(&format!("modifyChangeStreams: 1, database: \\\"{}\\\", collection: \\\"{coll}\\\", enable: true", setup.db))
                || log.contains(&format!("modifyChangeStreams: 1, database: \"{}\", collection: \"{coll}\", enable: true", setup.db)),
            "{level}: the message gives the command to run:\n{log}"
        );
        assert!(!log.contains("starting a fresh initial copy") && !log.contains("clear markers"), "{level}: no recopy loop:\n{log}");
    }
}

/// `auto` opens a database stream first; refused (DocumentDB before `modifyChangeStreams`
/// for the database), it reads each collection's own stream and says so on `/status`.
#[tokio::test]
async fn a_refused_database_stream_falls_back_to_collection_streams() {
    let source = own_source(27835).await;
    let mut setup = Setup::new("dbrefused");
    let cfg = config(&mut setup, &source, "flavor = \"documentdb\"\nstream_level = \"auto\"");
    let client = common::mongo(&source.uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    coll.insert_many((0..50).map(|i| doc! {"_id": i})).await.unwrap();
    fail_aggregates(&client, 136, 1).await;
    let run = setup.spawn_with("run", &cfg, &[]);
    common::eventually(Duration::from_secs(90), "the copy", || async { target_count(&setup).await == 50 }).await;
    coll.insert_one(doc! {"_id": 100}).await.unwrap();
    common::eventually(Duration::from_secs(60), "a streamed insert", || async { target_count(&setup).await == 51 }).await;
    let (_, body) = common::http_get(&common::status_addr(&run).await, "/status", None).await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(status["change_streams"][setup.db.as_str()].as_str().is_some_and(|s| s.starts_with("one change stream per collection")), "{status}");
    assert!(run.log_text().contains("reading one change stream per collection instead"), "{}", run.log_text());
}

#[tokio::test]
async fn a_copy_that_outran_the_history_is_fatal_not_a_recopy_loop() {
    let source = own_source(27832).await;
    let mut setup = Setup::new("outran");
    // Only the stream after the copy fails; a fresh stream opens (history lost, not "not enabled").
    let log = run_until_it_stops(&mut setup, &source, "flavor = \"documentdb\"\non_history_lost = \"recopy\"", 136, 1, "run").await;
    assert!(log.contains(&format!("the initial copy of {}.c outran the source's change stream history", setup.db)) || log.contains(&format!("the initial copy of {}.$database outran", setup.db)), "{log}");
    assert!(log.contains("change_stream_log_retention_duration"), "says what to raise:\n{log}");
    assert!(!log.contains("starting a fresh initial copy"), "no recopy:\n{log}");
}

/// Copies and streams once (so a resume token is saved), stops; returns the source client.
async fn stream_once(setup: &Setup, cfg: &PathBuf, source: &OwnMongod) -> mongodb::Client {
    let client = common::mongo(&source.uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    coll.insert_many((0..50).map(|i| doc! {"_id": i})).await.unwrap();
    let mut run = setup.spawn_with("run", cfg, &[]);
    common::eventually(Duration::from_secs(90), "the copy", || async { target_count(setup).await == 50 }).await;
    coll.insert_one(doc! {"_id": 100}).await.unwrap();
    common::eventually(Duration::from_secs(60), "a streamed insert", || async { target_count(setup).await == 51 }).await;
    assert_eq!(run.terminate(Duration::from_secs(15)), Some(0), "{}", run.log_text());
    client
}

#[tokio::test]
async fn lost_history_136_and_an_invalid_token_9_follow_on_history_lost() {
    let source = own_source(27833).await;
    let mut setup = Setup::new("lost136");
    let fail = config(&mut setup, &source, "flavor = \"documentdb\"");
    let recopy = config(&mut setup, &source, "flavor = \"documentdb\"\non_history_lost = \"recopy\"");
    let client = stream_once(&setup, &recopy, &source).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    coll.delete_many(doc! {"_id": {"$lt": 10}}).await.unwrap();

    for code in [136, 9] {
        fail_aggregates(&client, code, 1).await;
        let mut stopped = setup.spawn_with("source", &fail, &[]);
        let exit = stopped.wait_exit(Duration::from_secs(90));
        let log = stopped.log_text();
        assert!(matches!(exit, Some(c) if c != 0), "code {code}: on_history_lost = \"fail\" must stop, got {exit:?}:\n{log}");
        assert!(log.contains(&format!("change stream history lost for {}.$database", setup.db)), "code {code}:\n{log}");
        assert!(!log.contains("not enabled"), "code {code}: a lost history, not a disabled stream:\n{log}");
    }

    // "recopy": the fresh copy's first open succeeds, so it is no loop; the target ends equal.
    fail_aggregates(&client, 9, 1).await;
    let run = setup.spawn_with("run", &recopy, &[]);
    common::eventually(Duration::from_secs(60), "the reader to find its history lost", || async {
        run.log_text().contains("starting a fresh initial copy")
    })
    .await;
    let (code, out) = common::verify(&recopy, 180);
    assert_eq!(code, Some(0), "after the fresh copy the target differs:\n{out}\n{}", run.log_text());
    assert_eq!(target_count(&setup).await, 41);
    assert_eq!(run.log_text().matches("starting a fresh initial copy").count(), 1, "{}", run.log_text());
}

#[tokio::test]
async fn an_unsupported_stage_falls_back_to_the_documentdb_pipeline() {
    let source = own_source(27834).await;
    let mut setup = Setup::new("fallback");
    let cfg = config(&mut setup, &source, "flavor = \"mongodb\"");
    let client = common::mongo(&source.uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    coll.insert_many((0..50).map(|i| doc! {"_id": i})).await.unwrap();
    // 40324: "Unrecognized pipeline stage name", as a server without `$set` answers.
    fail_aggregates(&client, 40324, 1).await;
    let run = setup.spawn_with("run", &cfg, &[]);
    common::eventually(Duration::from_secs(90), "the copy", || async { target_count(&setup).await == 50 }).await;
    coll.insert_one(doc! {"_id": 100}).await.unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 1}}).await.unwrap();
    let (code, out) = common::verify(&cfg, 120);
    assert_eq!(code, Some(0), "{out}\n{}", run.log_text());
    let log = run.log_text();
    assert_eq!(log.matches("refused the preferred change-stream pipeline").count(), 1, "logged once:\n{log}");
    let addr = common::status_addr(&run).await;
    let (_, body) = common::http_get(&addr, "/status", None).await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(status["change_stream_pipeline"].as_str().is_some_and(|p| p.starts_with("documentdb")), "{status}");
    assert_eq!(status["flavors"]["source"], "mongodb", "{status}");
}

/// An interrupted copy resumes after its last `_id` across BSON types, with the query used
/// on both flavours (`$gt` within the type, `$type` for the types after it).
#[tokio::test]
async fn the_copy_resume_query_finds_every_later_id_across_types() {
    use docrepl::flavor::Flavor;
    use futures::TryStreamExt;
    let client = common::mongo(&common::source_uri()).await;
    let coll = client.database(&common::unique("resume")).collection::<Document>("c");
    let ids = vec![
        bson::Bson::MinKey,
        bson::Bson::Null,
        bson::Bson::Int32(1),
        bson::Bson::Int64(2),
        bson::Bson::Double(2.5),
        bson::Bson::String("a".into()),
        bson::Bson::Document(doc! {"x": 1}),
        bson::Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1] }),
        bson::Bson::ObjectId(bson::oid::ObjectId::new()),
        bson::Bson::Boolean(false),
        bson::Bson::DateTime(bson::DateTime::from_millis(-5)),
        bson::Bson::Timestamp(bson::Timestamp { time: 1, increment: 1 }),
        bson::Bson::MaxKey,
    ];
    coll.insert_many(ids.iter().map(|id| doc! {"_id": id.clone()})).await.unwrap();
    for flavor in [Flavor::MongoDb, Flavor::DocumentDb] {
        for (i, after) in ids.iter().enumerate() {
            let found: Vec<Document> = coll
                .find(docrepl::source::copy_resume::after_id(after, flavor))
                .sort(doc! {"_id": 1})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            let found: Vec<bson::Bson> = found.into_iter().map(|d| d.get("_id").cloned().unwrap()).collect();
            assert_eq!(found, ids[i + 1..].to_vec(), "{flavor:?} after {after:?}");
        }
    }
}

/// `verify`'s merge walks both sides in the server's `_id` order, so its comparison must
/// rank BSON types exactly as mongod sorts them (issue #35 item 1: it ranked `undefined`
/// with `null`, which mongod sorts before it). Sorted on a plain field, since `_id` cannot
/// hold `undefined`.
#[tokio::test]
async fn verify_orders_bson_types_as_mongod_sorts_them() {
    use futures::TryStreamExt;
    let client = common::mongo(&common::source_uri()).await;
    let coll = client.database(&common::unique("order")).collection::<Document>("c");
    let values = vec![
        bson::Bson::MaxKey,
        bson::Bson::JavaScriptCodeWithScope(bson::JavaScriptCodeWithScope { code: "x".into(), scope: doc! {"a": 1} }),
        bson::Bson::JavaScriptCode("f()".into()),
        bson::Bson::RegularExpression(bson::Regex { pattern: "a".into(), options: "i".into() }),
        bson::Bson::Timestamp(bson::Timestamp { time: 1, increment: 1 }),
        bson::Bson::DateTime(bson::DateTime::from_millis(-5)),
        bson::Bson::Boolean(true),
        bson::Bson::Boolean(false),
        bson::Bson::ObjectId(bson::oid::ObjectId::new()),
        bson::Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1] }),
        bson::Bson::Document(doc! {"x": 1}),
        bson::Bson::Symbol("b".into()),
        bson::Bson::String("a".into()),
        bson::Bson::Double(2.5),
        bson::Bson::Int64(2),
        bson::Bson::Int32(1),
        bson::Bson::Null,
        bson::Bson::Undefined,
        bson::Bson::MinKey,
    ];
    coll.insert_many(values.iter().enumerate().map(|(i, v)| doc! {"_id": i as i32, "v": v.clone()})).await.unwrap();
    let sorted: Vec<Document> = coll.find(doc! {}).sort(doc! {"v": 1, "_id": 1}).await.unwrap().try_collect().await.unwrap();
    let sorted: Vec<bson::Bson> = sorted.into_iter().map(|d| d.get("v").cloned().unwrap()).collect();
    assert_eq!(sorted.len(), values.len());
    for pair in sorted.windows(2) {
        assert_eq!(
            docrepl::bson_order::compare(&pair[0], &pair[1]),
            std::cmp::Ordering::Less,
            "mongod sorts {:?} before {:?} (its whole order: {sorted:?})",
            pair[0],
            pair[1]
        );
    }
}
