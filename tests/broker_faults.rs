//! Broker faults on a real three-node Apache Kafka cluster (KRaft, replication factor 3,
//! `min.insync.replicas` 2), each of the test's own, under a mixed load of every BSON
//! type: a node killed with -9 (no loss with `acks=all`, writes go on), the whole cluster
//! down for 60 s and back (docrepl waits, says so in `/status` and `/readyz`, resumes
//! without a copy), and partition leaders moved by a reassignment. Each ends with
//! `docrepl verify` equal, document for document and byte for byte.
//!
//! The three tests take turns (a cluster each, three JVMs on two cores).

mod common;

use std::time::{Duration, Instant};

use bson::Document;
use common::kafka_cluster::KafkaCluster;
use common::{Proc, Setup};

static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A pipeline (one source, one sink) through `cluster`, after 2,000 documents of every
/// BSON type were copied.
async fn pipeline(name: &str, cluster: &KafkaCluster) -> (Setup, Proc, Proc) {
    let mut setup = Setup::new(name);
    setup.bootstrap = cluster.bootstrap();
    setup.source_extra = "collections = [\"c\"]".into();
    let loaded = setup.spawn("loadgen", &["--collection", "c", "-n", "2000", "--shape", "types", "--seed", "7"]);
    common::expect_success(loaded, "the preload").await;
    let source = setup.spawn("source", &[]);
    let sink = setup.spawn("sink", &[]);
    let (code, out) = common::verify(&setup.config(), 180);
    assert_eq!(code, Some(0), "the initial copy through the cluster:\n{out}\n{}\n{}", source.log_text(), sink.log_text());
    (setup, source, sink)
}

/// Mixed changes (inserts, updates, deletes, replaces over the 2,000 hot documents) at
/// about 400 a second for `ops / 400` seconds: a loadgen process.
fn mixed_load(setup: &Setup, ops: u32) -> Proc {
    setup.spawn(
        "loadgen",
        &["--collection", "c", "-n", &ops.to_string(), "--shape", "types", "--mix", "40:30:15:15", "--hot", "2000", "--append", "--rate", "400", "--batch", "20", "--concurrency", "2"],
    )
}

async fn target_count(setup: &Setup) -> u64 {
    let client = common::mongo(&common::target_uri()).await;
    client.database(&setup.db).collection::<Document>("c").count_documents(bson::doc! {}).await.unwrap_or(0)
}

fn assert_equal(setup: &Setup, what: &str, procs: &[&Proc]) {
    let (code, out) = common::verify(&setup.config(), 240);
    let logs: Vec<String> = procs.iter().map(|p| p.log_text()).collect();
    assert_eq!(code, Some(0), "{what}: the target differs:\n{out}\n{}", logs.join("\n----\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_minus_9_loses_nothing_and_writes_go_on() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = KafkaCluster::start(19500, 3);
    let (setup, source, sink) = pipeline("bkill", &cluster).await;
    let load = mixed_load(&setup, 8000);
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.kill9(2);
    // With two of three replicas in sync, acks=all writes still succeed: the target keeps
    // taking new documents while the node is down.
    let before = target_count(&setup).await;
    common::eventually(Duration::from_secs(60), "the target to take new documents with a node down", || async {
        target_count(&setup).await > before + 100
    })
    .await;
    common::expect_success(load, "the mixed load").await;
    assert_equal(&setup, "after a node was killed", &[&source, &sink]);
    cluster.start_node(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_down_for_60_s_is_waited_out_and_said() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = KafkaCluster::start(19530, 3);
    let (setup, mut source, mut sink) = pipeline("bdown", &cluster).await;
    let (source_http, sink_http) = (common::status_addr(&source).await, common::status_addr(&sink).await);
    let load = mixed_load(&setup, 12000);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.kill9_all();
    let down = Instant::now();

    // Both processes stay up, not ready, and name the broker as the reason.
    for (side, addr) in [("source", &source_http), ("sink", &sink_http)] {
        common::eventually(Duration::from_secs(30), &format!("the {side}'s /readyz to say the broker is unreachable"), || async {
            let (code, body) = common::http_get(addr, "/readyz", None).await;
            code == 503 && body.contains("broker")
        })
        .await;
        let (_, status) = common::http_get(addr, "/status", None).await;
        let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
        assert_eq!(status["connections"]["broker"]["reachable"], serde_json::json!(false), "{side} /status: {status}");
    }
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(down.elapsed())).await;
    assert!(source.is_running() && sink.is_running(), "a process gave up during the outage:\n{}\n{}", source.log_text(), sink.log_text());

    cluster.start_all();
    for (side, addr) in [("source", &source_http), ("sink", &sink_http)] {
        common::eventually(Duration::from_secs(60), &format!("the {side} to be ready again"), || async {
            common::http_get(addr, "/readyz", None).await.0 == 200
        })
        .await;
    }
    common::expect_success(load, "the mixed load").await;
    assert_equal(&setup, "after the cluster was down for 60 s", &[&source, &sink]);
    // Resumed from its checkpoint: one initial copy in the source's whole log.
    assert_eq!(source.log_text().matches("initial copy starting").count(), 1, "copied again:\n{}", source.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_moved_by_a_reassignment_during_the_load_lose_nothing() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = KafkaCluster::start(19560, 3);
    let (setup, source, sink) = pipeline("bmove", &cluster).await;
    let topic = setup.topic("c");
    let leaders_before = leaders(&cluster, &topic);
    let load = mixed_load(&setup, 8000);
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Every partition's replica list rotated by one, then the preferred leaders elected:
    // each partition's leader moves to another node while both sides use it.
    let plan = serde_json::json!({
        "version": 1,
        "partitions": leaders_before.iter().map(|(p, replicas)| {
            let mut r = replicas.clone();
            r.rotate_left(1);
            serde_json::json!({"topic": topic, "partition": p, "replicas": r})
        }).collect::<Vec<_>>()
    });
    let plan_file = cluster.dir().join("reassignment.json");
    std::fs::write(&plan_file, plan.to_string()).unwrap();
    cluster.tool("org.apache.kafka.tools.reassign.ReassignPartitionsCommand", &["--execute", "--reassignment-json-file", plan_file.to_str().unwrap()]);
    common::eventually(Duration::from_secs(60), "the reassignment to complete", || async {
        let state = cluster.tool("org.apache.kafka.tools.reassign.ReassignPartitionsCommand", &["--verify", "--reassignment-json-file", plan_file.to_str().unwrap()]);
        state.contains("is completed") && !state.contains("in progress")
    })
    .await;
    cluster.tool("org.apache.kafka.tools.LeaderElectionCommand", &["--election-type", "PREFERRED", "--all-topic-partitions"]);
    let leaders_after = leaders(&cluster, &topic);
    let moved = leaders_before.iter().filter(|(p, r)| leaders_after.iter().any(|(q, s)| q == p && s[0] != r[0])).count();
    assert_eq!(moved, leaders_before.len(), "every leader moved: before {leaders_before:?}, after {leaders_after:?}");

    common::expect_success(load, "the mixed load").await;
    assert_equal(&setup, "after the leaders moved", &[&source, &sink]);
}

/// Each partition of `topic` with its replica list, the leader first (Kafka's
/// kafka-topics --describe).
fn leaders(cluster: &KafkaCluster, topic: &str) -> Vec<(i32, Vec<i32>)> {
    let text = cluster.tool("org.apache.kafka.tools.TopicCommand", &["--describe", "--topic", topic]);
    text.lines()
        .filter_map(|line| {
            let field = |name: &str| line.split(&format!("{name}: ")).nth(1).map(|v| v.split_whitespace().next().unwrap_or("").to_string());
            let partition: i32 = field("Partition")?.parse().ok()?;
            let leader: i32 = field("Leader")?.parse().ok()?;
            let mut replicas: Vec<i32> = field("Replicas")?.split(',').filter_map(|r| r.parse().ok()).collect();
            // Leader first, the others in their order.
            replicas.retain(|r| *r != leader);
            replicas.insert(0, leader);
            Some((partition, replicas))
        })
        .collect()
}
