//! Everything that talks to Kafka: client settings, topic administration, the producer
//! the source uses and the consumer the sink uses.

pub mod access;
pub mod admin;
mod config;
pub mod context;
pub mod delivery;
pub mod msk_iam;
pub mod partitioner;

pub use access::AccessRefused;
pub use config::{Compression, GroupProtocol, KafkaAuth, KafkaConfig, TopicPer};
pub use context::KafkaContext;

use rdkafka::ClientConfig;

/// Settings shared by every client: servers, then the operator's pass-through properties
/// (security.protocol, sasl.*, ssl.*).
pub fn base_client_config(kafka: &KafkaConfig) -> ClientConfig {
    client_config(kafka, Vec::new())
}

/// The shared settings, then a client kind's `defaults`, then the operator's properties,
/// which win over both.
fn client_config(kafka: &KafkaConfig, defaults: Vec<(&str, String)>) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &kafka.bootstrap_servers);
    cc.set("client.id", "docrepl");
    cc.set("socket.keepalive.enable", "true");
    // How long a client waits, at most, before reconnecting to a broker it lost. With
    // librdkafka's 10 s a flapping link between the regions (scripts/chaos.sh: four resets,
    // 2 s down and 3 s up) left the end-to-end lag above 1 s for 10.3-10.5 s after the link
    // returned; every broker connection of a client retries on its own, so 1 s costs a
    // connection attempt a second per broker while one is really down.
    cc.set("reconnect.backoff.max.ms", "1000");
    // Topics are created deliberately (with the configured partition count), never by accident.
    cc.set("allow.auto.create.topics", "false");
    if kafka.auth == KafkaAuth::MskIam {
        // MSK's IAM listeners: TLS (the system's CAs trust MSK's certificates) and the
        // tokens of `msk_iam`. Operator properties (ssl.ca.location, ...) still apply.
        cc.set("security.protocol", "SASL_SSL");
        cc.set("sasl.mechanism", "OAUTHBEARER");
    }
    for (k, v) in defaults {
        cc.set(k, v);
    }
    for (k, v) in &kafka.properties {
        cc.set(k, v);
    }
    cc
}

/// Producer settings (the dead-letter producers', the tests'): idempotent, acks=all,
/// compressed, batched for throughput, with a bounded in-memory queue, and Java-compatible
/// key partitioning (murmur2) so our partitions match Debezium and Kafka Connect.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut defaults = vec![("enable.idempotence", "true".to_string())];
    defaults.extend(producer_defaults(kafka));
    client_config(kafka, defaults)
}

/// The source's producer: as `producer_config`, but not idempotent and never retrying.
/// librdkafka's idempotent producer keeps one produce request in flight per partition
/// (it counts a partition's in-flight messages against the five-request window:
/// confluentinc/librdkafka#4989), so across a long round trip every change waited for the
/// request before it: in placement A at 150 ms the live lag p99 was 487 ms, 172 ms
/// without. What idempotence guarded, that a late request cannot put an older version of a
/// document after a newer one, the sink's generation fence does (`crate::fence`); a
/// librdkafka retry would reorder within a run, which the fence cannot see, so there is
/// none: a failed delivery restarts the reader, which sends again from its saved token
/// under a new generation.
pub fn source_producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut defaults = vec![("enable.idempotence", "false".to_string()), ("message.send.max.retries", "0".to_string())];
    defaults.extend(producer_defaults(kafka));
    // The broker's work grows with the record batches it takes, not their size: at 5 ms
    // an initial copy of 1M documents into 8 partitions cost Apache Kafka 17.4-18.1 CPU-s
    // and ran at 41.8-42.2k docs/s (two runs); at 20 ms 10.4-15.2 CPU-s and 43.2-58.4k
    // docs/s (five runs; scripts/bench.sh's jobs, 2 cores shared by everything,
    // benches/results/jobs-tuning-20261207.md). A change waits at most 15 ms more before
    // it leaves: `"linger.ms" = "5"` in [kafka.properties] for the lowest live lag.
    defaults.push(("linger.ms", "20".to_string()));
    client_config(kafka, defaults)
}

/// Settings of every producer but for idempotence.
fn producer_defaults(kafka: &KafkaConfig) -> Vec<(&'static str, String)> {
    vec![
        ("acks", "all".to_string()),
        ("compression.type", kafka.compression.as_str().to_string()),
        ("partitioner", "murmur2_random".to_string()),
        ("linger.ms", "5".to_string()),
        ("batch.num.messages", "10000".to_string()),
        // The broker holds a whole record batch, not each message, to the topic's
        // max.message.bytes (Apache Kafka refused 64 KB parts batched together on a topic
        // lowered to 64 KB): a batch never outgrows the limit docrepl creates topics with.
        ("batch.size", kafka.max_message_bytes.min(1_000_000).to_string()),
        // Bounds librdkafka's queue: the process stays small even when the broker stalls.
        ("queue.buffering.max.kbytes", "65536".to_string()),
        ("queue.buffering.max.messages", "100000".to_string()),
        ("message.max.bytes", (kafka.max_message_bytes + 4096).to_string()),
        ("message.timeout.ms", "120000".to_string()),
    ]
}

/// Consumer settings for a group: manual commits after the target acknowledged, and
/// `auto.offset.reset=error` so an offset lost to retention stops the sink loudly.
pub fn consumer_config(kafka: &KafkaConfig, group_id: &str, session_timeout_ms: u64) -> ClientConfig {
    let mut defaults = vec![
        ("group.id", group_id.to_string()),
        ("enable.auto.commit", "false".to_string()),
        ("enable.auto.offset.store", "false".to_string()),
        ("auto.offset.reset", "error".to_string()),
    ];
    match kafka.group_protocol {
        GroupProtocol::Classic => defaults.extend([
            ("session.timeout.ms", session_timeout_ms.to_string()),
            ("heartbeat.interval.ms", (session_timeout_ms / 4).max(500).to_string()),
            ("partition.assignment.strategy", "range,roundrobin".to_string()),
        ]),
        // The broker owns the session timeout, heartbeats and assignment: librdkafka
        // refuses those settings with this protocol.
        GroupProtocol::Consumer => defaults.push(("group.protocol", "consumer".to_string())),
    }
    defaults.extend([
        // How long a fetch may wait for data. Apache Kafka answers as soon as data arrives;
        // a broker that waits out the time (the stand-in nisshi did) adds it to the
        // replication lag: measured with scripts/bench.sh's live phase at 5,000 docs/s on
        // it, p50/p99 lag 255/2093 ms at 500, 79/554 at 100, 70/356 at 50, 67/196 at 20.
        // Kept at 20 for such brokers; idle cost: one fetch per broker every 20 ms.
        ("fetch.wait.max.ms", "20".to_string()),
        // Fetched data stays in memory until every message of it is applied, and the sink
        // reads each partition from its own queue: so small fetches (at least one whole
        // message of the largest size the topics take) and a small queue per partition
        // (librdkafka's default is 64 MB). A 1M-document drain (`docrepl run`, 8
        // partitions, LZ4) peaked at 481 MB RSS with 4 MB fetches and 8 MB queues, 275 MB
        // with 1 MB and 1 MB, at the same speed (80k docs/s).
        ("fetch.max.bytes", (kafka.max_message_bytes + 4096).max(1_048_576).to_string()),
        ("max.partition.fetch.bytes", (kafka.max_message_bytes + 4096).max(1_048_576).to_string()),
        ("queued.max.messages.kbytes", "1024".to_string()),
        // How long fetching a partition pauses once its queue is full. librdkafka's 1 s
        // starved the workers: a 1M-document drain went from 34k to 66k docs/s with 20 ms.
        ("fetch.queue.backoff.ms", "20".to_string()),
        // A pattern subscription finds topics of new collections on a metadata refresh
        // (librdkafka's default is every 5 minutes).
        ("topic.metadata.refresh.interval.ms", "5000".to_string()),
    ]);
    client_config(kafka, defaults)
}
