//! The sink service: a consumer group whose assigned partitions each get a worker that
//! batches, folds by document and writes to the target, committing offsets only after
//! the target acknowledged.

mod config;
pub mod conflicts;
pub mod dead_letter;
mod discovery;
pub mod errors;
mod fences;
pub mod fold;
pub mod group;
mod input;
pub mod metadata;
mod patching;
pub mod progress;
mod retry;
pub mod worker;
pub mod writer;

use std::sync::Arc;

use anyhow::Context;
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::SinkConfig;
pub use group::ReplayFrom;

use crate::config::Config;
use crate::kafka::admin::TopicAdmin;
use crate::health::Connectivity;
use crate::status::{Side, StatusBoard};

/// Runs the sink until `shutdown` is cancelled or an error the operator must act on.
pub async fn run(
    config: &Config,
    replay: Option<ReplayFrom>,
    board: StatusBoard,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let sink = config.sink.as_ref().context("the [sink] section is missing")?;
    let (flavor, why) = sink.flavor();
    info!(flavor = flavor.name(), "target cluster flavour {} ({why})", flavor.name());
    board.set_flavor("target", flavor.name());
    let client = crate::mongo::connect(&sink.uri, "sink.uri", flavor).await?;
    // Before anything is applied: the opposite direction must not be running.
    let direction = crate::direction::Direction::of(config);
    let state = client.database(&sink.state_database);
    let lock = crate::direction::lock::claim(&state, "sink.uri", &direction, crate::direction::Here::Target, &crate::direction::instance_name(config), None).await?;
    lock.keep(shutdown.clone());

    let dead_letter_topic = config.kafka.dead_letter_topic();
    let admin = TopicAdmin::new(&config.kafka)?;
    admin.ensure_topic(&dead_letter_topic, 1, config.kafka.replication_factor, &config.kafka.dead_letter_topic_configs()).await?;
    check_group_session_timeout(&admin, &config.kafka, sink).await?;
    board.set_connectivity(Side::Sink, Connectivity { cluster: true, broker: true });
    {
        let board = board.clone();
        tokio::spawn(crate::health::watch(client.clone(), admin, move |c| board.set_connectivity(Side::Sink, c), shutdown.clone()));
    }
    let producer: FutureProducer<crate::kafka::KafkaContext> =
        crate::kafka::producer_config(&config.kafka).create_with_context(crate::kafka::KafkaContext).context("cannot create the dead-letter producer")?;
    let writer = writer::Writer::new(client, &sink.write_concern, sink.write_timeout_ms, sink.write_time_limit(), sink.write_deadline());
    let consumer_config = crate::kafka::consumer_config(&config.kafka, &sink.group_id, sink.session_timeout_ms);
    let progress = conflicts::TopicProgress::new(&consumer_config).context("cannot create the Kafka consumer that reads the group's progress")?;
    let worker_ctx = Arc::new(worker::WorkerContext::new(
        writer,
        dead_letter::DeadLetters::new(producer, dead_letter_topic),
        sink.clone(),
        board.clone(),
        Some(Arc::new(progress)),
    ));
    let subscription = if sink.topics.is_empty() {
        vec![format!("^{}\\..*", regex_escape(&config.kafka.topic_prefix))]
    } else {
        sink.topics.clone()
    };
    let runtime = tokio::runtime::Handle::current();
    info!(group = %sink.group_id, "sink service started");
    let result = tokio::task::spawn_blocking(move || {
        group::run_member(consumer_config, subscription, worker_ctx, runtime, replay, board, shutdown)
    })
    .await
    .context("the consumer thread panicked")?;
    lock.finish().await?;
    result.map_err(Into::into)
}

fn regex_escape(s: &str) -> String {
    s.chars().flat_map(|c| if "\\.+*?()|[]{}^$".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}

/// Under the consumer protocol the broker decides when a silent member loses its
/// partitions. Every write is bounded by half of `sink.session_timeout_ms` so that it is
/// over before the partition can move: a broker-side timeout shorter than ours would break
/// that, and a late write could land after the new owner's.
async fn check_group_session_timeout(admin: &TopicAdmin, kafka: &crate::kafka::KafkaConfig, sink: &SinkConfig) -> anyhow::Result<()> {
    if kafka.group_protocol != crate::kafka::GroupProtocol::Consumer {
        return Ok(());
    }
    match admin.consumer_group_session_timeout_ms(&sink.group_id).await {
        Ok(Some(broker)) if broker < sink.session_timeout_ms => anyhow::bail!(
            "the broker's session timeout for group {} is {broker} ms (consumer.session.timeout.ms, default group.consumer.session.timeout.ms), below sink.session_timeout_ms = {}: a member could lose its partitions while a write is still in flight. Set sink.session_timeout_ms to at most {broker}, or raise the group's consumer.session.timeout.ms",
            sink.group_id,
            sink.session_timeout_ms
        ),
        Ok(Some(broker)) => {
            info!(group = %sink.group_id, broker_session_timeout_ms = broker, "consumer group protocol (KIP-848)");
            Ok(())
        }
        Ok(None) => {
            tracing::warn!(group = %sink.group_id, "the broker did not say its session timeout for the group; writes stay bounded by half of sink.session_timeout_ms");
            Ok(())
        }
        Err(e) => Err(e).context("cannot read the consumer group's session timeout from the broker"),
    }
}
