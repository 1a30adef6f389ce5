//! The `[sink]` section: which target cluster to write, which topics to read, and how to
//! batch, pace and retry.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::{require_at_least, validate_mongo_uri, ConfigError};
use crate::event::Namespace;
use crate::flavor::{Flavor, FlavorSetting};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Connection string of the target cluster.
    pub uri: String,
    /// A file holding the password of the URI's user (a mounted Kubernetes secret), read
    /// at start; the URI then names the user only. Not with `password_env`.
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// An environment variable holding that password (set from a secret).
    #[serde(default)]
    pub password_env: Option<String>,
    /// What the target cluster is: `auto` (from its host names), `mongodb` or `documentdb`.
    #[serde(default)]
    pub flavor: FlavorSetting,
    /// Kafka consumer group; sink instances with the same group share the partitions.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Topics to consume. Empty (default): every topic matching `^<topic_prefix>\.`.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Most messages in one batch of one partition.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest wait to fill a batch, in milliseconds.
    #[serde(default = "default_batch_ms")]
    pub batch_ms: u64,
    /// Write concern of every write: `"majority"` (default) or a number of nodes.
    #[serde(default = "default_write_concern", deserialize_with = "crate::config::scalar_as_text")]
    pub write_concern: String,
    /// Write-concern timeout in milliseconds (at most the write time limit: half of
    /// `session_timeout_ms`).
    #[serde(default = "default_wtimeout")]
    pub write_timeout_ms: u64,
    /// Ceiling on documents written per second by this process (0 = none).
    #[serde(default)]
    pub max_docs_per_sec: u32,
    /// How long a duplicate-key error on a unique secondary index is retried before the
    /// document goes to the dead-letter topic (order across documents is not kept, so such
    /// a conflict often resolves itself).
    #[serde(default = "default_duplicate_key_retry")]
    pub duplicate_key_retry_ms: u64,
    /// Longest pause between retries of a transient error.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
    /// Kafka consumer session timeout: how fast a dead member's partitions move on. Every
    /// write is bounded by half of it (`maxTimeMS` on the server, a little more on the
    /// client), so a member that loses its partitions falls silent before another takes
    /// them over; raise it for a target that needs longer per write.
    #[serde(default = "default_session_timeout")]
    pub session_timeout_ms: u64,
    /// The target's database where the sink records each collection's source metadata
    /// (for `docrepl cutover`, which may run when the source is gone).
    #[serde(default = "default_state_database")]
    pub state_database: String,
    /// Target names per source namespace: `"app.orders" = "app_copy.orders"`.
    /// Namespaces not listed keep their names.
    #[serde(default)]
    pub namespace_map: BTreeMap<String, String>,
}

fn default_state_database() -> String {
    "docrepl".into()
}
fn default_group() -> String {
    "docrepl-sink".into()
}
// Each worker holds its batch's messages (and librdkafka the buffers they were
// decompressed into) until the target acknowledged: a 1M-document drain (`docrepl run`, 8
// partitions) ran as fast with 2,500 as with 5,000 (89k docs/s) at 220 instead of 270-290 MB.
fn default_batch_size() -> usize {
    2500
}
// Every change of a partition that is not busy waits up to this long at the sink: at
// 5,000 docs/s over 8 partitions (about 30 per partition in 50 ms) no batch fills, so the
// wait was most of the end-to-end lag. Measured at RTT 0 (docrepl source + sink, 15 s of
// lag markers): p50/p99 70/127 ms at 50, 30/88 at 10, with the same sink CPU (58 and 59
// ticks for the run). A backlog fills batches at once, so catch-up does not wait either way.
fn default_batch_ms() -> u64 {
    10
}
fn default_write_concern() -> String {
    "majority".into()
}
fn default_wtimeout() -> u64 {
    10_000
}
fn default_duplicate_key_retry() -> u64 {
    30_000
}
fn default_max_backoff() -> u64 {
    5_000
}
fn default_session_timeout() -> u64 {
    10_000
}

impl SinkConfig {
    /// The longest the target may take for one write command (its `maxTimeMS`): half
    /// the session timeout, so a write is over, applied or aborted by the server, before
    /// the group moves the partition to another member.
    pub fn write_time_limit(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.session_timeout_ms / 2)
    }

    /// How long the sink waits for a write's answer: the time limit and a margin for the
    /// answer to arrive (a server that cannot answer is given up on; the write is retried).
    pub fn write_deadline(&self) -> std::time::Duration {
        self.write_time_limit() + std::time::Duration::from_millis((self.session_timeout_ms / 4).min(1000))
    }

    /// Where documents of the source namespace `ns` are written (`namespace_map`, or the
    /// same names).
    pub fn target_namespace(&self, ns: &Namespace) -> Namespace {
        self.namespace_map
            .get(&ns.to_string())
            .and_then(|t| t.split_once('.'))
            .map(|(db, coll)| Namespace::new(db, coll))
            .unwrap_or_else(|| ns.clone())
    }

    /// The target cluster's flavour and why it was chosen.
    pub fn flavor(&self) -> (Flavor, &'static str) {
        crate::flavor::resolve(self.flavor, &self.uri)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_mongo_uri("sink.uri", &self.uri)?;
        if self.group_id.trim().is_empty() {
            return Err(ConfigError::invalid("sink.group_id", "must not be empty"));
        }
        require_at_least("sink.batch_size", self.batch_size, 1)?;
        if self.batch_size > 100_000 {
            return Err(ConfigError::invalid("sink.batch_size", "must be at most 100000 (MongoDB's statements per command)"));
        }
        require_at_least("sink.batch_ms", self.batch_ms, 1)?;
        crate::source::validate_db_name("sink.state_database", &self.state_database)?;
        require_at_least("sink.session_timeout_ms", self.session_timeout_ms, 1000)?;
        require_at_least("sink.max_backoff_ms", self.max_backoff_ms, 10)?;
        if self.write_concern != "majority" && self.write_concern.parse::<u32>().is_err() {
            return Err(ConfigError::invalid(
                "sink.write_concern",
                format!("expected \"majority\" or a number of nodes (got {:?})", self.write_concern),
            ));
        }
        if self.write_concern.parse::<u32>() == Ok(0) {
            // w: 0 acknowledges nothing, yet the sink commits offsets after each write: a
            // refused or lost write would be skipped for good.
            return Err(ConfigError::invalid(
                "sink.write_concern",
                "0 acknowledges nothing, so offsets would be committed for writes that may never have happened: use \"majority\" (default) or at least 1",
            ));
        }
        for (from, to) in &self.namespace_map {
            for (what, ns) in [("source", from), ("target", to)] {
                let ok = ns.split_once('.').is_some_and(|(d, c)| !d.is_empty() && !c.is_empty());
                if !ok {
                    return Err(ConfigError::invalid(
                        format!("sink.namespace_map.{from:?}"),
                        format!("{what} namespace {ns:?} must be \"database.collection\""),
                    ));
                }
            }
        }
        Ok(())
    }
}
