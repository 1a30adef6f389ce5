//! The `[kafka]` section: where the broker is and how topics are named and sized.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::{require_at_least, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]` of the Kafka cluster.
    pub bootstrap_servers: String,
    /// Topic names are `<topic_prefix>.<database>.<collection>`, like Debezium's.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// `collection` (default): a topic per collection, `<prefix>.<db>.<coll>`, as Debezium
    /// names them; `database`: one topic per database, `<prefix>.<db>`, carrying all its
    /// collections (each event names its collection; the sink folds and writes by
    /// namespace and `_id`), for thousands of collections.
    #[serde(default)]
    pub topic_per: TopicPer,
    /// Partitions of each collection topic (created at start when missing; an existing
    /// topic with another count is an error, because it would reshuffle keys).
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replicas of each topic docrepl creates; -1 (default) takes the broker's
    /// `default.replication.factor`, so a production cluster's usual 3 is not silently 1.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// `lz4` (default), `zstd`, `snappy`, `gzip` or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// The largest message the topics accept (`max.message.bytes`, set on topics we create).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Where messages that cannot be produced or applied go, with the reason in headers.
    /// Default: `<topic_prefix>-dead-letters` (outside the `<prefix>.` topic pattern).
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// The sink's consumer group protocol: `classic` (default; every broker) or `consumer`
    /// (KIP-848, Apache Kafka 4.0 and later: the broker computes assignments and moves
    /// partitions one at a time; its `group.consumer.session.timeout.ms` then decides when
    /// a silent member loses them, and must be at least `sink.session_timeout_ms`).
    #[serde(default)]
    pub group_protocol: GroupProtocol,
    /// librdkafka properties passed through to every client (security.protocol, sasl.*,
    /// ssl.*, ...). They win over docrepl's defaults. Numbers and booleans are taken as
    /// their text (`"linger.ms" = 5` and `DOCREPL_KAFKA__PROPERTIES__LINGER_MS=5` work).
    #[serde(default, deserialize_with = "properties_as_text")]
    pub properties: BTreeMap<String, String>,
}

/// librdkafka takes every property as text.
fn properties_as_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw: BTreeMap<String, crate::config::Scalar> = BTreeMap::deserialize(d)?;
    Ok(raw.into_iter().map(|(k, v)| (k, v.into_text())).collect())
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    #[default]
    Lz4,
    Zstd,
    Snappy,
    Gzip,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Snappy => "snappy",
            Compression::Gzip => "gzip",
        }
    }
}

/// Kafka's consumer group protocols (see `KafkaConfig::group_protocol`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GroupProtocol {
    #[default]
    Classic,
    Consumer,
}

/// How collections map to topics (see `KafkaConfig::topic_per`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TopicPer {
    #[default]
    Collection,
    Database,
}

fn default_prefix() -> String {
    "docrepl".into()
}
fn default_partitions() -> i32 {
    8
}
fn default_replication_factor() -> i32 {
    -1
}
fn default_max_message_bytes() -> usize {
    1_048_576
}

impl KafkaConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty()
            || self.bootstrap_servers.split(',').any(|s| !s.trim().contains(':'))
        {
            return Err(ConfigError::invalid(
                "kafka.bootstrap_servers",
                format!("expected host:port[,host:port...] (got {:?})", self.bootstrap_servers),
            ));
        }
        if self.topic_prefix.is_empty()
            || !self.topic_prefix.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(ConfigError::invalid(
                "kafka.topic_prefix",
                "must be non-empty and use only letters, digits, '.', '_' and '-'",
            ));
        }
        require_at_least("kafka.partitions", self.partitions, 1)?;
        if self.replication_factor != -1 && self.replication_factor < 1 {
            return Err(ConfigError::invalid(
                "kafka.replication_factor",
                format!("must be -1 (the broker's default.replication.factor) or at least 1 (got {})", self.replication_factor),
            ));
        }
        require_at_least("kafka.max_message_bytes", self.max_message_bytes, 1024)?;
        if self.properties.contains_key("group.protocol") {
            return Err(ConfigError::invalid(
                "kafka.properties.\"group.protocol\"",
                "set kafka.group_protocol = \"consumer\" (or \"classic\") instead: docrepl leaves out the settings the consumer protocol refuses",
            ));
        }
        if self.max_message_bytes > 100 * 1024 * 1024 {
            return Err(ConfigError::invalid("kafka.max_message_bytes", "must be at most 104857600 (100 MiB)"));
        }
        Ok(())
    }

    /// Configs of the dead-letter topic when docrepl creates it: it takes any message of
    /// the collection topics plus the headers that say why (a broker's default, often 1
    /// MB, would refuse the very messages that need to go there).
    pub fn dead_letter_topic_configs(&self) -> Vec<(&'static str, String)> {
        vec![("max.message.bytes", (self.max_message_bytes + 65_536).to_string())]
    }

    /// `<prefix>.<database>.<collection>`, or `<prefix>.<database>` with `topic_per =
    /// "database"`.
    pub fn topic_for(&self, database: &str, collection: &str) -> String {
        match self.topic_per {
            TopicPer::Collection => format!("{}.{}.{}", self.topic_prefix, database, collection),
            TopicPer::Database => format!("{}.{}", self.topic_prefix, database),
        }
    }

    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{}-dead-letters", self.topic_prefix))
    }
}
