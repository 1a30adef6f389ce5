//! The sink service: a consumer group whose assigned partitions each get a worker that
//! batches, folds by document and writes to the target, committing offsets only after
//! the target acknowledged.

mod config;
pub mod conflicts;
pub mod dead_letter;
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
use crate::status::StatusBoard;

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

    let dead_letter_topic = config.kafka.dead_letter_topic();
    let admin = TopicAdmin::new(&config.kafka)?;
    admin.ensure_topic(&dead_letter_topic, 1, config.kafka.replication_factor, &config.kafka.dead_letter_topic_configs()).await?;
    board.set_sink_ready(true);
    {
        let board = board.clone();
        tokio::spawn(crate::health::watch(client.clone(), admin, move |ok| board.set_sink_ready(ok), shutdown.clone()));
    }
    let producer: FutureProducer =
        crate::kafka::producer_config(&config.kafka).create().context("cannot create the dead-letter producer")?;
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
    tokio::task::spawn_blocking(move || {
        group::run_member(consumer_config, subscription, worker_ctx, runtime, replay, board, shutdown)
    })
    .await
    .context("the consumer thread panicked")?
    .map_err(Into::into)
}

fn regex_escape(s: &str) -> String {
    s.chars().flat_map(|c| if "\\.+*?()|[]{}^$".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}
