//! Lost change-stream history: `on_history_lost = "fail"` stops with the collection
//! named, and `"recopy"` re-copies the collection, clearing documents deleted during the
//! gap through clear markers, so the target ends equal to the source.
//!
//! The source is a mongod of the test's own whose change-stream `aggregate` answers
//! ChangeStreamHistoryLost (286) through mongod's `failCommand` fail point: the mongod
//! 6.0.5 build these machines get never trims its oplog (1.7 GB written into a 990 MB
//! oplog, `fsync`, restart and `replSetResizeOplog` leave `oplogTruncation.truncateCount`
//! at 0; at storage verbosity 2 its cap maintainer logs "Oplog has excess stones" with a
//! `pinnedOplog` that stays at the first entry, or at 0 after a restart, so nothing is
//! ever old enough to drop), so history cannot be lost by writing past the oplog here.
//! The error, its handling and the writes during the gap are real.

mod common;

use std::time::Duration;

use bson::{doc, Document};

use common::{OwnMongod, Setup};

/// The next change stream opened by docrepl (app name `docrepl`) fails with
/// ChangeStreamHistoryLost, as when its resume token is older than the oplog.
async fn lose_history_once(client: &mongodb::Client) {
    client
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {"failCommands": ["aggregate"], "errorCode": 286, "appName": "docrepl"},
        })
        .await
        .expect("configureFailPoint (mongod runs with enableTestCommands=1)");
}

#[tokio::test]
async fn lost_history_stops_or_recopies_until_the_target_is_equal() {
    let source = OwnMongod::start_with(27817, vec!["--setParameter".into(), "enableTestCommands=1".into()], "").await;
    let mut setup = Setup::new("lost");
    // Not `auto`: its probe (a database stream opened at start) would take the fail point.
    setup.source_extra = "collections = [\"c\"]\nstream_level = \"database\"".into();
    let text = std::fs::read_to_string(setup.config()).unwrap().replace(&common::source_uri(), &source.uri());
    let fail = setup.dir.path().join("fail.toml");
    std::fs::write(&fail, &text).unwrap();
    let recopy = setup.dir.path().join("recopy.toml");
    std::fs::write(&recopy, text.replace("collections = [\"c\"]", "collections = [\"c\"]\non_history_lost = \"recopy\"")).unwrap();

    let client = common::mongo(&source.uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    coll.insert_many((0..200).map(|i| doc! {"_id": i, "v": 0})).await.unwrap();
    let target = common::mongo(&common::target_uri()).await.database(&setup.db).collection::<Document>("c");
    let mut run = setup.spawn_with("run", &recopy, &[]);
    common::eventually(Duration::from_secs(90), "the first copy", || async { target.count_documents(doc! {}).await.unwrap_or(0) == 200 }).await;
    coll.insert_one(doc! {"_id": 1000, "v": 0}).await.unwrap(); // streamed: the token is a resume token
    common::eventually(Duration::from_secs(60), "a streamed insert", || async { target.count_documents(doc! {}).await.unwrap_or(0) == 201 }).await;
    assert_eq!(run.terminate(Duration::from_secs(15)), Some(0), "{}", run.log_text());

    // While docrepl is stopped: deletes, updates, inserts; then the history goes.
    coll.delete_many(doc! {"_id": {"$lt": 50}}).await.unwrap();
    coll.update_many(doc! {"_id": {"$gte": 50, "$lt": 100}}, doc! {"$set": {"v": 1}}).await.unwrap();
    coll.insert_many((200..250).map(|i| doc! {"_id": i, "v": 0})).await.unwrap();

    // "fail": a clear stop naming the collection.
    lose_history_once(&client).await;
    let mut stopped = setup.spawn_with("source", &fail, &[]);
    let code = stopped.wait_exit(Duration::from_secs(90));
    let log = stopped.log_text();
    assert!(matches!(code, Some(c) if c != 0), "on_history_lost = \"fail\" must stop, got {code:?}:\n{log}");
    assert!(log.contains(&format!("change stream history lost for {}.$database", setup.db)), "the error names the database's stream:\n{log}");

    // "recopy": clear markers clear the target's documents, the copy puts back what exists.
    lose_history_once(&client).await;
    let run = setup.spawn_with("run", &recopy, &[]);
    // verify also reads the source: let the reader meet the fail point first.
    common::eventually(Duration::from_secs(60), "the reader to find its history lost", || async {
        run.log_text().contains("starting a fresh initial copy")
    })
    .await;
    let (code, out) = common::verify(&recopy, 180);
    assert_eq!(code, Some(0), "after the fresh copy the target differs from the source:\n{out}");
    assert_eq!(target.count_documents(doc! {"_id": {"$lt": 50}}).await.unwrap(), 0, "documents deleted during the gap are gone");
    assert_eq!(target.count_documents(doc! {"v": 1}).await.unwrap(), 50);
}
