//! A test's own Apache Kafka cluster (KRaft, each node broker and controller), started and
//! stopped through `scripts/services.sh` with the test's own data folder and ports, so the
//! fault tests can kill, stop and restart its nodes without touching the suite's broker.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct KafkaCluster {
    dir: tempfile::TempDir,
    base_port: u16,
    nodes: u16,
    /// Extra settings for scripts/services.sh (TLS, SCRAM users).
    env: Vec<(String, String)>,
}

impl KafkaCluster {
    /// Starts `nodes` nodes; node i listens on `base_port + 10 * (i - 1)` (its controller
    /// on the port after). Three nodes give topics replication factor 3 and
    /// `min.insync.replicas` 2.
    pub fn start(base_port: u16, nodes: u16) -> KafkaCluster {
        Self::start_with(base_port, nodes, &[])
    }

    /// Like `start`, with settings of scripts/services.sh (`DOCREPL_KAFKA_TLS_DIR`, ...).
    pub fn start_with(base_port: u16, nodes: u16, env: &[(&str, &str)]) -> KafkaCluster {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let cluster = KafkaCluster { dir: tempfile::tempdir().expect("tempdir"), base_port, nodes, env };
        cluster.services(&["start", "broker"]);
        cluster
    }

    fn services(&self, args: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh");
        let out = Command::new("bash")
            .arg(script)
            .args(args)
            .env("DOCREPL_DATA", self.dir.path())
            .env("DOCREPL_BROKER_PORT", self.base_port.to_string())
            .env("DOCREPL_KAFKA_NODES", self.nodes.to_string())
            .env("DOCREPL_BROKER_LINKS", "")
            .env("DOCREPL_KAFKA_HEAP", "512m")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run scripts/services.sh");
        assert!(out.status.success(), "services.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn port(&self, node: u16) -> u16 {
        self.base_port + 10 * (node - 1)
    }

    /// The SASL_SSL listener of a node started with `DOCREPL_KAFKA_TLS_DIR`.
    pub fn secure_port(&self, node: u16) -> u16 {
        self.port(node) + 6
    }

    /// `host:port` of every node, as `kafka.bootstrap_servers`.
    pub fn bootstrap(&self) -> String {
        (1..=self.nodes).map(|n| format!("127.0.0.1:{}", self.port(n))).collect::<Vec<_>>().join(",")
    }

    fn pid_file(&self, node: u16) -> PathBuf {
        self.dir.path().join(format!("broker/node{node}/kafka.pid"))
    }

    /// kill -9 of one node.
    pub fn kill9(&self, node: u16) {
        if let Ok(pid) = std::fs::read_to_string(self.pid_file(node)) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
            // Until it is gone, so a restart finds its ports free.
            for _ in 0..100 {
                if !Path::new(&format!("/proc/{}", pid.trim())).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// kill -9 of every node at once: the whole cluster gone.
    pub fn kill9_all(&self) {
        for node in 1..=self.nodes {
            self.kill9(node);
        }
    }

    /// Starts one node again (over its data).
    pub fn start_node(&self, node: u16) {
        self.services(&["start", &format!("broker:{node}")]);
    }

    /// Starts every node again (over their data).
    pub fn start_all(&self) {
        self.services(&["start", "broker"]);
    }

    /// Runs one of Kafka's own tools (`org.apache.kafka.tools.*`) against the cluster;
    /// its output.
    pub fn tool(&self, class: &str, args: &[&str]) -> String {
        let libs = std::env::var("DOCREPL_KAFKA_LIBS").unwrap_or_else(|_| {
            format!("{}/.cache/docrepl/kafka-4.1.1/libs", std::env::var("HOME").unwrap_or_default())
        });
        let out = Command::new("java")
            .arg("-cp")
            .arg(format!("{libs}/*"))
            .arg(class)
            .args(["--bootstrap-server", &self.bootstrap()])
            .args(args)
            .output()
            .expect("run a Kafka tool (java)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{class} {args:?}: {text}");
        text
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        self.kill9_all();
    }
}
