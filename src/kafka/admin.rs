//! Topic administration: create the collection topics (and the dead-letter topic) when
//! missing, and refuse to run against a topic whose partition count differs from the
//! config, since that would silently send a document's later events to another partition.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;

use super::access::AccessRefused;
use super::{base_client_config, KafkaConfig};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("cannot reach the Kafka cluster at {servers}: {message}; check kafka.bootstrap_servers and that the broker is running")]
    Unreachable { servers: String, message: String },
    #[error("topic {topic} has {actual} partitions but kafka.partitions is {expected}; a different count would move keys to other partitions. Set kafka.partitions = {actual}, or use a new topic_prefix")]
    PartitionMismatch { topic: String, expected: i32, actual: i32 },
    #[error("cannot create topic {topic}: {message}")]
    Create { topic: String, message: String },
    #[error("the Kafka cluster at {servers} refused docrepl")]
    Access { servers: String, source: AccessRefused },
}

/// A handle on the cluster's admin API.
#[derive(Clone)]
pub struct TopicAdmin {
    client: Arc<AdminClient<super::KafkaContext>>,
    servers: String,
    /// To diagnose a failed request (see `access::diagnose`).
    kafka: KafkaConfig,
}

impl TopicAdmin {
    pub fn new(kafka: &KafkaConfig) -> Result<Self, TopicError> {
        let client = base_client_config(kafka).create_with_context(super::KafkaContext).map_err(|e| TopicError::Unreachable {
            servers: kafka.bootstrap_servers.clone(),
            message: e.to_string(),
        })?;
        let client = Arc::new(client);
        super::msk_iam::keep_token_fresh(&client);
        Ok(TopicAdmin { client, servers: kafka.bootstrap_servers.clone(), kafka: kafka.clone() })
    }

    /// True when the broker answers a metadata request.
    pub async fn reachable(&self) -> bool {
        let client = Arc::clone(&self.client);
        tokio::task::spawn_blocking(move || client.inner().fetch_metadata(None, Duration::from_secs(2)).is_ok())
            .await
            .unwrap_or(false)
    }

    /// The partition count of every topic in the cluster (one metadata request). Asks for
    /// every topic: a metadata request naming one topic may make a broker auto-create it
    /// with its own default partition count.
    pub async fn partition_counts(&self) -> Result<std::collections::HashMap<String, i32>, TopicError> {
        let client = Arc::clone(&self.client);
        // fetch_metadata blocks: keep it off the runtime's worker threads.
        let metadata = tokio::task::spawn_blocking(move || {
            client.inner().fetch_metadata(None, ADMIN_TIMEOUT).map(|m| {
                m.topics()
                    .iter()
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| (t.name().to_string(), t.partitions().len() as i32))
                    .collect()
            })
        })
        .await
        .map_err(|e| TopicError::Unreachable { servers: self.servers.clone(), message: e.to_string() })?;
        match metadata {
            Ok(counts) => Ok(counts),
            Err(e) => Err(self.failed(e.to_string()).await),
        }
    }

    /// A request that failed: an access refusal when the cluster refuses docrepl (the
    /// request itself only says transport failure or time-out), else the cluster unreachable.
    async fn failed(&self, message: String) -> TopicError {
        let kafka = self.kafka.clone();
        let refused = tokio::task::spawn_blocking(move || super::access::diagnose(&kafka, Duration::from_secs(5))).await.ok().flatten();
        match refused {
            Some(source) => TopicError::Access { servers: self.servers.clone(), source },
            None => TopicError::Unreachable { servers: self.servers.clone(), message },
        }
    }

    /// `ensure_topic` for many topics in a few requests (one metadata request, one
    /// CreateTopics for all that are missing, one metadata request per 100 ms until they
    /// show): a thousand collections' topics one by one took minutes.
    pub async fn ensure_topics(&self, topics: &[String], partitions: i32, replication: i32, configs: &[(&str, String)]) -> Result<(), TopicError> {
        let known = self.partition_counts().await?;
        let mut missing = Vec::new();
        let topics: std::collections::BTreeSet<&String> = topics.iter().collect();
        for topic in topics {
            match known.get(topic) {
                Some(&actual) => check_count(topic, partitions, actual)?,
                None => missing.push(topic.as_str()),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        for chunk in missing.chunks(500) {
            let new_topics: Vec<NewTopic<'_>> = chunk
                .iter()
                .map(|t| configs.iter().fold(NewTopic::new(t, partitions, TopicReplication::Fixed(replication)), |n, (k, v)| n.set(k, v)))
                .collect();
            let results = self
                .client
                .create_topics(&new_topics, &opts)
                .await
                .map_err(|e| TopicError::Unreachable { servers: self.servers.clone(), message: e.to_string() })?;
            for result in results {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => {
                        if let Some(source) = super::access::refusal(Some(code), &format!("CreateTopics {name}: {code}"), None, None) {
                            return Err(TopicError::Access { servers: self.servers.clone(), source });
                        }
                        return Err(TopicError::Create { message: create_refusal(code, partitions, replication, configs), topic: name });
                    }
                }
            }
        }
        for _ in 0..100 {
            let known = self.partition_counts().await?;
            if missing.iter().all(|t| known.contains_key(*t)) {
                return missing.iter().try_for_each(|t| check_count(t, partitions, known[*t]));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(TopicError::Create { topic: missing.join(", "), message: "created, but not visible in metadata after 10 s".into() })
    }

    /// The topic's own `max.message.bytes` (its effective value, the broker's default
    /// included), or `None` when the broker does not say (no DescribeConfigs support, or
    /// no such entry).
    pub async fn topic_max_message_bytes(&self, topic: &str) -> Result<Option<usize>, TopicError> {
        Ok(self.topics_max_message_bytes(&[topic.to_string()]).await?.remove(topic))
    }

    /// `topic_max_message_bytes` of many topics in one DescribeConfigs request; topics the
    /// broker says nothing about are left out.
    pub async fn topics_max_message_bytes(&self, topics: &[String]) -> Result<std::collections::HashMap<String, usize>, TopicError> {
        use rdkafka::admin::{OwnedResourceSpecifier, ResourceSpecifier};
        let opts = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
        let specifiers: Vec<ResourceSpecifier<'_>> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
        let results = self
            .client
            .describe_configs(&specifiers, &opts)
            .await
            .map_err(|e| TopicError::Unreachable { servers: self.servers.clone(), message: e.to_string() })?;
        Ok(results
            .into_iter()
            .flatten()
            .filter_map(|resource| {
                let OwnedResourceSpecifier::Topic(topic) = &resource.specifier else { return None };
                let limit = resource.get("max.message.bytes").and_then(|entry| entry.value.as_deref()).and_then(|v| v.parse::<usize>().ok())?;
                Some((topic.clone(), limit))
            })
            .collect())
    }

    /// The session timeout the broker applies to members of `group` under the consumer
    /// protocol (KIP-848): the group's `consumer.session.timeout.ms`, which defaults to the
    /// broker's `group.consumer.session.timeout.ms`. `None` when the broker does not say
    /// (no group configs before Apache Kafka 4.0).
    pub async fn consumer_group_session_timeout_ms(&self, group: &str) -> Result<Option<u64>, TopicError> {
        use rdkafka::admin::ResourceSpecifier;
        let opts = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
        let results = self
            .client
            .describe_configs(&[ResourceSpecifier::Group(group)], &opts)
            .await
            .map_err(|e| TopicError::Unreachable { servers: self.servers.clone(), message: e.to_string() })?;
        Ok(results
            .into_iter()
            .flatten()
            .find_map(|resource| resource.get("consumer.session.timeout.ms").and_then(|e| e.value.as_deref()).and_then(|v| v.parse().ok())))
    }

    /// Creates `topic` with `partitions` when missing; checks the count when present.
    pub async fn ensure_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication: i32,
        configs: &[(&str, String)],
    ) -> Result<(), TopicError> {
        self.ensure_topics(&[topic.to_string()], partitions, replication, configs).await
    }
}

/// What a CreateTopics refusal means for the operator, and what to change (ACL refusals
/// are `TopicError::Access`).
fn create_refusal(code: RDKafkaErrorCode, partitions: i32, replication: i32, configs: &[(&str, String)]) -> String {
    let settings = configs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ");
    match code {
        RDKafkaErrorCode::InvalidReplicationFactor => format!(
            "the broker refused replication factor {replication} ({code}): the cluster has fewer brokers. Set kafka.replication_factor to at most the number of brokers, or -1 for the broker's default.replication.factor"
        ),
        RDKafkaErrorCode::InvalidPartitions => format!("the broker refused {partitions} partitions ({code}); set kafka.partitions within what the cluster allows"),
        RDKafkaErrorCode::InvalidConfig | RDKafkaErrorCode::PolicyViolation => format!(
            "the broker refused the topic's settings ({settings}) ({code}); MSK Serverless and clusters with a create-topic policy take max.message.bytes only within their limit: set kafka.max_message_bytes within it, or create the topic yourself"
        ),
        other => format!("{other} (partitions {partitions}, replication factor {replication}, settings {settings})"),
    }
}

fn check_count(topic: &str, expected: i32, actual: i32) -> Result<(), TopicError> {
    if actual != expected {
        return Err(TopicError::PartitionMismatch { topic: topic.to_string(), expected, actual });
    }
    Ok(())
}
