//! Both of Kafka's consumer group protocols against the real broker, with the librdkafka
//! the `rdkafka` crate bundles: the classic one (eager rebalances, the member's own
//! session timeout) and Kafka 4's `consumer` protocol (KIP-848: the broker assigns, one
//! partition at a time, and owns the session timeout). Under each, two sink members share
//! the partitions, a third joins and one is killed with -9 during a mixed load, and the
//! target ends `verify` equal.

mod common;

use std::time::Duration;

use common::Setup;

async fn members_come_and_go_under(protocol: &str) {
    let mut setup = Setup::new(&format!("gp{protocol}"));
    setup.source_extra = "collections = [\"c\"]".into();
    setup.kafka_extra = format!("group_protocol = {protocol:?}");
    let preload = setup.spawn("loadgen", &["--collection", "c", "-n", "1000", "--shape", "types", "--seed", "3"]);
    common::expect_success(preload, "the preload").await;
    let source = setup.spawn("source", &[]);
    let mut a = setup.spawn("sink", &[]);
    let b = setup.spawn("sink", &[]);
    common::eventually(Duration::from_secs(60), "both members to hold partitions", || async {
        a.log_text().contains("worker started") && b.log_text().contains("worker started")
    })
    .await;
    let load = setup.spawn(
        "loadgen",
        &["--collection", "c", "-n", "6000", "--shape", "types", "--mix", "40:30:15:15", "--hot", "1000", "--append", "--rate", "400", "--batch", "20", "--concurrency", "2"],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = setup.spawn("sink", &[]);
    common::eventually(Duration::from_secs(60), "the third member to take partitions", || async { c.log_text().contains("worker started") }).await;
    a.kill9();
    common::expect_success(load, "the mixed load").await;
    let (code, out) = common::verify(&setup.config(), 240);
    assert_eq!(code, Some(0), "group protocol {protocol}: the target differs:\n{out}\nsource:\n{}\nb:\n{}\nc:\n{}", source.log_text(), b.log_text(), c.log_text());
    if protocol == "consumer" {
        assert!(b.log_text().contains("consumer group protocol (KIP-848)"), "{}", b.log_text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_come_and_go_under_the_classic_protocol() {
    members_come_and_go_under("classic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_come_and_go_under_the_consumer_protocol() {
    members_come_and_go_under("consumer").await;
}

/// Under the consumer protocol the broker's session timeout (45 s by default) must not be
/// shorter than the sink's own, which bounds every write: a sink that asks for more is
/// refused at start with both numbers.
#[tokio::test]
async fn a_sink_session_timeout_above_the_brokers_is_refused_under_the_consumer_protocol() {
    let mut setup = Setup::new("gpslow");
    setup.kafka_extra = "group_protocol = \"consumer\"".into();
    setup.sink_extra = "write_timeout_ms = 10000".into();
    let config = setup.config().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(&config).unwrap().replace("session_timeout_ms = 6000", "session_timeout_ms = 90000");
    let path = setup.dir.path().join("slow.toml");
    std::fs::write(&path, text).unwrap();
    let mut sink = setup.spawn_with("sink", &path, &[]);
    let code = sink.wait_exit(Duration::from_secs(60));
    assert_ne!(code, Some(0), "{}", sink.log_text());
    let log = sink.log_text();
    assert!(log.contains("below sink.session_timeout_ms = 90000") && log.contains("is 45000 ms"), "{log}");
}
