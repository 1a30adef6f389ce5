//! Helpers shared by the integration tests: where the local services are (the ones
//! `scripts/services.sh` starts, or others named by environment variables), unique names,
//! and small clients.
#![allow(dead_code)]

use std::time::Duration;

use docrepl::kafka::KafkaConfig;

pub fn source_uri() -> String {
    std::env::var("DOCREPL_TEST_SOURCE_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27117/?replicaSet=rs-source".into())
}

pub fn target_uri() -> String {
    std::env::var("DOCREPL_TEST_TARGET_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27217/?replicaSet=rs-target".into())
}

pub fn broker() -> String {
    std::env::var("DOCREPL_TEST_BROKER").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    use rand::Rng;
    let n: u32 = rand::rng().random();
    format!("{prefix}{n:08x}")
}

pub fn kafka_config(prefix: &str, partitions: i32) -> KafkaConfig {
    let text = format!(
        "bootstrap_servers = {:?}\ntopic_prefix = {:?}\npartitions = {partitions}\n",
        broker(),
        prefix
    );
    toml::from_str(&text).expect("test kafka config")
}

pub async fn mongo(uri: &str) -> mongodb::Client {
    let mut opts = mongodb::options::ClientOptions::parse(uri).await.expect("test uri");
    opts.server_selection_timeout = Some(Duration::from_secs(10));
    let client = mongodb::Client::with_options(opts).expect("mongo client");
    client
        .database("admin")
        .run_command(bson::doc! {"ping": 1})
        .await
        .unwrap_or_else(|e| panic!("cannot reach {uri}: {e}. Start the local services: scripts/services.sh start"));
    client
}
