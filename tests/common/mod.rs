//! Helpers shared by the integration tests: where the local services are (the ones
//! `scripts/services.sh` starts, or others named by environment variables), unique names,
//! and small clients.
#![allow(dead_code)]

use std::time::Duration;

use docrepl::kafka::KafkaConfig;

pub mod kafka_cluster;

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
    /// `kafka.bootstrap_servers`: the suite's broker unless a test runs its own cluster.
    pub bootstrap: String,
    /// Environment variables of the docrepl processes it starts.
    pub env: Vec<(String, String)>,
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
            bootstrap: broker(),
            env: Vec::new(),
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
            broker = self.bootstrap,
            db = self.db,
            group = self.group,
            prefix = self.prefix,
            source_extra = self.source_extra,
            sink_extra = self.sink_extra,
            kafka_extra = self.kafka_extra,
        );
        // Written aside and renamed: a process started a moment ago may be reading it.
        let path = self.dir.path().join("docrepl.toml");
        let tmp = self.dir.path().join(format!("docrepl.toml.{}", unique("")));
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &path).expect("rename config");
        path
    }

    /// Writes the config with the sink pointed at `target_uri` (a test's own mongod).
    pub fn config_with_target(&self, uri: &str) -> PathBuf {
        let path = self.config();
        let text = std::fs::read_to_string(&path).expect("config").replace(&target_uri(), uri);
        let own = self.dir.path().join("docrepl-own-target.toml");
        std::fs::write(&own, text).expect("write config");
        own
    }

    /// Starts `docrepl <command> --config <this config> [args]`; its log goes to a file
    /// in the test's directory (printed when the process is dropped after a failure).
    pub fn spawn(&self, command: &str, args: &[&str]) -> Proc {
        self.spawn_with(command, &self.config(), args)
    }

    /// Starts `docrepl <command>`, which must stop by itself within 90 s (a refused
    /// start): its exit code and log.
    pub fn run_to_exit(&self, command: &str) -> (Option<i32>, String) {
        let mut p = self.spawn(command, &[]);
        let code = p.wait_exit(Duration::from_secs(90));
        (code, p.log_text())
    }

    /// Like `spawn`, with a config file the test wrote or edited itself.
    pub fn spawn_with(&self, command: &str, config: &Path, args: &[&str]) -> Proc {
        let log = self.dir.path().join(format!("{command}-{}.log", unique("")));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_docrepl"))
            .arg(command)
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "info,rdkafka=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start docrepl");
        Proc { child: Some(child), log }
    }
}

/// `docrepl verify --config <config> --wait-for-quiet <secs>`: (exit code, its output).
pub fn verify(config: &Path, wait_secs: u32) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_docrepl"))
        .args(["verify", "--config"])
        .arg(config)
        .args(["--wait-for-quiet", &wait_secs.to_string()])
        .output()
        .expect("run docrepl verify");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
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

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
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

/// Waits, off the async runtime's threads, up to 300 s for a process that ends by itself
/// (a loadgen, a verify) and fails the test with its log unless it exited 0.
pub async fn expect_success(mut p: Proc, what: &str) {
    let (code, p) = tokio::task::spawn_blocking(move || (p.wait_exit(Duration::from_secs(300)), p)).await.unwrap();
    assert_eq!(code, Some(0), "{what} failed:\n{}", p.log_text());
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

/// The `id` of a Debezium key (`{"id":"..."}`), or "" when there is none.
pub fn key_id(m: &rdkafka::message::OwnedMessage) -> String {
    use rdkafka::Message;
    let k: serde_json::Value = serde_json::from_slice(m.key().unwrap_or(b"{}")).unwrap_or_default();
    k["id"].as_str().unwrap_or_default().to_string()
}

/// A `consume` stop condition: true once `n` distinct document keys were seen
/// (incremental, so a large topic is not re-parsed for every message). Control messages
/// (metadata, clear markers) have no document key and do not count.
pub fn distinct_keys_at_least(n: usize) -> impl FnMut(&[rdkafka::message::OwnedMessage]) -> bool {
    let mut ids = std::collections::HashSet::new();
    let mut seen = 0;
    move |m| {
        ids.extend(m[seen..].iter().map(key_id).filter(|id| !id.is_empty()));
        seen = m.len();
        ids.len() >= n
    }
}

/// Inserts `_id`s `0..chunks * per_chunk` in `chunks` batches, 100 ms apart, in the
/// background: load that keeps going while a test kills something.
pub fn spawn_inserts(
    coll: &mongodb::Collection<bson::Document>,
    chunks: i32,
    per_chunk: i32,
) -> tokio::task::JoinHandle<()> {
    let coll = coll.clone();
    tokio::spawn(async move {
        for chunk in 0..chunks {
            let docs: Vec<bson::Document> = (0..per_chunk).map(|i| bson::doc! {"_id": chunk * per_chunk + i}).collect();
            coll.insert_many(docs).await.expect("insert");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// True for docrepl's metadata messages (a collection's options and indexes) and
/// heartbeats, on every partition of a topic: they are not document events.
pub fn is_control_message(m: &rdkafka::message::OwnedMessage) -> bool {
    use rdkafka::Message;
    m.key().is_some_and(|k| k.starts_with(br#"{"docrepl_metadata""#) || k.starts_with(br#"{"docrepl_heartbeat""#))
}

/// Reads `topic` from the beginning until `done(messages so far)` or `within` passes.
/// Metadata messages and heartbeats are left out: the tests that read topics look at
/// document events.
pub async fn consume(
    topic: &str,
    within: Duration,
    done: impl FnMut(&[rdkafka::message::OwnedMessage]) -> bool,
) -> Vec<rdkafka::message::OwnedMessage> {
    consume_from(&broker(), topic, within, done).await
}

/// `consume` from the cluster at `bootstrap` (a test's own).
pub async fn consume_from(
    bootstrap: &str,
    topic: &str,
    within: Duration,
    mut done: impl FnMut(&[rdkafka::message::OwnedMessage]) -> bool,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let mut kafka = kafka_config("unused", 8);
    kafka.bootstrap_servers = bootstrap.to_string();
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
            Ok(Ok(m)) => {
                let m = m.detach();
                if !is_control_message(&m) {
                    out.push(m);
                }
            }
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

/// A mongod of a test's own (single-node replica set on its own port and data folder),
/// for tests that stop or restart a server; stopped when dropped.
pub struct OwnMongod {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra mongod arguments (TLS, ...).
    args: Vec<String>,
    /// Extra connection-string options clients need (`tls=true&tlsCAFile=...`).
    uri_options: String,
}

impl OwnMongod {
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?replicaSet=rs-own{}{}", self.port, self.port, self.extra_options())
    }

    fn direct_uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true{}", self.port, self.extra_options())
    }

    fn extra_options(&self) -> String {
        if self.uri_options.is_empty() {
            String::new()
        } else {
            format!("&{}", self.uri_options)
        }
    }

    /// Starts mongod (binary from DOCREPL_MONGOD_BIN, set by scripts/test.sh) and
    /// initiates its replica set.
    pub async fn start(port: u16) -> OwnMongod {
        Self::start_with(port, Vec::new(), "").await
    }

    /// Like `start`, with extra mongod arguments and the connection-string options
    /// clients then need.
    pub async fn start_with(port: u16, args: Vec<String>, uri_options: &str) -> OwnMongod {
        let mut m = OwnMongod {
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            args,
            uri_options: uri_options.to_string(),
        };
        m.launch();
        let client = mongodb::Client::with_uri_str(m.direct_uri()).await.expect("client");
        let init = bson::doc! {"replSetInitiate": {"_id": format!("rs-own{port}"), "members": [{"_id": 0, "host": format!("127.0.0.1:{port}")}]}};
        let mut tries = 0;
        while let Err(e) = client.database("admin").run_command(init.clone()).await {
            tries += 1;
            assert!(tries < 100, "cannot initiate the test mongod on {port}: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        m.wait_primary().await;
        m
    }

    fn launch(&mut self) {
        let bin = std::env::var("DOCREPL_MONGOD_BIN").unwrap_or_else(|_| {
            format!("{}/.cache/docrepl/mongod-6.0.5/bin/mongod", std::env::var("HOME").unwrap_or_default())
        });
        let log = std::fs::File::create(self.dir.path().join("mongod.log")).expect("log");
        std::fs::create_dir_all(self.dir.path().join("db")).expect("db dir");
        let child = Command::new(bin)
            .args(["--bind_ip", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--replSet", &format!("rs-own{}", self.port), "--wiredTigerCacheSizeGB", "0.25", "--oplogSize", "990"])
            .args(&self.args)
            .arg("--dbpath")
            .arg(self.dir.path().join("db"))
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("start mongod (run scripts/setup.sh)");
        self.child = Some(child);
    }

    /// The mongod's log (its stdout: one JSON object per line).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mongod.log")
    }

    pub async fn wait_primary(&self) {
        let client = mongodb::Client::with_uri_str(self.direct_uri()).await.expect("client");
        for _ in 0..300 {
            if let Ok(hello) = client.database("admin").run_command(bson::doc! {"hello": 1}).await {
                if hello.get_bool("isWritablePrimary").unwrap_or(false) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("test mongod on {} did not become primary", self.port);
    }

    /// kill -9 (or a clean stop when `clean`).
    pub fn stop(&mut self, clean: bool) {
        if let Some(mut c) = self.child.take() {
            if clean {
                let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            } else {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.stop(true);
        self.launch();
        self.wait_primary().await;
    }
}

impl Drop for OwnMongod {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// The address a docrepl process logged for its status listener.
pub async fn status_addr(proc_: &Proc) -> String {
    for _ in 0..150 {
        let log = proc_.log_text();
        if let Some(rest) = log.split("status listening on http://").nth(1) {
            if let Some(addr) = rest.split("/status").next() {
                return addr.to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no status listener in the log:\n{}", proc_.log_text());
}

/// A plain HTTP GET on loopback: (status code, body).
pub async fn http_get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the status listener");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// A broker's PKCS#12 keystore `broker.p12` in `dir`, from `make_certificates`' server
/// certificate.
pub fn broker_keystore(dir: &Path, password: &str) {
    let out = Command::new("openssl")
        .args(["pkcs12", "-export", "-in", "server.crt", "-inkey", "server.key", "-out", "broker.p12", "-passout", &format!("pass:{password}")])
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, and a server certificate for 127.0.0.1 signed by it, made with openssl.
pub fn make_certificates(dir: &Path) -> (PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (apt install openssl)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=docrepl test CA"]);
    run(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(&["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext"]);
    let pem = [std::fs::read(dir.join("server.crt")).unwrap(), std::fs::read(dir.join("server.key")).unwrap()].concat();
    std::fs::write(dir.join("server.pem"), pem).unwrap();
    (dir.join("ca.pem"), dir.join("server.pem"))
}

