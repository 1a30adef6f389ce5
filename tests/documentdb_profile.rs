//! The DocumentDB profile: every command docrepl sends with `flavor = "documentdb"` is one
//! Amazon DocumentDB 5.0 accepts.
//!
//! Two mongods of the test's own log every command they receive (`--slowms -1`), while
//! docrepl does all it does on a DocumentDB pair: two source instances (the lease, a
//! standby taking over an interrupted initial copy, which then resumes after its last
//! `_id`), the change stream with inserts, updates, replaces and deletes, a sink writing
//! the target, collection metadata (a validator; plain, unique and TTL indexes; an index
//! and an option changed while streaming, found by the listing), `docrepl verify` and
//! `docrepl cutover`, `docrepl repair` of a drifted target and `docrepl reverse` with the
//! reversed pair streaming back. The test then reads every command logged for the
//! app name `docrepl` and takes out each command name, aggregation stage, change-stream
//! stage and option, query, update and expression operator and system variable, and fails
//! on any that `tests/documentdb/support-5.0.tsv` (facts from AWS's documentation and its
//! compatibility table) says DocumentDB 5.0 lacks, or does not list at all.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use bson::{doc, Document};
use serde_json::Value;

use common::{OwnMongod, Setup};

/// Extended JSON type wrappers: values, not operators.
const WRAPPERS: [&str; 17] = [
    "$oid", "$date", "$numberLong", "$numberInt", "$numberDouble", "$numberDecimal", "$binary", "$timestamp",
    "$regularExpression", "$minKey", "$maxKey", "$undefined", "$symbol", "$code", "$scope", "$dbPointer", "$uuid",
];

/// Fields the driver adds to every command: not options of the command.
const DRIVER_FIELDS: [&str; 9] = ["$db", "lsid", "$clusterTime", "writeConcern", "$readPreference", "txnNumber", "maxTimeMS", "apiVersion", "readConcern"];

/// One feature a command uses: (kind, name).
type Feature = (&'static str, String);

/// Every feature of one logged command (`attr.command` of a mongod log line).
fn features(command: &serde_json::Map<String, Value>) -> BTreeSet<Feature> {
    let mut out = BTreeSet::new();
    let Some((name, _)) = command.iter().next() else { return out };
    out.insert(("command", name.clone()));
    // DocumentDB has no `local` database (no oplog to read).
    if command.get("$db").and_then(Value::as_str) == Some("local") {
        out.insert(("database", "local".into()));
    }
    let field = |f: &str| command.get(f);
    match name.as_str() {
        "find" => {
            for option in ["min", "max", "collation", "returnKey", "showRecordId", "tailable"] {
                if field(option).is_some() {
                    out.insert(("option", format!("find.{option}")));
                }
            }
            if field("sort").and_then(|s| s.get("$natural")).and_then(Value::as_i64) == Some(-1) {
                out.insert(("option", "find.sort.$natural:-1".into()));
            }
            if let Some(f) = field("filter") {
                query(f, &mut out);
            }
            for f in ["projection", "sort"] {
                if let Some(v) = field(f) {
                    expression(v, &mut out);
                }
            }
        }
        "aggregate" => {
            for stage in field("pipeline").and_then(Value::as_array).into_iter().flatten() {
                let Some(stage) = stage.as_object() else { continue };
                for (name, body) in stage {
                    out.insert(("stage", name.clone()));
                    match name.as_str() {
                        "$changeStream" => {
                            for option in body.as_object().into_iter().flat_map(|o| o.keys()) {
                                out.insert(("option", format!("$changeStream.{option}")));
                            }
                        }
                        "$match" => query(body, &mut out),
                        _ => expression(body, &mut out),
                    }
                }
            }
            // Stages after $changeStream run inside the change stream.
            let stages: Vec<&Value> = field("pipeline").and_then(Value::as_array).into_iter().flatten().collect();
            if stages.first().and_then(|s| s.get("$changeStream")).is_some() {
                for stage in &stages[1..] {
                    for name in stage.as_object().into_iter().flat_map(|o| o.keys()) {
                        out.insert(("change-stream-stage", name.clone()));
                    }
                }
            }
        }
        "update" => {
            if field("bypassDocumentValidation").is_some() {
                out.insert(("option", "update.bypassDocumentValidation".into()));
            }
            for statement in field("updates").and_then(Value::as_array).into_iter().flatten() {
                if let Some(q) = statement.get("q") {
                    query(q, &mut out);
                }
                match statement.get("u") {
                    Some(Value::Array(stages)) => {
                        out.insert(("option", "update.pipeline".into()));
                        for stage in stages.iter().filter_map(Value::as_object) {
                            for (name, body) in stage {
                                out.insert(("stage", name.clone()));
                                expression(body, &mut out);
                            }
                        }
                    }
                    Some(Value::Object(u)) => {
                        for (op, args) in u.iter().filter(|(k, _)| k.starts_with('$')) {
                            out.insert(("operator", op.clone()));
                            // `$push: {a: {$each: [], $slice: 3}}`: the modifiers (a
                            // value's type wrapper, `$set: {at: {$timestamp: …}}`, is none).
                            for arg in args.as_object().into_iter().flat_map(|a| a.values()) {
                                for modifier in arg.as_object().into_iter().filter(|m| !is_wrapper(m)).flat_map(|m| m.keys()).filter(|k| k.starts_with('$')) {
                                    out.insert(("operator", modifier.clone()));
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        "delete" => {
            for statement in field("deletes").and_then(Value::as_array).into_iter().flatten() {
                if let Some(q) = statement.get("q") {
                    query(q, &mut out);
                }
            }
        }
        "findAndModify" => {
            if let Some(q) = field("query") {
                query(q, &mut out);
            }
            match field("update") {
                Some(Value::Array(_)) => {
                    out.insert(("option", "update.pipeline".into()));
                }
                Some(Value::Object(u)) => {
                    for op in u.keys().filter(|k| k.starts_with('$')) {
                        out.insert(("operator", op.clone()));
                    }
                }
                _ => {}
            }
        }
        "insert" => {
            if field("bypassDocumentValidation").is_some() {
                out.insert(("option", "insert.bypassDocumentValidation".into()));
            }
        }
        "create" | "collMod" => {
            for (k, v) in command.iter().skip(1).filter(|(k, _)| !DRIVER_FIELDS.contains(&k.as_str())) {
                out.insert(("option", format!("{name}.{k}")));
                if k == "validator" {
                    query(v, &mut out);
                }
            }
        }
        "createIndexes" => {
            for ix in field("indexes").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_object) {
                for (k, v) in ix {
                    match k.as_str() {
                        "name" => {}
                        // The kind of index: `1`/`-1` are plain; "text", "2dsphere", "hashed" are kinds.
                        "key" => {
                            for kind in v.as_object().into_iter().flat_map(|o| o.values()).filter_map(Value::as_str) {
                                out.insert(("option", format!("createIndexes.key.{kind}")));
                            }
                            if v.as_object().is_some_and(|o| o.keys().any(|k| k.contains("$**"))) {
                                out.insert(("option", "createIndexes.key.wildcard".into()));
                            }
                        }
                        other => {
                            out.insert(("option", format!("createIndexes.{other}")));
                            if other == "partialFilterExpression" {
                                query(v, &mut out);
                            }
                        }
                    }
                }
            }
        }
        "count" | "listCollections" | "distinct" => {
            for f in ["query", "filter"] {
                if let Some(q) = field(f) {
                    query(q, &mut out);
                }
            }
        }
        _ => {}
    }
    out
}

fn is_wrapper(obj: &serde_json::Map<String, Value>) -> bool {
    !obj.is_empty() && obj.keys().all(|k| WRAPPERS.contains(&k.as_str()))
}

/// A filter: `$`-keys are query operators; `$expr` holds an expression.
fn query(v: &Value, out: &mut BTreeSet<Feature>) {
    match v {
        Value::Object(o) if is_wrapper(o) => {}
        Value::Object(o) => {
            for (k, v) in o {
                if k.starts_with('$') {
                    out.insert(("operator", k.clone()));
                    if k == "$expr" {
                        expression(v, out);
                        continue;
                    }
                }
                query(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| query(v, out)),
        _ => {}
    }
}

/// An aggregation expression: `$`-keys are operators, `"$$NAME"` strings are variables.
fn expression(v: &Value, out: &mut BTreeSet<Feature>) {
    match v {
        Value::Object(o) if is_wrapper(o) => {}
        Value::Object(o) => {
            for (k, v) in o {
                if k.starts_with('$') {
                    out.insert(("operator", k.clone()));
                }
                expression(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| expression(v, out)),
        Value::String(s) if s.starts_with("$$") => {
            let name = s.split('.').next().unwrap_or(s);
            out.insert(("operator", name.to_string()));
        }
        _ => {}
    }
}

/// The support list: (kind, name) → supported.
fn support_list() -> BTreeMap<(String, String), bool> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/documentdb/support-5.0.tsv");
    let text = std::fs::read_to_string(&path).expect("tests/documentdb/support-5.0.tsv");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert!(cols.len() >= 3 && matches!(cols[2], "yes" | "no"), "bad row in the support list: {l:?}");
            ((cols[0].to_string(), cols[1].to_string()), cols[2] == "yes")
        })
        .collect()
}

/// Looks a feature up: kind-specific rows first, then the operator table.
fn supported(list: &BTreeMap<(String, String), bool>, (kind, name): &Feature) -> Option<bool> {
    if let Some(s) = list.get(&(kind.to_string(), name.clone())) {
        return Some(*s);
    }
    match *kind {
        "stage" => list.get(&("operator".to_string(), name.clone())).copied(),
        // Inside a change stream only the listed stages are accepted.
        "change-stream-stage" => Some(false),
        _ => None,
    }
}

/// Every feature docrepl used, from mongod logs: feature → a sample command.
fn scan_logs(logs: &[&Path]) -> BTreeMap<Feature, String> {
    let mut seen = BTreeMap::new();
    for path in logs {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for line in text.lines() {
            let Ok(entry) = serde_json::from_str::<Value>(line) else { continue };
            let attr = &entry["attr"];
            // Whole commands only (mongod also logs each write statement on its own).
            if attr["appName"] != "docrepl" || attr["type"] != "command" {
                continue;
            }
            let Some(command) = attr["command"].as_object() else { continue };
            for feature in features(command) {
                seen.entry(feature).or_insert_with(|| line.chars().take(400).collect());
            }
        }
    }
    seen
}

/// Sent by the MongoDB driver itself, not by docrepl: `endSessions` when a client is
/// dropped or shut down (mongodb 3.9 `Client::end_all_sessions`, every driver does the
/// same), its answer ignored. DocumentDB refuses it with an error that changes nothing.
const DRIVER_ONLY: [(&str, &str); 1] = [("command", "endSessions")];

/// Features the list says DocumentDB 5.0 lacks, or does not list.
fn problems(seen: &BTreeMap<Feature, String>) -> Vec<String> {
    let list = support_list();
    seen.iter()
        .filter(|((kind, name), _)| !DRIVER_ONLY.contains(&(*kind, name.as_str())))
        .filter_map(|(f, sample)| match supported(&list, f) {
            Some(true) => None,
            Some(false) => Some(format!("{} {} is not supported by DocumentDB 5.0; sent in: {sample}", f.0, f.1)),
            None => Some(format!("{} {} is not in tests/documentdb/support-5.0.tsv (add it with its source); sent in: {sample}", f.0, f.1)),
        })
        .collect()
}

#[test]
fn the_scanner_finds_unsupported_features_in_a_logged_command() {
    let line = r#"{"t":{"$date":"2026-12-01T12:00:00.000+00:00"},"msg":"Slow query","attr":{"type":"command","ns":"d.c","appName":"docrepl","command":{"aggregate":"c","pipeline":[{"$changeStream":{"fullDocument":"updateLookup","startAfter":{"_data":"82"}}},{"$set":{"updateDescription":{"$cond":{"if":{"$gt":[{"$bsonSize":{"$ifNull":["$fullDocument",{}]}},8388608]},"then":"$$REMOVE","else":"$updateDescription"}}}}],"cursor":{},"$db":"d"}}}
{"msg":"Slow query","attr":{"type":"command","appName":"docrepl","command":{"update":"leases","updates":[{"q":{"_id":"x","$expr":{"$lt":["$expires_at","$$NOW"]}},"u":[{"$set":{"at":"$$NOW"}}]}],"$db":"docrepl"}}}
{"msg":"Slow query","attr":{"type":"command","appName":"docrepl","command":{"find":"c","filter":{"_id":{"$oid":"65976a473f3a210c022ffc55"}},"min":{"_id":1},"$db":"d"}}}
{"msg":"Slow query","attr":{"type":"command","appName":"other","command":{"find":"c","filter":{"$where":"1"}}}}"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mongod.log");
    std::fs::write(&path, line).unwrap();
    let seen = scan_logs(&[&path]);
    let found = problems(&seen).join("\n");
    for expected in [
        "operator $bsonSize is not supported",
        "operator $$REMOVE is not supported",
        "change-stream-stage $set is not supported",
        "stage $set is not supported",
        "option $changeStream.startAfter is not supported",
        "operator $$NOW is not supported",
        "option update.pipeline is not supported",
        "option find.min is not supported",
    ] {
        assert!(found.contains(expected), "missing {expected:?} in:\n{found}");
    }
    let names: Vec<&String> = seen.keys().map(|(_, n)| n).collect();
    assert!(!names.iter().any(|n| *n == "$oid" || *n == "$where"), "wrappers and other apps are not features: {names:?}");
}

/// A `u` event with no full document: the sink turns its updateDescription into update
/// statements.
async fn send_patch(setup: &Setup) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let patch = |update: serde_json::Value| serde_json::json!({
        "before": null, "after": null, "op": "u", "ts_ms": 0,
        "updateDescription": update,
        "source": {"connector": "mongodb", "name": "x", "db": setup.db, "collection": "c", "ts_ms": 0, "ord": 0, "snapshot": "false"},
    });
    // One statement (`$set` and `$unset`), and one that truncates too (two statements: the
    // document is read, patched in memory and replaced).
    let patches = [
        (br#"{"id":"\"not-on-the-target\""}"#.as_slice(), patch(serde_json::json!({"updatedFields": r#"{"n": {"$numberInt": "1"}}"#, "removedFields": ["gone"]}))),
        (br#"{"id":"\"not-there-either\""}"#.as_slice(), patch(serde_json::json!({"updatedFields": r#"{"arr.1": {"$numberInt": "7"}}"#, "removedFields": [], "truncatedArrays": [{"field": "arr", "size": 2}]}))),
    ];
    let kafka = common::kafka_config(&setup.prefix, 8);
    let producer: FutureProducer = docrepl::kafka::producer_config(&kafka).create().unwrap();
    let topic = setup.topic("c");
    for (key, value) in patches {
        let value = serde_json::to_vec(&value).unwrap();
        let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).key(key).payload(value.as_slice());
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).unwrap();
    }
}

/// A mongod that logs every command it receives.
async fn logging_mongod(port: u16) -> OwnMongod {
    let args = ["--slowms", "-1", "--setParameter", "maxLogSizeKB=20480", "--setParameter", "enableTestCommands=1"];
    OwnMongod::start_with(port, args.iter().map(|s| s.to_string()).collect(), "").await
}

#[tokio::test]
async fn everything_docrepl_sends_on_the_documentdb_flavour_is_supported_by_documentdb_5() {
    let source = logging_mongod(27841).await;
    let target = logging_mongod(27842).await;
    let mut setup = Setup::new("docdbprofile");
    setup.source_extra = "collections = [\"c\"]\nflavor = \"documentdb\"\ncopy_batch_size = 500\nddl = \"replicate\"\n[source.metadata]\npoll_secs = 1".into();
    setup.sink_extra = "flavor = \"documentdb\"".into();
    let text = std::fs::read_to_string(setup.config_with_target(&target.uri())).unwrap().replace(&common::source_uri(), &source.uri());
    let cfg = setup.dir.path().join("documentdb.toml");
    std::fs::write(&cfg, &text).unwrap();
    let instance = |name: &str| {
        let path = setup.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text.replace("[source]\n", &format!("[source]\ninstance_id = {name:?}\n"))).unwrap();
        path
    };
    let (cfg_a, cfg_b) = (instance("a"), instance("b"));

    let client = common::mongo(&source.uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    // Metadata the sink creates the target collection with, and indexes of the kinds
    // DocumentDB has (plain, unique, TTL); more arrive by the listing while streaming.
    let db = client.database(&setup.db);
    db.run_command(doc! {"create": "c", "validator": {"$jsonSchema": {"bsonType": "object", "required": ["_id"]}}, "validationLevel": "moderate"}).await.unwrap();
    let indexes = [doc! {"key": {"v": 1}, "name": "v_1"}, doc! {"key": {"u": 1}, "name": "u_1", "unique": true, "sparse": true}, doc! {"key": {"at": 1}, "name": "at_1", "expireAfterSeconds": 2_000_000_000}];
    db.run_command(doc! {"createIndexes": "c", "indexes": indexes.to_vec()}).await.unwrap();
    coll.insert_many((0..5000).map(|i| doc! {"_id": i, "v": 0, "pad": "x".repeat(200)})).await.unwrap();
    // The copy's first getMores are slow, so the copy is surely under way when its reader dies.
    client
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 3},
            "data": {"failCommands": ["getMore"], "blockConnection": true, "blockTimeMS": 1500, "appName": "docrepl"},
        })
        .await
        .unwrap();
    let mut a = setup.spawn_with("source", &cfg_a, &[]);
    let checkpoints = client.database("docrepl").collection::<Document>("checkpoints");
    common::eventually(Duration::from_secs(60), "the copy to save a position", || async {
        checkpoints.find_one(doc! {"copy_after": {"$ne": null}}).await.ok().flatten().is_some()
    })
    .await;
    let mut b = setup.spawn_with("source", &cfg_b, &[]);
    let sink = setup.spawn_with("sink", &cfg, &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.kill9();
    common::eventually(Duration::from_secs(60), "the standby to resume the copy", || async {
        b.log_text().contains("initial copy resuming after _id")
    })
    .await;

    let target_coll = common::mongo(&target.uri()).await.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(120), "the copy on the target", || async {
        target_coll.count_documents(doc! {}).await.unwrap_or(0) == 5000
    })
    .await;
    db.run_command(doc! {"createIndexes": "c", "indexes": [{"key": {"w": -1}, "name": "w_-1"}]}).await.unwrap();
    db.run_command(doc! {"collMod": "c", "validationAction": "warn"}).await.unwrap();
    let target_client = common::mongo(&target.uri()).await;
    common::eventually(Duration::from_secs(60), "the new index through the listing", || async {
        let meta = docrepl::metadata::catalog::read_one(&target_client, &setup.db, "c", true).await.unwrap();
        meta.is_some_and(|m| m.index("w_-1").is_some() && m.options.get_str("validationAction") == Ok("warn"))
    })
    .await;
    coll.insert_many((5000..5100).map(|i| doc! {"_id": i})).await.unwrap();
    coll.update_many(doc! {"_id": {"$lt": 100}}, doc! {"$set": {"v": 1}, "$unset": {"pad": ""}}).await.unwrap();
    coll.update_one(doc! {"_id": 200}, doc! {"$push": {"arr": {"$each": [1, 2, 3]}}}).await.unwrap();
    coll.replace_one(doc! {"_id": 300}, doc! {"replaced": true}).await.unwrap();
    coll.delete_many(doc! {"_id": {"$gte": 400, "$lt": 450}}).await.unwrap();
    // Patches the sink applies (an update whose document lookup found nothing, as a
    // Debezium connector may write them): an update statement with `$set` and `$unset`,
    // and a read of the current document for one with a truncation. For documents the
    // target does not have, so they change nothing.
    send_patch(&setup).await;
    common::eventually(Duration::from_secs(60), "the sink to apply the patch events", || async {
        let log = std::fs::read_to_string(target.log_path()).unwrap_or_default();
        log.contains("\"$unset\"") && log.contains("not-there-either")
    })
    .await;
    let (code, out) = common::verify(&cfg, 120);
    assert_eq!(code, Some(0), "the target differs:\n{out}\n{}", b.log_text());
    // Cutover on a DocumentDB target: the unique and TTL indexes rebuilt in their final form.
    let cutover = std::process::Command::new(env!("CARGO_BIN_EXE_docrepl"))
        .args(["cutover", "--quiet-secs", "2", "--timeout-secs", "60", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&cutover.stdout).to_string() + &String::from_utf8_lossy(&cutover.stderr);
    assert_eq!(cutover.status.code(), Some(0), "{said}");
    let u = docrepl::metadata::catalog::read_one(&target_client, &setup.db, "c", true).await.unwrap().unwrap();
    assert_eq!(u.index("u_1").and_then(|ix| ix.get_bool("unique").ok()), Some(true), "{said}");
    // A drop, replicated: clear markers make the sink delete the target's documents
    // partition by partition; the database's stream goes on (a collection's is reopened
    // after its invalidate), and the re-created collection arrives.
    coll.drop().await.unwrap();
    common::eventually(Duration::from_secs(60), "the drop to empty the target", || async {
        target_coll.count_documents(doc! {}).await.unwrap_or(1) == 0
    })
    .await;
    coll.insert_one(doc! {"_id": "again"}).await.unwrap();
    common::eventually(Duration::from_secs(30), "the re-created collection on the target", || async {
        target_coll.count_documents(doc! {"_id": "again"}).await.unwrap_or(0) == 1
    })
    .await;
    assert_eq!(b.terminate(Duration::from_secs(15)), Some(0), "{}", b.log_text());
    let mut sink = sink;
    assert_eq!(sink.terminate(Duration::from_secs(15)), Some(0), "{}", sink.log_text());

    // Repair of a drifted DocumentDB target: both sides scanned into digests, the
    // differing spans listed, documents fetched, the replaced versions kept.
    target_coll.insert_many((0..50).map(|i| doc! {"_id": format!("drift{i}")})).await.unwrap();
    coll.insert_many((0..300).map(|i| doc! {"_id": 1000 + i, "n": i})).await.unwrap();
    target_coll.insert_many((0..300).map(|i| doc! {"_id": 1000 + i, "n": -i})).await.unwrap();
    let run = |command: &str, config: &Path, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_docrepl")).arg(command).arg("--config").arg(config).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, said) = run("repair", &cfg, &[]);
    assert_eq!(code, Some(0), "{said}");
    // Turning the pair around: the lock's records on both sides, the old checkpoints
    // retired, and the reversed source streaming from the cutover's point.
    let reversed = setup.dir.path().join("reversed.toml");
    // (Instance a was killed: its lock lapses 20 s after its last renewal.)
    let reverse = || run("reverse", &cfg, &["--write", reversed.to_str().unwrap(), "--source-region", "a", "--target-region", "b"]);
    let (mut code, mut said) = reverse();
    for _ in 0..30 {
        if !said.contains("still running") {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        (code, said) = reverse();
    }
    assert_eq!(code, Some(0), "{said}");
    let back = setup.spawn_with("run", &reversed, &[]);
    target_coll.insert_one(doc! {"_id": "from-b"}).await.unwrap();
    common::eventually(Duration::from_secs(60), "a write on the old target to reach the old source", || async {
        coll.count_documents(doc! {"_id": "from-b"}).await.unwrap_or(0) == 1
    })
    .await;
    drop(back);

    // For AWS's own compatibility tool (`compat.py --file`), run by hand over the same logs.
    if let Ok(dir) = std::env::var("DOCREPL_PROFILE_LOG_DIR") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(source.log_path(), Path::new(&dir).join("source-mongod.log")).unwrap();
        std::fs::copy(target.log_path(), Path::new(&dir).join("target-mongod.log")).unwrap();
    }
    let seen = scan_logs(&[&source.log_path(), &target.log_path()]);
    let names: Vec<String> = seen.keys().map(|(k, n)| format!("{k} {n}")).collect();
    eprintln!("features docrepl used with flavor = \"documentdb\":\n  {}", names.join("\n  "));
    // The log was read: the paths this test exists for are in it.
    for expected in [
        ("command", "aggregate"),
        ("stage", "$changeStream"),
        ("option", "$changeStream.fullDocument"),
        ("command", "update"),
        ("operator", "$inc"),
        ("operator", "$type"),
        ("command", "insert"),
        ("command", "delete"),
        ("command", "find"),
        ("operator", "$in"),
        ("operator", "$unset"),
        ("command", "delete"),
        // The database stream's scope filter.
        ("change-stream-stage", "$match"),
        ("operator", "$or"),
        ("operator", "$exists"),
        // Metadata: the target collection created with the source's validator, indexes
        // built, changed options applied, both sides listed.
        ("command", "create"),
        ("option", "create.validator"),
        ("command", "createIndexes"),
        ("option", "createIndexes.unique"),
        ("command", "collMod"),
        ("command", "listIndexes"),
        ("option", "insert.bypassDocumentValidation"),
        // The direction lock and repair's kept versions.
        ("operator", "$currentDate"),
    ] {
        assert!(seen.contains_key(&(expected.0, expected.1.to_string())), "{expected:?} not seen in the logs: {names:?}");
    }
    let problems = problems(&seen);
    assert!(problems.is_empty(), "docrepl sent what DocumentDB 5.0 does not support:\n{}", problems.join("\n"));
}
