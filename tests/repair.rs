//! `docrepl repair` against the real mongods: it makes the target equal to the source by
//! moving only what differs (through `docrepl digests` behind the link emulator, whose
//! byte counts show what crossed), keeps every version it overwrites or deletes, and ends
//! equal while the source takes writes and the stream runs.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bson::{doc, oid::ObjectId, Bson, Document};
use docrepl::link::{Link, Shape, Shapes};

use common::Setup;

/// `docrepl repair --config <config> [args]`: (exit code, what it printed).
fn repair(config: &std::path::Path, args: &[&str], token: Option<&str>) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_docrepl"));
    cmd.args(["repair", "--config"]).arg(config).args(args);
    if let Some(t) = token {
        cmd.env("DOCREPL_DIGESTS_TOKEN", t);
    }
    let out = cmd.output().expect("run docrepl repair");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn verify_documents(config: &std::path::Path, wait_secs: u32) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_docrepl"))
        .args(["verify", "--documents-only", "--wait-for-quiet", &wait_secs.to_string(), "--config"])
        .arg(config)
        .output()
        .expect("run docrepl verify");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// The same 20,000 documents on both sides, `_id`s of three types.
fn documents() -> Vec<Document> {
    let pad = "x".repeat(200);
    let mut docs: Vec<Document> = (0..20_000).map(|i| doc! {"_id": i, "n": i, "pad": &pad}).collect();
    docs.extend((0..5).map(|i| doc! {"_id": format!("s{i}"), "n": i, "pad": &pad}));
    docs.extend((0..5u8).map(|i| doc! {"_id": ObjectId::from_bytes([i; 12]), "n": i as i32}));
    docs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_moves_only_the_differences_and_keeps_what_it_replaces() {
    let setup = Setup::new("repair");
    let config = setup.config();
    let source = common::mongo(&common::source_uri()).await;
    let target = common::mongo(&common::target_uri()).await;
    let (sc, tc) = (source.database(&setup.db).collection::<Document>("c"), target.database(&setup.db).collection::<Document>("c"));
    sc.insert_many(documents()).await.unwrap();
    tc.insert_many(documents()).await.unwrap();
    // The target drifted: 100 changed, 50 gone, 30 it alone has, and a change across types.
    tc.update_many(doc! {"_id": {"$gte": 1000, "$lt": 1100}}, doc! {"$set": {"n": -1}}).await.unwrap();
    tc.delete_many(doc! {"_id": {"$gte": 5000, "$lt": 5050}}).await.unwrap();
    tc.insert_many((0..30).map(|i| doc! {"_id": 100_000 + i * 7, "only": "target"})).await.unwrap();
    tc.update_one(doc! {"_id": "s3"}, doc! {"$set": {"n": 33}}).await.unwrap();
    sc.update_one(doc! {"_id": ObjectId::from_bytes([2; 12])}, doc! {"$set": {"n": 22}}).await.unwrap();

    // The source's digests next to it, reached through the link emulator.
    let token = "repair-test-token";
    let port = free_port();
    let mut peer = std::process::Command::new(env!("CARGO_BIN_EXE_docrepl"))
        .args(["digests", "--listen", &format!("127.0.0.1:{port}"), "--config"])
        .arg(&config)
        .env("DOCREPL_DIGESTS_TOKEN", token)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let peer_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    common::eventually(Duration::from_secs(30), "the digests service to listen", || async { tokio::net::TcpStream::connect(peer_addr).await.is_ok() }).await;
    let shape = Shape { delay: Duration::from_millis(5), jitter: Duration::ZERO, rate_bits: None };
    let link = Link::start("127.0.0.1:0".parse().unwrap(), peer_addr, Shapes { up: shape, down: shape }).await.unwrap();
    let url = format!("http://{}", link.local_addr);

    // A wrong token is refused, with what to set.
    let (code, out) = repair(&config, &["--source-digests", &url], Some("wrong"));
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("DOCREPL_DIGESTS_TOKEN"), "{out}");

    let before = link.stats();
    let (code, out) = repair(&config, &["--source-digests", &url, "--settle-ms", "100"], Some(token));
    let after = link.stats();
    let _ = peer.kill();
    let _ = peer.wait();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("inserted 50, overwritten 102, deleted 30"), "{out}");
    let (code, text) = verify_documents(&config, 0);
    assert_eq!(code, Some(0), "{text}");

    // Across the link: digests and 182 documents, far from the 20,010 a copy would move.
    let crossed = (after.bytes_up + after.bytes_down) - (before.bytes_up + before.bytes_down);
    let data: u64 = documents().iter().map(|d| bson::to_vec(d).unwrap().len() as u64).sum();
    eprintln!("repair crossed {crossed} bytes for {data} bytes of data:\n{out}");
    assert!(crossed * 10 < data, "{crossed} bytes crossed the link for {data} bytes of data");

    // Kept first: every overwritten and deleted version, as it was on the target.
    let kept = target.database("docrepl").collection::<Document>(docrepl::repair::REPAIRED);
    let ns = format!("{}.c", setup.db);
    assert_eq!(kept.count_documents(doc! {"ns": &ns, "action": "overwritten"}).await.unwrap(), 102);
    assert_eq!(kept.count_documents(doc! {"ns": &ns, "action": "deleted"}).await.unwrap(), 30);
    let one = kept.find_one(doc! {"ns": &ns, "doc_id": 1050}).await.unwrap().expect("the version of 1050");
    assert_eq!(one.get_document("before").unwrap().get_i32("n"), Ok(-1));
    assert_eq!(one.get_document("after").unwrap().get_i32("n"), Ok(1050));
    let gone = kept.find_one(doc! {"ns": &ns, "doc_id": 100_007}).await.unwrap().expect("the deleted extra");
    assert_eq!(gone.get_document("before").unwrap().get_str("only"), Ok("target"));
    assert_eq!(gone.get("after"), Some(&Bson::Null));

    // Equal now: a second repair finds nothing and writes nothing.
    let (code, out) = repair(&config, &[], None);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("inserted 0, overwritten 0, deleted 0"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_under_writes_ends_equal_once_the_stream_catches_up() {
    let setup = Setup::new("repairlive");
    let config = setup.config();
    let source = common::mongo(&common::source_uri()).await;
    let target = common::mongo(&common::target_uri()).await;
    let sc = source.database(&setup.db).collection::<Document>("c");
    let tc = target.database(&setup.db).collection::<Document>("c");
    sc.insert_many((0..5000).map(|i| doc! {"_id": i, "n": 0})).await.unwrap();
    let _run = setup.spawn("run", &[]);
    let (code, out) = verify_documents(&config, 120);
    assert_eq!(code, Some(0), "the copy did not arrive: {out}");
    // Damage the stream does not see.
    tc.update_many(doc! {"_id": {"$lt": 200}}, doc! {"$set": {"n": -1}}).await.unwrap();
    tc.delete_many(doc! {"_id": {"$gte": 3000, "$lt": 3100}}).await.unwrap();

    // A steady mixed load on the source while repair runs: updates of the damaged
    // documents among others, inserts, deletes.
    let load = {
        let sc = sc.clone();
        tokio::spawn(async move {
            for round in 0..80i32 {
                let base = (round * 53) % 5000;
                sc.update_many(doc! {"_id": {"$gte": base, "$lt": base + 20}}, doc! {"$inc": {"n": 1}}).await.unwrap();
                sc.insert_one(doc! {"_id": 10_000 + round, "n": round}).await.unwrap();
                sc.delete_one(doc! {"_id": 4000 + round}).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let (code, out) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || repair(&config, &["--settle-ms", "500", "--max-passes", "30"], None)
    })
    .await
    .unwrap();
    load.await.unwrap();
    assert_eq!(code, Some(0), "{out}");
    let (code, text) = verify_documents(&config, 120);
    assert_eq!(code, Some(0), "{text}\nrepair said:\n{out}");
}
