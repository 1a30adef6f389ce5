//! Collection metadata follows the source: options (validator, collation, capped,
//! clustered), every index kind and views are on the target after the initial copy; an
//! index created, an index dropped and a `collMod` while streaming reach it (through the
//! change stream's metadata events, and through the periodic listing alone); `docrepl
//! cutover` says "not ready" while the sink lags and "ready" on a quiet source, with the
//! unique and TTL indexes made final; `verify` reports an index drift made by hand; a
//! time-series collection in scope stops the source with what to do.

mod common;

use std::process::Command;
use std::time::Duration;

use bson::{doc, Bson, Document};
use docrepl::event::Namespace;
use docrepl::metadata::{catalog, plan, CollectionMetadata};

use common::Setup;

/// A source database with every index kind and the options the target must carry.
async fn build_source(source: &mongodb::Client, db: &str) {
    let d = source.database(db);
    d.run_command(doc! {"create": "orders", "validator": {"$jsonSchema": {"bsonType": "object", "required": ["a"]}}, "validationLevel": "moderate", "validationAction": "error"})
        .await
        .unwrap();
    let indexes = vec![
        doc! {"key": {"a": 1, "b": -1}, "name": "a_b"},
        doc! {"key": {"email": 1}, "name": "email_1", "unique": true},
        doc! {"key": {"c": 1}, "name": "c_partial", "partialFilterExpression": {"c": {"$gt": 5}}},
        doc! {"key": {"d": 1}, "name": "d_sparse", "sparse": true},
        doc! {"key": {"at": 1}, "name": "at_ttl", "expireAfterSeconds": 2_000_000_000},
        doc! {"key": {"body": "text"}, "name": "body_text", "weights": {"body": 3}, "default_language": "english"},
        doc! {"key": {"loc": "2dsphere"}, "name": "loc_geo"},
        doc! {"key": {"attrs.$**": 1}, "name": "attrs_wildcard"},
        doc! {"key": {"h": "hashed"}, "name": "h_hashed"},
        doc! {"key": {"e": 1}, "name": "e_hidden", "hidden": true},
        doc! {"key": {"f": 1}, "name": "f_collated", "collation": {"locale": "en", "strength": 1}},
    ];
    d.run_command(doc! {"createIndexes": "orders", "indexes": indexes}).await.unwrap();
    d.run_command(doc! {"create": "people", "collation": {"locale": "fr", "strength": 2}}).await.unwrap();
    d.run_command(doc! {"createIndexes": "people", "indexes": [{"key": {"name": 1}, "name": "name_1"}]}).await.unwrap();
    d.run_command(doc! {"create": "log", "capped": true, "size": 1_048_576, "max": 1000}).await.unwrap();
    d.run_command(doc! {"create": "events", "clusteredIndex": {"key": {"_id": 1}, "unique": true}, "expireAfterSeconds": 1_000_000_000i64}).await.unwrap();
    d.run_command(doc! {"create": "big_orders", "viewOn": "orders", "pipeline": [{"$match": {"a": {"$gt": 10}}}]}).await.unwrap();
    let orders = d.collection::<Document>("orders");
    for i in 0..200 {
        orders
            .insert_one(doc! {"_id": i, "a": i, "b": i % 7, "email": format!("u{i}@x"), "c": i % 10, "at": bson::DateTime::now(), "body": "a quiet sentence", "loc": {"type": "Point", "coordinates": [f64::from(i % 90), 1.0]}, "attrs": {"k": i}, "h": i, "e": i, "f": "x"})
            .await
            .unwrap();
    }
    d.collection::<Document>("people").insert_many((0..50).map(|i| doc! {"_id": i, "name": format!("Élodie {i}")})).await.unwrap();
    d.collection::<Document>("log").insert_many((0..50).map(|i| doc! {"_id": i, "line": i})).await.unwrap();
    let start = bson::DateTime::now().timestamp_millis();
    d.collection::<Document>("events").insert_many((0..50).map(|i| doc! {"_id": bson::DateTime::from_millis(start + i), "n": i})).await.unwrap();
}

const NAMESPACES: [&str; 5] = ["orders", "people", "log", "events", "big_orders"];

/// Each namespace's drift on the target (`finalised`: only the source's exact form counts).
async fn drift(source: &mongodb::Client, target: &mongodb::Client, db: &str, finalised: bool) -> Vec<String> {
    try_drift(source, target, db, finalised).await.unwrap()
}

async fn try_drift(source: &mongodb::Client, target: &mongodb::Client, db: &str, finalised: bool) -> mongodb::error::Result<Vec<String>> {
    let mut out = Vec::new();
    for coll in NAMESPACES {
        let s = catalog::read_one(source, db, coll, true).await?.expect("source namespace");
        let t = catalog::read_one(target, db, coll, true).await?;
        out.extend(plan::drift(&s, t.as_ref(), finalised).into_iter().map(|d| format!("{coll}: {d}")));
    }
    Ok(out)
}

async fn target_index(target: &mongodb::Client, db: &str, coll: &str, name: &str) -> Option<Document> {
    // A busy machine may stall a listing now and then (the driver's pool cleared by a
    // monitor timeout): asked again, a few times.
    let mut attempt = 0;
    let meta: CollectionMetadata = loop {
        match catalog::read_one(target, db, coll, true).await {
            Ok(found) => break found?,
            Err(e) if attempt < 10 => {
                attempt += 1;
                eprintln!("listing {db}.{coll} on the target failed, asking again: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("listing {db}.{coll} on the target: {e}"),
        }
    };
    meta.index(name).cloned()
}

async fn wait_for_no_drift(source: &mongodb::Client, target: &mongodb::Client, db: &str, what: &str) {
    let mut last = Vec::new();
    for _ in 0..300 {
        // A busy machine may stall a listing now and then: asked again.
        match try_drift(source, target, db, false).await {
            Ok(found) if found.is_empty() => return,
            Ok(found) => last = found,
            Err(e) => last = vec![e.to_string()],
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: the target's metadata still differs after 60 s: {last:#?}");
}

fn cutover(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_docrepl")).arg("cutover").arg("--config").arg(config).args(args).output().expect("run docrepl cutover");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn options_indexes_and_views_follow_the_source_through_streaming_and_cutover() {
    let mut setup = Setup::new("meta");
    // Only the change stream's metadata events can bring the changes below in time; the
    // heartbeats of an idle source must not keep cutover from seeing it quiet.
    setup.source_extra = "heartbeat_ms = 500\n[source.metadata]\npoll_secs = 3600".into();
    let source = common::mongo(&common::source_uri()).await;
    let target = common::mongo(&common::target_uri()).await;
    build_source(&source, &setup.db).await;
    let mut src = setup.spawn("source", &[]);
    let mut sink = setup.spawn("sink", &[]);
    wait_for_no_drift(&source, &target, &setup.db, "after the initial copy").await;

    // The rule while replicating: unique built non-unique, TTL without its expiry.
    let email = target_index(&target, &setup.db, "orders", "email_1").await.expect("email_1 on the target");
    assert!(!email.get_bool("unique").unwrap_or(false), "{email}");
    let ttl = target_index(&target, &setup.db, "orders", "at_ttl").await.expect("at_ttl on the target");
    assert!(ttl.get("expireAfterSeconds").is_none(), "{ttl}");
    let events = catalog::read_one(&target, &setup.db, "events", false).await.unwrap().unwrap();
    assert!(events.options.get("clusteredIndex").is_some() && events.options.get("expireAfterSeconds").is_none(), "{:?}", events.options);
    let log = catalog::read_one(&target, &setup.db, "log", false).await.unwrap().unwrap();
    assert_eq!((log.options.get_bool("capped"), log.options.get("max")), (Ok(true), Some(&Bson::Int32(1000))), "{:?}", log.options);
    let (code, out) = common::verify(&setup.config(), 60);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("metadata: EQUAL (5 namespaces"), "{out}");

    // While streaming: an index created, one dropped, options and a hidden index changed.
    let d = source.database(&setup.db);
    d.run_command(doc! {"createIndexes": "orders", "indexes": [{"key": {"g": 1, "a": 1}, "name": "g_a"}]}).await.unwrap();
    d.run_command(doc! {"dropIndexes": "orders", "index": "d_sparse"}).await.unwrap();
    d.run_command(doc! {"collMod": "orders", "validator": {"a": {"$type": "int"}}, "validationLevel": "strict"}).await.unwrap();
    d.run_command(doc! {"collMod": "orders", "index": {"name": "e_hidden", "hidden": false}}).await.unwrap();
    d.run_command(doc! {"collMod": "big_orders", "viewOn": "orders", "pipeline": [{"$match": {"a": {"$gt": 100}}}]}).await.unwrap();
    d.run_command(doc! {"create": "late", "collation": {"locale": "de"}}).await.unwrap();
    d.collection::<Document>("late").insert_one(doc! {"_id": 1, "s": "ä"}).await.unwrap();
    wait_for_no_drift(&source, &target, &setup.db, "after index and option changes on the event path").await;
    assert!(target_index(&target, &setup.db, "orders", "g_a").await.is_some());
    assert!(target_index(&target, &setup.db, "orders", "d_sparse").await.is_none());
    common::eventually(Duration::from_secs(60), "the late collection, created with its collation before its document", || async {
        let late = catalog::read_one(&target, &setup.db, "late", false).await.unwrap();
        late.is_some_and(|l| l.options.get_document("collation").is_ok_and(|c| c.get_str("locale") == Ok("de")))
    })
    .await;

    // A document the source's new validator would refuse is still replicated as the
    // source holds it (moderate validation let it through there).
    d.run_command(doc! {"collMod": "orders", "validationLevel": "off"}).await.unwrap();
    d.collection::<Document>("orders").insert_one(doc! {"_id": 1000, "a": "not an int"}).await.unwrap();
    d.run_command(doc! {"collMod": "orders", "validationLevel": "strict"}).await.unwrap();
    // Both applied before the hand-made drift below (verify then reads at once, so
    // anything still on its way would be reported with it).
    wait_for_no_drift(&source, &target, &setup.db, "after validationLevel off and strict again").await;
    common::eventually(Duration::from_secs(60), "the document the validator would refuse, on the target", || async {
        target.database(&setup.db).collection::<Document>("orders").find_one(doc! {"_id": 1000}).await.ok().flatten().is_some()
    })
    .await;

    // Drift made by hand on the target: verify names it and exits 1.
    target.database(&setup.db).run_command(doc! {"dropIndexes": "orders", "index": "h_hashed"}).await.unwrap();
    let (code, out) = common::verify(&setup.config(), 0);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("orders: METADATA DRIFT") && out.contains("index h_hashed is missing on the target"), "{out}");
    target.database(&setup.db).run_command(doc! {"createIndexes": "orders", "indexes": [{"key": {"h": "hashed"}, "name": "h_hashed"}]}).await.unwrap();

    // The sink stopped while the source writes: not ready, and why.
    assert!(sink.terminate(Duration::from_secs(20)).is_some());
    d.collection::<Document>("orders").insert_many((2000..2100).map(|i| doc! {"_id": i, "a": i, "email": format!("late{i}@x")})).await.unwrap();
    let (code, out) = cutover(&setup.config(), &["--quiet-secs", "2", "--timeout-secs", "15"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("NOT READY") && out.contains("has not applied"), "{out}");
    assert!(!target_index(&target, &setup.db, "orders", "email_1").await.unwrap().get_bool("unique").unwrap_or(false), "not finalised while not ready");

    // The sink back, the source quiet: ready, with unique and TTL final.
    let mut sink = setup.spawn("sink", &[]);
    let (code, out) = cutover(&setup.config(), &["--quiet-secs", "3", "--timeout-secs", "90"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("READY TO SWITCH"), "{out}");
    eprintln!("{out}");
    assert_eq!(target_index(&target, &setup.db, "orders", "email_1").await.unwrap().get_bool("unique"), Ok(true));
    let ttl = target_index(&target, &setup.db, "orders", "at_ttl").await.unwrap();
    assert!(ttl.get("expireAfterSeconds").is_some(), "{ttl}");
    let remaining = drift(&source, &target, &setup.db, true).await;
    assert!(remaining.is_empty(), "after cutover the target carries the source's exact metadata: {remaining:#?}");
    // Streaming on after cutover does not turn the final indexes back.
    d.run_command(doc! {"createIndexes": "orders", "indexes": [{"key": {"z": 1}, "name": "z_1"}]}).await.unwrap();
    common::eventually(Duration::from_secs(60), "z_1 on the target", || async { target_index(&target, &setup.db, "orders", "z_1").await.is_some() }).await;
    assert_eq!(target_index(&target, &setup.db, "orders", "email_1").await.unwrap().get_bool("unique"), Ok(true));

    // The source region gone (the sink still runs, applying what reached Kafka): the
    // target against the metadata the sink recorded.
    assert!(src.terminate(Duration::from_secs(20)).is_some());
    let (code, out) = cutover(&setup.config(), &["--source-down", "--check-only", "--quiet-secs", "2", "--timeout-secs", "60"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("metadata checked against the sink's record") && out.contains("READY TO SWITCH"), "{out}");
    assert!(sink.terminate(Duration::from_secs(20)).is_some());
}

#[tokio::test]
async fn index_and_option_changes_reach_the_target_through_the_listing_alone() {
    let mut setup = Setup::new("metapoll");
    setup.source_extra = "[source.metadata]\nevents = \"off\"\npoll_secs = 1".into();
    let source = common::mongo(&common::source_uri()).await;
    let target = common::mongo(&common::target_uri()).await;
    let d = source.database(&setup.db);
    d.run_command(doc! {"create": "c"}).await.unwrap();
    d.run_command(doc! {"createIndexes": "c", "indexes": [{"key": {"x": 1}, "name": "x_1"}, {"key": {"y": 1}, "name": "y_1", "unique": true}]}).await.unwrap();
    d.collection::<Document>("c").insert_many((0..20).map(|i| doc! {"_id": i, "x": i, "y": i})).await.unwrap();
    let _run = setup.spawn("run", &[]);
    let ns = Namespace::new(&setup.db, "c");
    let same = |finalised: bool| {
        let (source, target, ns) = (source.clone(), target.clone(), ns.clone());
        async move {
            let s = catalog::read_one(&source, &ns.db, &ns.coll, true).await.unwrap().unwrap();
            let t = catalog::read_one(&target, &ns.db, &ns.coll, true).await.unwrap();
            plan::drift(&s, t.as_ref(), finalised).is_empty()
        }
    };
    common::eventually(Duration::from_secs(60), "the copy's metadata", || same(false)).await;
    d.run_command(doc! {"createIndexes": "c", "indexes": [{"key": {"w": -1}, "name": "w_-1", "sparse": true}]}).await.unwrap();
    d.run_command(doc! {"dropIndexes": "c", "index": "x_1"}).await.unwrap();
    d.run_command(doc! {"collMod": "c", "validator": {"x": {"$exists": true}}, "validationAction": "warn"}).await.unwrap();
    common::eventually(Duration::from_secs(60), "index and option changes found by the listing", || same(false)).await;
    let t = catalog::read_one(&target, &setup.db, "c", true).await.unwrap().unwrap();
    assert!(t.index("w_-1").is_some() && t.index("x_1").is_none(), "{:?}", t.indexes);
    assert_eq!(t.options.get_str("validationAction"), Ok("warn"));
}

#[tokio::test]
async fn a_time_series_collection_in_scope_is_refused_loudly() {
    let setup = Setup::new("metats");
    let source = common::mongo(&common::source_uri()).await;
    let d = source.database(&setup.db);
    d.run_command(doc! {"create": "plain"}).await.unwrap();
    d.run_command(doc! {"create": "weather", "timeseries": {"timeField": "at", "metaField": "station"}}).await.unwrap();
    d.collection::<Document>("weather").insert_one(doc! {"at": bson::DateTime::now(), "station": 1, "t": 20.5}).await.unwrap();
    let mut src = setup.spawn("source", &[]);
    let code = src.wait_exit(Duration::from_secs(60));
    let log = src.log_text();
    assert!(code.is_some_and(|c| c != 0), "the source must stop, got {code:?}:\n{log}");
    let ns = format!("{}.weather", setup.db);
    assert!(log.contains(&format!("{ns} is a time-series collection and cannot be replicated")) && log.contains("source.exclude"), "{log}");
}
