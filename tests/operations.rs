//! Operating docrepl: `/status` and `/metrics` move as events flow, `/readyz` follows the
//! target's availability, bearer tokens guard the endpoints, secrets never show, and
//! SIGTERM stops cleanly.

mod common;

use std::time::Duration;

use bson::{doc, Document};
use serde_json::Value;

use common::{http_get, status_addr, Setup};

#[tokio::test]
async fn status_and_metrics_follow_the_events() {
    let mut setup = Setup::new("ops");
    setup.kafka_extra = "[kafka.properties]\n\"sasl.password\" = \"kafka-secret-pw\"".into();
    let token = "status-token-123";
    let client = common::mongo(&common::source_uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    coll.insert_one(doc! {"_id": 0}).await.unwrap();
    // The bearer token goes in [http]; the config writer puts [http] last.
    let path = setup.config();
    let text = std::fs::read_to_string(&path).unwrap() + &format!("bearer_token = {token:?}\n");
    std::fs::write(&path, text).unwrap();
    let mut run = setup.spawn_with("run", &path, &[]);
    let addr = status_addr(&run).await;

    assert_eq!(http_get(&addr, "/healthz", None).await.0, 200);
    assert_eq!(http_get(&addr, "/status", None).await.0, 401, "/status needs the bearer token");
    assert_eq!(http_get(&addr, "/metrics", Some("wrong")).await.0, 401);

    // Source event times are whole seconds: one second of slack.
    let inserted_at = std::time::SystemTime::now() - Duration::from_secs(1);
    coll.insert_many((1..=500).map(|i| doc! {"_id": i})).await.unwrap();
    let ns = format!("{}.c", setup.db);
    let topic = setup.topic("c");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let last = loop {
        let (code, body) = http_get(&addr, "/status", Some(token)).await;
        let status: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let published = status["collections"][&ns]["events_published"].as_u64().unwrap_or(0);
        let written: u64 = status["partitions"]
            .as_object()
            .map(|p| p.values().filter_map(|v| v["docs_written"].as_u64()).sum())
            .unwrap_or(0);
        let recovered = status["topics"][&topic]["recovery_point"].as_str().and_then(|t| humantime::parse_rfc3339(t).ok());
        if code == 200 && published >= 501 && written >= 501 && recovered.is_some_and(|t| t >= inserted_at) {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "status never showed 501 published and written, with the recovery point past the inserts: {status}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(last["role"], "source+sink");
    assert!(last["history_window_seconds"].as_f64().is_some_and(|w| w > 0.0), "the oplog window is measured: {last}");
    assert_eq!(last["ready"], true);
    assert_eq!(http_get(&addr, "/readyz", None).await.0, 200);

    let (code, metrics) = http_get(&addr, "/metrics", Some(token)).await;
    assert_eq!(code, 200);
    for line in metrics.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not Prometheus text: {line}");
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(docrepl::metrics::ALL.iter().any(|m| name.starts_with(m)), "undocumented metric {name}");
    }
    for name in [
        docrepl::metrics::SOURCE_EVENTS_PUBLISHED,
        docrepl::metrics::SOURCE_CHECKPOINTS,
        docrepl::metrics::SINK_DOCS_WRITTEN,
        docrepl::metrics::SINK_MESSAGES,
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(metrics.contains(&format!("{}_bucket", docrepl::metrics::SINK_WRITE_SECONDS)), "histograms have buckets");

    // No secret in /status, /metrics or the log.
    let (_, status) = http_get(&addr, "/status", Some(token)).await;
    for text in [&status, &metrics, &run.log_text()] {
        assert!(!text.contains("kafka-secret-pw") && !text.contains(token), "a secret leaked");
    }
    assert_eq!(run.terminate(Duration::from_secs(15)), Some(0), "SIGTERM exits 0:\n{}", run.log_text());
}

/// `/readyz` turns unready while the target mongod is down and ready after it is back.
#[tokio::test]
async fn readyz_follows_the_target() {
    let mut target = common::OwnMongod::start(27417).await;
    let setup = Setup::new("ready");
    let path = setup.config_with_target(&target.uri());
    let mut sink = setup.spawn_with("sink", &path, &[]);
    let addr = status_addr(&sink).await;
    common::eventually(Duration::from_secs(30), "ready", || async { http_get(&addr, "/readyz", None).await.0 == 200 }).await;
    target.stop(true);
    common::eventually(Duration::from_secs(30), "unready without the target", || async { http_get(&addr, "/readyz", None).await.0 == 503 }).await;
    assert_eq!(http_get(&addr, "/healthz", None).await.0, 200, "still alive");
    target.restart().await;
    common::eventually(Duration::from_secs(60), "ready again", || async { http_get(&addr, "/readyz", None).await.0 == 200 }).await;
    assert_eq!(sink.terminate(Duration::from_secs(15)), Some(0), "{}", sink.log_text());
}
