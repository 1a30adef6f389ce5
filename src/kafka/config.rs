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
    /// How docrepl authenticates to the cluster: `properties` (default: as
    /// `kafka.properties` say, e.g. SASL/SCRAM or mTLS) or `msk_iam` (Amazon MSK's IAM
    /// access control: SASL_SSL with OAUTHBEARER tokens signed with the AWS default
    /// credential chain; the only way into MSK Serverless).
    #[serde(default)]
    pub auth: KafkaAuth,
    /// `msk_iam`: the cluster's region. Default: the region in MSK broker names of
    /// `bootstrap_servers`, else the AWS default region chain (`AWS_REGION`, profile).
    #[serde(default)]
    pub aws_region: Option<String>,
    /// `msk_iam`: an IAM role to assume (STS AssumeRole) with the default chain's
    /// credentials, e.g. one in the cluster's account.
    #[serde(default)]
    pub aws_role_arn: Option<String>,
    /// `msk_iam`: the session name of the assumed role (default `docrepl`), seen in
    /// CloudTrail.
    #[serde(default)]
    pub aws_role_session_name: Option<String>,
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

/// How docrepl authenticates to the cluster (see `KafkaConfig::auth`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KafkaAuth {
    #[default]
    Properties,
    MskIam,
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

/// What the dead-letter topic takes beyond `max_message_bytes`: the headers that say why.
const DEAD_LETTER_HEADROOM: usize = 65_536;
/// MSK Serverless's largest `max.message.bytes`.
const SERVERLESS_MAX_MESSAGE_BYTES: usize = 8_388_608;

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
        self.validate_serverless()?;
        self.validate_auth()
    }

    /// MSK Serverless's fixed limits (AWS's "Configuration properties for MSK Serverless
    /// clusters"): IAM access control only, `max.message.bytes` at most 8 MiB (docrepl sets
    /// no other topic setting, and Serverless would refuse most).
    fn validate_serverless(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.to_ascii_lowercase().contains(".kafka-serverless.") {
            if self.auth != KafkaAuth::MskIam {
                return Err(ConfigError::invalid("kafka.auth", "the bootstrap servers are MSK Serverless, which takes only IAM access control: set kafka.auth = \"msk_iam\""));
            }
            let dead_letters = self.max_message_bytes + DEAD_LETTER_HEADROOM;
            if dead_letters > SERVERLESS_MAX_MESSAGE_BYTES {
                return Err(ConfigError::invalid(
                    "kafka.max_message_bytes",
                    format!(
                        "is {}, but MSK Serverless topics take at most {SERVERLESS_MAX_MESSAGE_BYTES} bytes (8 MiB) and the dead-letter topic needs {DEAD_LETTER_HEADROOM} more for its headers: set at most {}",
                        self.max_message_bytes,
                        SERVERLESS_MAX_MESSAGE_BYTES - DEAD_LETTER_HEADROOM
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The `msk_iam` settings: only with it, well-formed, and agreeing with the brokers.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        use super::msk_iam::token::{looks_like_region, region_of_brokers};
        let aws_keys = [("kafka.aws_region", &self.aws_region), ("kafka.aws_role_arn", &self.aws_role_arn), ("kafka.aws_role_session_name", &self.aws_role_session_name)];
        if self.auth != KafkaAuth::MskIam {
            if let Some((key, _)) = aws_keys.iter().find(|(_, v)| v.is_some()) {
                return Err(ConfigError::invalid(*key, "is used only with kafka.auth = \"msk_iam\": set that too, or remove this key"));
            }
            return Ok(());
        }
        if let Some(mechanism) = self.properties.get("sasl.mechanism").filter(|m| !m.eq_ignore_ascii_case("OAUTHBEARER")) {
            return Err(ConfigError::invalid(
                "kafka.properties.\"sasl.mechanism\"",
                format!("is {mechanism:?}, but kafka.auth = \"msk_iam\" authenticates with OAUTHBEARER: remove the property (or kafka.auth)"),
            ));
        }
        if let Some(protocol) = self.properties.get("security.protocol").filter(|p| !p.to_ascii_uppercase().starts_with("SASL_")) {
            return Err(ConfigError::invalid(
                "kafka.properties.\"security.protocol\"",
                format!("is {protocol:?}, but kafka.auth = \"msk_iam\" needs SASL_SSL (MSK's IAM listeners, port 9098, or 9198 over public access): remove the property"),
            ));
        }
        let brokers = region_of_brokers(&self.bootstrap_servers).map_err(|regions| {
            ConfigError::invalid("kafka.bootstrap_servers", format!("names MSK brokers in several regions ({}): one cluster lives in one region", regions.join(", ")))
        })?;
        if let Some(region) = &self.aws_region {
            if !looks_like_region(region) {
                return Err(ConfigError::invalid("kafka.aws_region", format!("{region:?} is not an AWS region name (expected e.g. \"us-east-1\")")));
            }
            if let Some(theirs) = brokers.filter(|b| b != region) {
                return Err(ConfigError::invalid(
                    "kafka.aws_region",
                    format!("is {region:?} but the bootstrap servers are MSK brokers in {theirs:?}: MSK refuses a token signed for another region; set kafka.aws_region = {theirs:?} (or leave it out)"),
                ));
            }
        }
        if let Some(arn) = &self.aws_role_arn {
            let parts: Vec<&str> = arn.splitn(6, ':').collect();
            let well_formed = parts.len() == 6 && parts[0] == "arn" && parts[1].starts_with("aws") && parts[2] == "iam" && parts[4].len() == 12 && parts[4].chars().all(|c| c.is_ascii_digit()) && parts[5].starts_with("role/");
            if !well_formed {
                return Err(ConfigError::invalid("kafka.aws_role_arn", format!("{arn:?} is not an IAM role ARN (expected arn:aws:iam::<12-digit account>:role/<name>)")));
            }
        }
        Ok(())
    }

    /// Configs of the dead-letter topic when docrepl creates it: it takes any message of
    /// the collection topics plus the headers that say why (a broker's default, often 1
    /// MB, would refuse the very messages that need to go there).
    pub fn dead_letter_topic_configs(&self) -> Vec<(&'static str, String)> {
        vec![("max.message.bytes", (self.max_message_bytes + DEAD_LETTER_HEADROOM).to_string())]
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
