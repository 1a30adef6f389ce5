//! A source URI with `readPreference=secondaryPreferred` (how DocumentDB users point tools
//! at a cluster's replicas), on a two-member replica set whose mongods log every command
//! (`--slowms -1`): the initial copy and the change stream still read the primary
//! (DocumentDB 3.6 and 4.0 serve change streams only there, and a replica's copy could
//! miss the writes just before it), while `verify`, which may, reads the secondary.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bson::{doc, Document};
use common::Setup;

/// Two mongods of one replica set: the first the primary (higher priority).
struct Pair {
    dirs: Vec<tempfile::TempDir>,
    children: Vec<Child>,
    ports: [u16; 2],
}

impl Drop for Pair {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Pair {
    fn name(&self) -> String {
        format!("rsrp{}", self.ports[0])
    }

    fn uri(&self, options: &str) -> String {
        format!("mongodb://127.0.0.1:{},127.0.0.1:{}/?replicaSet={}{options}", self.ports[0], self.ports[1], self.name())
    }

    fn log(&self, member: usize) -> PathBuf {
        self.dirs[member].path().join("mongod.log")
    }

    async fn start(port: u16) -> Pair {
        let bin = std::env::var("DOCREPL_MONGOD_BIN")
            .unwrap_or_else(|_| format!("{}/.cache/docrepl/mongod-6.0.5/bin/mongod", std::env::var("HOME").unwrap_or_default()));
        let ports = [port, port + 1];
        let mut pair = Pair { dirs: Vec::new(), children: Vec::new(), ports };
        for p in ports {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("db")).unwrap();
            let log = std::fs::File::create(dir.path().join("mongod.log")).unwrap();
            let child = Command::new(&bin)
                .args(["--bind_ip", "127.0.0.1", "--port", &p.to_string(), "--replSet", &format!("rsrp{port}")])
                .args(["--wiredTigerCacheSizeGB", "0.25", "--oplogSize", "200", "--slowms", "-1"])
                .arg("--dbpath")
                .arg(dir.path().join("db"))
                .stdout(log)
                .stderr(Stdio::null())
                .spawn()
                .expect("start mongod (run scripts/setup.sh)");
            pair.dirs.push(dir);
            pair.children.push(child);
        }
        let direct = |p: u16| format!("mongodb://127.0.0.1:{p}/?directConnection=true");
        let first = mongodb::Client::with_uri_str(direct(port)).await.unwrap();
        let init = doc! {"replSetInitiate": {"_id": pair.name(), "members": [
            {"_id": 0, "host": format!("127.0.0.1:{port}"), "priority": 2},
            {"_id": 1, "host": format!("127.0.0.1:{}", port + 1), "priority": 1},
        ]}};
        let mut tries = 0;
        while let Err(e) = first.database("admin").run_command(init.clone()).await {
            tries += 1;
            assert!(tries < 100, "cannot initiate the pair on {port}: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let second = mongodb::Client::with_uri_str(direct(port + 1)).await.unwrap();
        common::eventually(Duration::from_secs(60), "a primary and a secondary", || {
            let (first, second) = (first.clone(), second.clone());
            async move {
                let primary = first.database("admin").run_command(doc! {"hello": 1}).await.ok().and_then(|h| h.get_bool("isWritablePrimary").ok());
                let secondary = second.database("admin").run_command(doc! {"hello": 1}).await.ok().and_then(|h| h.get_bool("secondary").ok());
                primary == Some(true) && secondary == Some(true)
            }
        })
        .await;
        pair
    }
}

/// docrepl's reads of `db.coll` a member logged: (copies' finds, change stream aggregates).
fn reads_logged(log: &Path, db: &str, coll: &str) -> (usize, usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let (mut finds, mut streams) = (0, 0);
    for line in text.lines().filter(|l| l.contains("\"appName\":\"docrepl\"")) {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let command = &entry["attr"]["command"];
        if command["$db"].as_str() != Some(db) {
            continue;
        }
        if command["find"].as_str() == Some(coll) {
            finds += 1;
        }
        let opens_stream = command["pipeline"].as_array().and_then(|p| p.first()).is_some_and(|stage| stage.get("$changeStream").is_some());
        if command.get("aggregate").is_some() && opens_stream {
            streams += 1;
        }
    }
    (finds, streams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_and_change_streams_read_the_primary_whatever_the_uri_prefers() {
    let pair = Pair::start(27467).await;
    let mut setup = Setup::new("readpref");
    setup.source_extra = "collections = [\"c\"]".into();
    let path = setup.config();
    let text = std::fs::read_to_string(&path).unwrap().replace(&common::source_uri(), &pair.uri("&readPreference=secondaryPreferred"));
    std::fs::write(&path, text).unwrap();

    let writer = common::mongo(&pair.uri("&w=majority")).await;
    let coll = writer.database(&setup.db).collection::<Document>("c");
    coll.insert_many((0..200).map(|i| doc! {"_id": i, "v": 0})).await.unwrap();
    let source = setup.spawn_with("source", &path, &[]);
    let sink = setup.spawn_with("sink", &path, &[]);
    common::eventually(Duration::from_secs(90), "the source streaming", || {
        let source = &source;
        async move { source.log_text().contains("streaming changes") }
    })
    .await;
    coll.insert_many((200..300).map(|i| doc! {"_id": i, "v": 0})).await.unwrap();
    coll.update_many(doc! {"_id": {"$lt": 50}}, doc! {"$inc": {"v": 1}}).await.unwrap();
    let target = common::mongo(&common::target_uri()).await.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(90), "300 documents on the target, 50 updated", || {
        let target = target.clone();
        async move {
            target.count_documents(doc! {}).await.unwrap_or(0) == 300 && target.count_documents(doc! {"v": 1}).await.unwrap_or(0) == 50
        }
    })
    .await;

    let (primary_finds, primary_streams) = reads_logged(&pair.log(0), &setup.db, "c");
    let (secondary_finds, secondary_streams) = reads_logged(&pair.log(1), &setup.db, "c");
    assert!(primary_finds >= 1 && primary_streams >= 1, "the primary logged {primary_finds} copy reads and {primary_streams} streams");
    assert_eq!((secondary_finds, secondary_streams), (0, 0), "the secondary served the copy or a change stream:\n{}", source.log_text());

    // Verify follows the URI: its scans of the source go to the secondary.
    let (code, out) = common::verify(&path, 120);
    assert_eq!(code, Some(0), "{out}\n{}", sink.log_text());
    let (secondary_finds_after, _) = reads_logged(&pair.log(1), &setup.db, "c");
    let secondary_aggregates = std::fs::read_to_string(pair.log(1)).unwrap_or_default().lines().filter(|l| l.contains("\"appName\":\"docrepl\"") && l.contains(&format!("\"$db\":\"{}\"", setup.db))).count();
    assert!(secondary_finds_after + secondary_aggregates > 0, "verify did not read the secondary: the test would not tell the reads apart");
}
