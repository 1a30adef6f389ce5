//! Lag that means something while idle: once the source goes quiet, its heartbeats keep
//! the sink's recovery point moving (before them it stayed at the last change, and the
//! lag grew as if the target fell behind), and `/status` and `/metrics` split each
//! partition's lag into source, transport and apply, beside the end-to-end lag.

mod common;

use std::time::{Duration, SystemTime};

use bson::{doc, Document};
use serde_json::Value;

use common::{http_get, status_addr, Setup};

async fn recovery_point(addr: &str, topic: &str) -> (Option<SystemTime>, Value) {
    let (_, body) = http_get(addr, "/status", None).await;
    let status: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let point = status["topics"][topic]["recovery_point"].as_str().and_then(|t| humantime::parse_rfc3339(t).ok());
    (point, status)
}

#[tokio::test]
async fn an_idle_sources_heartbeats_keep_the_recovery_point_moving_and_the_lag_is_split() {
    let mut setup = Setup::new("idle");
    setup.source_extra = "collections = [\"c\"]\nheartbeat_ms = 500".into();
    let client = common::mongo(&common::source_uri()).await;
    let coll = client.database(&setup.db).collection::<Document>("c");
    coll.insert_many((0..100).map(|i| doc! {"_id": i})).await.unwrap();
    let run = setup.spawn("run", &[]);
    let addr = status_addr(&run).await;
    let target = common::mongo(&common::target_uri()).await.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(60), "the copy on the target", || async { target.count_documents(doc! {}).await.unwrap_or(0) == 100 }).await;
    coll.insert_one(doc! {"_id": "last change"}).await.unwrap();
    common::eventually(Duration::from_secs(60), "the last change on the target", || async { target.count_documents(doc! {}).await.unwrap_or(0) == 101 }).await;
    let last_change = SystemTime::now();

    // Nothing changes from here on; the recovery point still moves past the last change.
    let topic = setup.topic("c");
    common::eventually(Duration::from_secs(60), "a recovery point while idle", || async { recovery_point(&addr, &topic).await.0.is_some() }).await;
    let first = recovery_point(&addr, &topic).await.0.unwrap();
    common::eventually(Duration::from_secs(60), "the recovery point to move on while the source is idle", || async {
        let (point, _) = recovery_point(&addr, &topic).await;
        point.is_some_and(|p| p > first && p > last_change)
    })
    .await;
    assert!(target.count_documents(doc! {}).await.unwrap() == 101, "heartbeats write nothing");

    // The split: every partition that applied something shows its parts.
    let (_, status) = recovery_point(&addr, &topic).await;
    let rows: Vec<&Value> = status["partitions"].as_object().unwrap().values().filter(|p| !p["lag"].is_null()).collect();
    assert_eq!(rows.len(), 8, "heartbeats reach every partition: {status}");
    for row in rows {
        for part in ["source_seconds", "transport_seconds", "apply_seconds", "end_to_end_seconds"] {
            assert!(row["lag"][part].as_f64().is_some_and(|s| s >= 0.0), "{part} in {row}");
        }
    }
    let (_, metrics) = http_get(&addr, "/metrics", None).await;
    for name in [docrepl::metrics::SINK_LAG_SOURCE_SECONDS, docrepl::metrics::SINK_LAG_TRANSPORT_SECONDS, docrepl::metrics::SINK_LAG_APPLY_SECONDS, docrepl::metrics::SINK_LAG_SECONDS] {
        assert!(metrics.lines().any(|l| l.starts_with(name)), "{name} not in /metrics");
    }
}
