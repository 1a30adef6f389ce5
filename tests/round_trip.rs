//! The round trip against the real mongods and broker: `cutover`, `reverse`, and back,
//! planned (no document copied in either new direction) and unplanned (the old source
//! killed mid-load, `repair` bringing it level and keeping what only it had), and the
//! direction lock refusing the opposite direction while one runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bson::{doc, Bson, Document};
use futures::TryStreamExt;

use common::Setup;

/// `docrepl <command> --config <config> [args]`, run to its end: (exit code, output).
fn docrepl(command: &str, config: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_docrepl"))
        .arg(command)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run docrepl");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn expect_ok(command: &str, config: &Path, args: &[&str]) -> String {
    let (code, out) = docrepl(command, config, args);
    assert_eq!(code, Some(0), "docrepl {command} {args:?} failed:\n{out}");
    out
}

fn verify_equal(config: &Path, what: &str) {
    let (code, out) = docrepl("verify", config, &["--documents-only", "--wait-for-quiet", "120"]);
    assert_eq!(code, Some(0), "{what}: not equal:\n{out}");
}

/// The document events (not heartbeats, metadata or tombstones) on `topic`, read until
/// `at_least` have come or 30 s pass; their `op`s.
async fn ops_on(topic: &str, at_least: usize) -> Vec<String> {
    use rdkafka::Message;
    let messages = common::consume(topic, Duration::from_secs(30), |m| m.iter().filter(|m| m.payload().is_some()).count() >= at_least).await;
    messages
        .iter()
        .filter_map(|m| m.payload())
        .map(|p| {
            let v: serde_json::Value = serde_json::from_slice(p).expect("a JSON event");
            let payload = v.get("payload").unwrap_or(&v);
            payload.get("op").and_then(|o| o.as_str()).unwrap_or("?").to_string()
        })
        .collect()
}

fn with_regions(setup: &Setup) -> PathBuf {
    let path = setup.config();
    let text = std::fs::read_to_string(&path).unwrap() + "\n[pair]\nsource_region = \"a\"\ntarget_region = \"b\"\n";
    let out = setup.dir.path().join("a-to-b.toml");
    std::fs::write(&out, text).unwrap();
    out
}

/// Region A (the suite's source mongod) and region B (its target), and the test's
/// collection `c` in each.
struct Regions {
    a: mongodb::Client,
    b: mongodb::Client,
    ac: mongodb::Collection<Document>,
    bc: mongodb::Collection<Document>,
}

async fn regions(setup: &Setup) -> Regions {
    let (a, b) = (common::mongo(&common::source_uri()).await, common::mongo(&common::target_uri()).await);
    let (ac, bc) = (a.database(&setup.db).collection::<Document>("c"), b.database(&setup.db).collection::<Document>("c"));
    Regions { a, b, ac, bc }
}

async fn checkpoint_ids(client: &mongodb::Client, coll: &str, prefix: &str) -> Vec<String> {
    let docs: Vec<Document> = client.database("docrepl").collection::<Document>(coll).find(doc! {}).await.unwrap().try_collect().await.unwrap();
    docs.iter().filter_map(|d| d.get_str("_id").ok()).filter(|id| id.contains(&format!("{prefix}/"))).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_round_trip_copies_nothing_and_each_direction_ends_equal() {
    let setup = Setup::new("trip");
    let a2b = with_regions(&setup);
    let Regions { a, ac, bc, .. } = regions(&setup).await;
    ac.insert_many((0..2000).map(|i| doc! {"_id": i, "n": 0, "side": "a"})).await.unwrap();

    // A → B as usual: a copy, then the stream.
    let mut run = setup.spawn_with("run", &a2b, &[]);
    verify_equal(&a2b, "A → B after the copy");
    ac.update_many(doc! {"_id": {"$lt": 100}}, doc! {"$inc": {"n": 1}}).await.unwrap();
    let out = expect_ok("cutover", &a2b, &["--quiet-secs", "2", "--timeout-secs", "120"]);
    assert!(out.contains("recorded") && out.contains("READY TO SWITCH"), "{out}");
    // reverse refuses while the A → B services run, naming them.
    let b2a = setup.dir.path().join("b-to-a.toml");
    let (code, out) = docrepl("reverse", &a2b, &["--write", b2a.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("still running") && out.contains("instance"), "{out}");
    assert_eq!(run.terminate(Duration::from_secs(30)), Some(0), "{}", run.log_text());

    // The applications write on B before the pair is turned around: those count too.
    bc.insert_many((5000..5100).map(|i| doc! {"_id": i, "n": 0, "side": "b"})).await.unwrap();
    bc.update_many(doc! {"_id": {"$gte": 200, "$lt": 250}}, doc! {"$set": {"n": 7}}).await.unwrap();
    bc.delete_many(doc! {"_id": {"$gte": 300, "$lt": 320}}).await.unwrap();
    let out = expect_ok("reverse", &a2b, &["--write", b2a.to_str().unwrap()]);
    assert!(out.contains("REVERSED"), "{out}");
    assert!(checkpoint_ids(&a, "checkpoints", &setup.prefix).await.is_empty(), "A's A → B checkpoints are retired");
    assert!(!checkpoint_ids(&a, "checkpoints_retired", &setup.prefix).await.is_empty(), "and kept aside");
    // The old file no longer starts: the pair was turned around.
    let (code, out) = docrepl("source", &a2b, &[]);
    assert_eq!(code, Some(2), "the A → B source must refuse after the turn:\n{out}");
    assert!(out.contains("turned around"), "{out}");

    // B → A: what B took since the cutover reaches A, and what B takes now.
    let mut run = setup.spawn_with("run", &b2a, &[]);
    bc.update_many(doc! {"_id": {"$gte": 1000, "$lt": 1030}}, doc! {"$set": {"n": 9}}).await.unwrap();
    verify_equal(&b2a, "B → A");
    let ops = ops_on(&format!("{}-b.{}.c", setup.prefix, setup.db), 200).await;
    assert_eq!(ops.iter().filter(|o| *o == "r").count(), 0, "B → A copied documents: {ops:?}");
    assert_eq!(ops.len(), 200, "exactly B's changes travel: {ops:?}");

    // And back to A the same way.
    let out = expect_ok("cutover", &b2a, &["--quiet-secs", "2", "--timeout-secs", "120"]);
    assert!(out.contains("READY TO SWITCH"), "{out}");
    assert_eq!(run.terminate(Duration::from_secs(30)), Some(0), "{}", run.log_text());
    let back = setup.dir.path().join("a-to-b-again.toml");
    let reversed = expect_ok("reverse", &b2a, &["--write", back.to_str().unwrap()]);
    assert!(reversed.contains("REVERSED"), "{reversed}");
    ac.insert_many((7000..7050).map(|i| doc! {"_id": i, "n": 0, "side": "a again"})).await.unwrap();
    let _run = setup.spawn_with("run", &back, &[]);
    ac.delete_many(doc! {"_id": {"$gte": 1500, "$lt": 1510}}).await.unwrap();
    verify_equal(&back, "A → B again");
    let ops = ops_on(&format!("{}-a.{}.c", setup.prefix, setup.db), 60).await;
    assert_eq!(ops.iter().filter(|o| *o == "r").count(), 0, "A → B again copied documents: {ops:?}");
    assert_eq!(ops.len(), 60, "{ops:?}");
}

/// Runs `docrepl <command>` until it exits 0, while it refuses because the lock of a
/// killed holder has not lapsed yet (20 s after its last renewal).
async fn ok_once_the_lock_lapses(command: &str, config: &Path, args: &[&str]) -> String {
    for _ in 0..40 {
        let (code, out) = docrepl(command, config, args);
        if code == Some(0) {
            return out;
        }
        assert!(out.contains("held by the opposite direction"), "docrepl {command}: {out}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("docrepl {command} never succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplanned_failover_then_repair_keeps_what_only_the_old_source_had() {
    let setup = Setup::new("unplanned");
    let a2b = with_regions(&setup);
    let Regions { a, b, ac, bc } = regions(&setup).await;
    ac.insert_many((0..3000).map(|i| doc! {"_id": i, "n": 0})).await.unwrap();
    let mut source = setup.spawn_with("source", &a2b, &[]);
    let mut sink = setup.spawn_with("sink", &a2b, &[]);
    verify_equal(&a2b, "A → B after the copy");

    // Load on A; region A's reader dies in the middle of it, the load goes on a while.
    let load = {
        let ac = ac.clone();
        tokio::spawn(async move {
            for round in 0..40i32 {
                ac.insert_many((0..10).map(|i| doc! {"_id": 10_000 + round * 10 + i, "n": round})).await.unwrap();
                ac.update_many(doc! {"_id": {"$gte": round * 50, "$lt": round * 50 + 5}}, doc! {"$inc": {"n": 1}}).await.unwrap();
                ac.delete_one(doc! {"_id": 2500 + round}).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    source.kill9();
    load.await.unwrap();

    // Region B takes over with what reached Kafka.
    let out = expect_ok("cutover", &a2b, &["--source-down", "--quiet-secs", "3", "--timeout-secs", "120"]);
    assert!(out.contains("READY TO SWITCH"), "{out}");
    assert_eq!(sink.terminate(Duration::from_secs(30)), Some(0), "{}", sink.log_text());
    bc.insert_many((20_000..20_040).map(|i| doc! {"_id": i, "n": 0, "side": "b"})).await.unwrap();
    bc.update_many(doc! {"_id": {"$gte": 0, "$lt": 30}}, doc! {"$set": {"n": 100}}).await.unwrap();
    bc.delete_many(doc! {"_id": {"$gte": 2000, "$lt": 2010}}).await.unwrap();
    let b2a = setup.dir.path().join("b-to-a.toml");
    let out = expect_ok("reverse", &a2b, &["--source-down", "--write", b2a.to_str().unwrap()]);
    assert!(out.contains("REVERSED") && out.contains("down"), "{out}");

    // A returns. What A holds that B does not (its cut-off writes among them) must be kept.
    let on_a = common::documents(&a, &setup.db, "c").await;
    let on_b: std::collections::HashMap<String, Vec<u8>> = common::documents(&b, &setup.db, "c").await.into_iter().collect();
    let only_a: Vec<&(String, Vec<u8>)> = on_a.iter().filter(|(id, bytes)| on_b.get(id) != Some(bytes)).collect();
    assert!(only_a.len() > 30, "the test needs writes that never reached B: {} differ", only_a.len());
    // The killed reader's lock in A lapses first: a repair is refused while it may run.
    let out = ok_once_the_lock_lapses("repair", &b2a, &[]).await;
    assert!(out.contains("EQUAL"), "{out}");
    let kept: Vec<Document> = a.database("docrepl").collection::<Document>("repaired").find(doc! {"ns": format!("{}.c", setup.db)}).await.unwrap().try_collect().await.unwrap();
    for (id, bytes) in &only_a {
        let found = kept.iter().find(|k| k.get("before").and_then(Bson::as_document).and_then(|d| d.get("_id")).map(|i| format!("{i:?}")) == Some(id.clone()));
        let found = found.unwrap_or_else(|| panic!("A's version of {id} was replaced without being kept:\n{out}"));
        let before = bson::to_vec(found.get_document("before").unwrap()).unwrap();
        assert_eq!(&before, bytes, "the kept version of {id} is A's");
    }
    assert!(checkpoint_ids(&a, "checkpoints", &setup.prefix).await.is_empty(), "A's old checkpoints are retired once the new direction reaches A");

    // B → A from the cutover on, A level already: B's next writes reach it.
    let _run = setup.spawn_with("run", &b2a, &[]);
    bc.update_many(doc! {"_id": {"$gte": 100, "$lt": 120}}, doc! {"$set": {"n": 5}}).await.unwrap();
    verify_equal(&b2a, "B → A after the repair");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opposite_direction_refuses_to_start_naming_the_holder() {
    let setup = Setup::new("lock");
    let a2b = setup.config();
    let a = common::mongo(&common::source_uri()).await;
    a.database(&setup.db).collection::<Document>("c").insert_many((0..100).map(|i| doc! {"_id": i})).await.unwrap();
    let mut run = setup.spawn_with("run", &a2b, &[]);
    verify_equal(&a2b, "A → B");
    // A hand-made B → A file for the same pair (other topics and group).
    let text = std::fs::read_to_string(&a2b).unwrap();
    let swapped = text
        .replace(&common::source_uri(), "@A@")
        .replace(&common::target_uri(), &common::source_uri())
        .replace("@A@", &common::target_uri())
        .replace(&format!("topic_prefix = {:?}", setup.prefix), &format!("topic_prefix = \"{}-back\"", setup.prefix))
        .replace(&format!("group_id = {:?}", setup.group), &format!("group_id = \"{}-back\"", setup.group))
        + &format!("\n[pair]\nname = {:?}\n", setup.prefix);
    let b2a = setup.dir.path().join("b-to-a.toml");
    std::fs::write(&b2a, swapped.replace("[source]\n", "[source]\ninitial_copy = false\n")).unwrap();
    for command in ["source", "sink", "run"] {
        let (code, out) = docrepl(command, &b2a, &[]);
        assert_eq!(code, Some(2), "docrepl {command} of B → A while A → B runs:\n{out}");
        assert!(out.contains("held by the opposite direction") && out.contains("instance "), "{out}");
    }
    // The refused starts stopped nothing: A → B runs on (across a renewal of its lock).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(run.is_running(), "a refused B → A start stopped A → B:\n{}", run.log_text());
    // Once A → B stopped (a graceful stop releases at once), B → A may start.
    assert_eq!(run.terminate(Duration::from_secs(30)), Some(0));
    let mut back = setup.spawn_with("run", &b2a, &[]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(back.is_running(), "B → A did not start after A → B stopped:\n{}", back.log_text());
}
