//! Many collections in one database.
//!
//! On the database's one stream (the default): 200 collections are copied a few at a
//! time, a collection created while running and one renamed into the scope arrive, and a
//! kill -9 under load across all of them loses nothing.
//!
//! On a stream per collection: every collection's reader streams, its lease holds, and a
//! write to any of them reaches the target. With one connection pool for 60 change
//! streams and their leases, waiting `getMore`s made renewals late: leases were lost over
//! and over ("lease not renewed in time") and writes took seconds. Leases and checkpoints
//! now have a pool of their own, and the streams one connection each.

mod common;

use std::time::Duration;

use bson::{doc, Document};

use common::Setup;

const COLLECTIONS: usize = 60;

#[tokio::test]
async fn sixty_collections_stream_with_their_leases_held() {
    let mut setup = Setup::new("many");
    setup.source_extra = "stream_level = \"collection\"".into();
    let config = std::fs::read_to_string(setup.config()).unwrap().replace("partitions = 8", "partitions = 1");
    let path = setup.dir.path().join("many.toml");
    std::fs::write(&path, config).unwrap();
    let source = common::mongo(&common::source_uri()).await;
    let db = source.database(&setup.db);
    for i in 0..COLLECTIONS {
        db.collection::<Document>(&format!("c{i:02}")).insert_one(doc! {"_id": "copied"}).await.unwrap();
    }
    let mut run = setup.spawn_with("run", &path, &[]);
    let target = common::mongo(&common::target_uri()).await;
    let tdb = target.database(&setup.db);
    let count_all = |id: &'static str| {
        let tdb = tdb.clone();
        async move {
            let mut n = 0;
            for i in 0..COLLECTIONS {
                n += tdb.collection::<Document>(&format!("c{i:02}")).count_documents(doc! {"_id": id}).await.unwrap_or(0);
            }
            n as usize
        }
    };
    common::eventually(Duration::from_secs(120), "every collection copied", || async { count_all("copied").await == COLLECTIONS }).await;
    for i in 0..COLLECTIONS {
        db.collection::<Document>(&format!("c{i:02}")).insert_one(doc! {"_id": "streamed"}).await.unwrap();
    }
    common::eventually(Duration::from_secs(120), "every collection's streamed insert", || async { count_all("streamed").await == COLLECTIONS }).await;
    let log = run.log_text();
    assert!(!log.contains("lease not renewed in time"), "leases were lost:\n{}", log.lines().filter(|l| l.contains("lease not renewed")).take(5).collect::<Vec<_>>().join("\n"));
    assert_eq!(run.terminate(Duration::from_secs(20)), Some(0));
}

const ON_ONE_STREAM: usize = 200;
const DOCS_EACH: i32 = 10;

async fn count_in(db: &mongodb::Database, coll: &str) -> u64 {
    db.collection::<Document>(coll).count_documents(doc! {}).await.unwrap_or(0)
}

#[tokio::test]
async fn two_hundred_collections_on_the_database_stream_survive_kill_9() {
    let mut setup = Setup::new("onestream");
    setup.source_extra = "copy_parallelism = 3".into();
    let config = std::fs::read_to_string(setup.config()).unwrap().replace("partitions = 8", "partitions = 2");
    let path = setup.dir.path().join("onestream.toml");
    std::fs::write(&path, config).unwrap();
    let source = common::mongo(&common::source_uri()).await;
    let db = source.database(&setup.db);
    let name = |i: usize| format!("c{i:03}");
    for i in 0..ON_ONE_STREAM {
        let docs: Vec<Document> = (0..DOCS_EACH).map(|n| doc! {"_id": n, "v": 0}).collect();
        db.collection::<Document>(&name(i)).insert_many(docs).await.unwrap();
    }
    let mut run = setup.spawn_with("run", &path, &[]);
    let target = common::mongo(&common::target_uri()).await;
    let tdb = target.database(&setup.db);
    common::eventually(Duration::from_secs(180), "every collection copied", || async {
        for i in 0..ON_ONE_STREAM {
            if count_in(&tdb, &name(i)).await < DOCS_EACH as u64 {
                return false;
            }
        }
        true
    })
    .await;
    let (_, status) = common::http_get(&common::status_addr(&run).await, "/status", None).await;
    assert!(status.contains("one change stream for database"), "{status}");
    let log = run.log_text();
    assert!(log.contains("initial copies before the database stream"), "{log}");

    // Created while running: every write is in the stream, no copy needed.
    db.collection::<Document>("late").insert_many((0..DOCS_EACH).map(|n| doc! {"_id": n})).await.unwrap();
    // Renamed into the scope from outside it: its documents never were events.
    let outside = source.database(&format!("{}_outside", setup.db));
    outside.collection::<Document>("kept").insert_many((0..DOCS_EACH).map(|n| doc! {"_id": n})).await.unwrap();
    source
        .database("admin")
        .run_command(doc! {"renameCollection": format!("{}_outside.kept", setup.db), "to": format!("{}.moved", setup.db)})
        .await
        .unwrap();
    common::eventually(Duration::from_secs(60), "the created and the renamed collection", || async {
        count_in(&tdb, "late").await == DOCS_EACH as u64 && count_in(&tdb, "moved").await == DOCS_EACH as u64
    })
    .await;
    let names = tdb.list_collection_names().await.unwrap();
    assert!(!names.iter().any(|n| n.ends_with(".renameCollection")), "mongod's temporary rename collection was replicated: {names:?}");

    // Load over every collection; kill -9 in the middle of it.
    let load = {
        let db = db.clone();
        tokio::spawn(async move {
            for round in 1..=30i32 {
                for i in ((round % 5) as usize..ON_ONE_STREAM).step_by(5) {
                    let coll = db.collection::<Document>(&format!("c{i:03}"));
                    coll.update_one(doc! {"_id": round % DOCS_EACH}, doc! {"$set": {"v": round}}).await.unwrap();
                    coll.insert_one(doc! {"_id": 1000 + round}).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.kill9();
    let mut run = setup.spawn_with("run", &path, &[]);
    load.await.unwrap();
    let (code, out) = common::verify(&path, 60);
    assert_eq!(code, Some(0), "target differs from the source after kill -9:\n{out}\n{}", run.log_text());
    let log = run.log_text();
    assert!(!log.contains("lease not renewed in time"), "{log}");
    assert_eq!(run.terminate(Duration::from_secs(20)), Some(0));
}

const PER_DATABASE: usize = 100;

/// 200 collections in two databases read with `databases = ["*"]`, an include pattern
/// (this test's databases only: the services are shared) and an exclude pattern, on one
/// topic per database (`kafka.topic_per = "database"`); a collection and a whole database
/// created while running arrive; verify is equal.
#[tokio::test]
async fn two_databases_with_patterns_and_late_arrivals() {
    let mut setup = Setup::new("twodbs");
    let (a, b, c) = (format!("{}_a", setup.db), format!("{}_b", setup.db), format!("{}_c", setup.db));
    setup.source_extra = format!("databases = [\"*\"]\ninclude = [\"{0}_*.*\"]\nexclude = [\"{0}_b.skip*\"]", setup.db);
    setup.kafka_extra = "topic_per = \"database\"".into();
    let config = std::fs::read_to_string(setup.config())
        .unwrap()
        .replace(&format!("database = {:?}\n", setup.db), "")
        .replace("partitions = 8", "partitions = 1");
    let path = setup.dir.path().join("twodbs.toml");
    std::fs::write(&path, config).unwrap();
    let source = common::mongo(&common::source_uri()).await;
    for db in [&a, &b] {
        for i in 0..PER_DATABASE {
            source.database(db).collection::<Document>(&format!("c{i:03}")).insert_many((0..5).map(|n| doc! {"_id": n})).await.unwrap();
        }
    }
    source.database(&b).collection::<Document>("skip_me").insert_one(doc! {"_id": 1}).await.unwrap();
    let run = setup.spawn_with("run", &path, &[]);
    let target = common::mongo(&common::target_uri()).await;
    common::eventually(Duration::from_secs(180), "both databases copied", || async {
        for db in [&a, &b] {
            for i in 0..PER_DATABASE {
                if count_in(&target.database(db), &format!("c{i:03}")).await < 5 {
                    return false;
                }
            }
        }
        true
    })
    .await;
    source.database(&a).collection::<Document>("late").insert_one(doc! {"_id": "late"}).await.unwrap();
    source.database(&c).collection::<Document>("new").insert_many((0..5).map(|n| doc! {"_id": n})).await.unwrap();
    source.database(&b).collection::<Document>("skip_later").insert_one(doc! {"_id": 1}).await.unwrap();
    common::eventually(Duration::from_secs(60), "the late collection and the new database", || async {
        count_in(&target.database(&a), "late").await == 1 && count_in(&target.database(&c), "new").await == 5
    })
    .await;
    let (code, out) = common::verify(&path, 60);
    assert_eq!(code, Some(0), "{out}\n{}", run.log_text());
    // Every collection of a database on its one topic.
    let on_topic = common::consume(&format!("{}.{a}", setup.prefix), Duration::from_secs(30), |m| m.len() > PER_DATABASE * 5).await;
    assert!(on_topic.len() > PER_DATABASE * 5, "{} messages on the database's topic", on_topic.len());
    assert!(out.contains(&format!("{c}.new")) && out.contains(&format!("{a}.c099")), "verify compares every database:\n{out}");
    let names = target.database(&b).list_collection_names().await.unwrap();
    assert!(!names.iter().any(|n| n.starts_with("skip")), "excluded collections were replicated: {names:?}");
    let (_, status) = common::http_get(&common::status_addr(&run).await, "/status", None).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    for db in [&a, &b, &c] {
        assert!(status["change_streams"][db.as_str()].as_str().is_some_and(|s| s.starts_with("one change stream for database")), "{status}");
    }
    assert_eq!(status["copies"]["collections_copying"], 0, "{}", status["copies"]);
    assert!(status["copies"]["collections_copied"].as_u64().is_some_and(|n| n >= 2 * PER_DATABASE as u64 + 1), "{}", status["copies"]);

    // kill -9 under load over both databases, on their shared topics: nothing lost.
    let load = {
        let (source, a, b) = (source.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            for round in 0..20i32 {
                for db in [&a, &b] {
                    for i in (0..PER_DATABASE).step_by(7) {
                        let coll = source.database(db).collection::<Document>(&format!("c{i:03}"));
                        coll.update_one(doc! {"_id": round % 5}, doc! {"$set": {"round": round}}).await.unwrap();
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut run = run;
    run.kill9();
    let run = setup.spawn_with("run", &path, &[]);
    load.await.unwrap();
    let (code, out) = common::verify(&path, 90);
    assert_eq!(code, Some(0), "after kill -9: {out}\n{}", run.log_text());
}
