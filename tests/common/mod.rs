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

// ---------------------------------------------------------------------------------------
// Running docrepl as a real process against the local services
// ---------------------------------------------------------------------------------------

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A docrepl configuration with names no other test uses.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub prefix: String,
    pub db: String,
    pub group: String,
    /// Extra TOML lines appended to each section.
    pub source_extra: String,
    pub sink_extra: String,
    pub kafka_extra: String,
}

impl Setup {
    pub fn new(name: &str) -> Setup {
        let tag = unique("");
        Setup {
            dir: tempfile::tempdir().expect("tempdir"),
            prefix: format!("t{name}{tag}"),
            db: format!("{name}{tag}"),
            group: format!("g{name}{tag}"),
            source_extra: String::new(),
            sink_extra: String::new(),
            kafka_extra: String::new(),
        }
    }

    pub fn topic(&self, coll: &str) -> String {
        format!("{}.{}.{}", self.prefix, self.db, coll)
    }

    pub fn dead_letter_topic(&self) -> String {
        format!("{}-dead-letters", self.prefix)
    }

    /// Writes the config file and returns its path.
    pub fn config(&self) -> PathBuf {
        let text = format!(
            r#"
[source]
uri = {src:?}
database = {db:?}
lease_ttl_ms = 6000
checkpoint_interval_ms = 200
{source_extra}

[sink]
uri = {tgt:?}
group_id = {group:?}
batch_ms = 20
session_timeout_ms = 6000
max_backoff_ms = 500
{sink_extra}

[kafka]
bootstrap_servers = {broker:?}
topic_prefix = {prefix:?}
partitions = 8
{kafka_extra}

[http]
listen = "127.0.0.1:0"
"#,
            src = source_uri(),
            tgt = target_uri(),
            broker = broker(),
            db = self.db,
            group = self.group,
            prefix = self.prefix,
            source_extra = self.source_extra,
            sink_extra = self.sink_extra,
            kafka_extra = self.kafka_extra,
        );
        let path = self.dir.path().join("docrepl.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Starts `docrepl <command> --config <this config> [args]`; its log goes to a file
    /// in the test's directory (printed when the process is dropped after a failure).
    pub fn spawn(&self, command: &str, args: &[&str]) -> Proc {
        let config = self.config();
        let log = self.dir.path().join(format!("{command}-{}.log", unique("")));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_docrepl"))
            .arg(command)
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("RUST_LOG", "info,rdkafka=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start docrepl");
        Proc { child: Some(child), log }
    }
}

/// A running docrepl process, killed when dropped.
pub struct Proc {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// kill -9: no chance to flush or save anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `within` for the exit code.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `within` for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let c = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- docrepl log {} ----\n{}", self.log.display(), self.log_text());
        }
    }
}

/// Polls `check` every 200 ms until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads `topic` from the beginning until `done(messages so far)` or `within` passes.
pub async fn consume(
    topic: &str,
    within: Duration,
    mut done: impl FnMut(&[rdkafka::message::OwnedMessage]) -> bool,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let kafka = kafka_config("unused", 8);
    let consumer: StreamConsumer = docrepl::kafka::consumer_config(&kafka, &unique("reader"), 6000)
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while !done(&out) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            // The topic may not exist yet (the service creates it at start).
            Ok(Err(e)) if e.to_string().contains("Unknown topic") => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(Err(e)) => panic!("consume {topic}: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// Every document of a collection, in `_id` order, as BSON bytes (field order counts).
pub async fn documents(client: &mongodb::Client, db: &str, coll: &str) -> Vec<(String, Vec<u8>)> {
    use futures::TryStreamExt;
    let c = client.database(db).collection::<bson::RawDocumentBuf>(coll);
    let docs: Vec<bson::RawDocumentBuf> =
        c.find(bson::doc! {}).sort(bson::doc! {"_id": 1}).await.expect("find").try_collect().await.expect("cursor");
    docs.into_iter()
        .map(|d| {
            let id = d.get("_id").ok().flatten().map(|v| format!("{v:?}")).unwrap_or_default();
            (id, d.as_bytes().to_vec())
        })
        .collect()
}
