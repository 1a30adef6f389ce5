//! What Kafka says about a cutover: whether the topics have gone quiet (no message but an
//! idle source's heartbeats added for a while: the source's writes stopped), and whether the
//! sink group has applied everything on them (its committed offset at each partition's
//! end). Only the broker is asked, so this works with the source region gone.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;

/// (topic, partition) -> offset.
pub type Offsets = BTreeMap<(String, i32), i64>;

/// Reads ends and committed offsets of the sink's topics.
pub struct Progress {
    consumer: std::sync::Arc<BaseConsumer<crate::kafka::KafkaContext>>,
    /// Every partition of every topic the sink reads.
    partitions: TopicPartitionList,
}

impl Progress {
    /// The sink's topics (`sink.topics`, or every `<topic_prefix>.*` topic) as the broker
    /// lists them now.
    pub async fn new(config: &Config) -> anyhow::Result<Self> {
        let sink = config.sink.as_ref().context("cutover needs the [sink] section")?;
        let admin = crate::kafka::admin::TopicAdmin::new(&config.kafka)?;
        let counts = admin.partition_counts().await?;
        let prefix = format!("{}.", config.kafka.topic_prefix);
        let mut partitions = TopicPartitionList::new();
        for (topic, count) in counts {
            let read = if sink.topics.is_empty() { topic.starts_with(&prefix) } else { sink.topics.contains(&topic) };
            if read {
                for p in 0..count {
                    partitions.add_partition(&topic, p);
                }
            }
        }
        let consumer = crate::kafka::context::request_consumer(&crate::kafka::consumer_config(&config.kafka, &sink.group_id, sink.session_timeout_ms))
            .context("cannot create the Kafka consumer that reads the group's offsets")?;
        Ok(Progress { consumer, partitions })
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.count()
    }

    /// Each partition's end (the offset the next message will get).
    pub fn ends(&self) -> anyhow::Result<Offsets> {
        let mut latest = TopicPartitionList::new();
        for e in self.partitions.elements() {
            latest.add_partition_offset(e.topic(), e.partition(), Offset::End)?;
        }
        let found = self.consumer.offsets_for_times(latest, Duration::from_secs(15)).context("cannot read the partitions' ends")?;
        Ok(found
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                _ => None,
            })
            .collect())
    }

    /// The sink group's committed offset of each partition (-1: none yet).
    pub fn committed(&self) -> anyhow::Result<Offsets> {
        let committed = self.consumer.committed_offsets(self.partitions.clone(), Duration::from_secs(15)).context("cannot read the sink group's committed offsets")?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                };
                ((e.topic().to_string(), e.partition()), offset)
            })
            .collect())
    }
}

impl Progress {
    /// True when every message added between `from` and `to` is a heartbeat (an idle
    /// source's: not a change). Reads those messages; more than a few per partition is
    /// taken for writes without reading them.
    pub fn only_heartbeats(&self, config: &Config, from: &Offsets, to: &Offsets) -> anyhow::Result<bool> {
        use rdkafka::message::Message;
        const AT_MOST: i64 = 64;
        let mut wanted = TopicPartitionList::new();
        let mut left: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for (key, &end) in to {
            let start = from.get(key).copied().unwrap_or(0);
            if end - start > AT_MOST {
                return Ok(false);
            }
            if end > start {
                wanted.add_partition_offset(&key.0, key.1, Offset::Offset(start))?;
                left.insert(key.clone(), end);
            }
        }
        if left.is_empty() {
            return Ok(true);
        }
        let sink = config.sink.as_ref().context("cutover needs the [sink] section")?;
        let reader = crate::kafka::context::request_consumer(&crate::kafka::consumer_config(&config.kafka, &format!("{}-cutover-reader", sink.group_id), sink.session_timeout_ms))
            .context("cannot create the Kafka consumer that reads the newest messages")?;
        reader.assign(&wanted)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !left.is_empty() {
            if std::time::Instant::now() >= deadline {
                anyhow::bail!("cannot read the newest messages of {} partitions within 15 s", left.len());
            }
            let Some(message) = reader.poll(Duration::from_millis(200)) else { continue };
            let message = message.context("reading the newest messages")?;
            let key = (message.topic().to_string(), message.partition());
            let Some(&end) = left.get(&key) else { continue };
            if message.offset() >= end {
                left.remove(&key);
                continue;
            }
            if !message.key().is_some_and(|k| k.starts_with(br#"{"docrepl_heartbeat""#)) {
                return Ok(false);
            }
            if message.offset() + 1 >= end {
                left.remove(&key);
            }
        }
        Ok(true)
    }
}

/// The partitions where the group has not applied everything: (topic, partition,
/// messages behind). Pure.
pub fn behind(ends: &Offsets, committed: &Offsets) -> Vec<(String, i32, i64)> {
    ends.iter()
        .filter_map(|((topic, partition), &end)| {
            let done = committed.get(&(topic.clone(), *partition)).copied().unwrap_or(-1).max(0);
            (end > done).then(|| (topic.clone(), *partition, end - done))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_behind_until_its_end_is_committed() {
        let ends: Offsets = [(("t".to_string(), 0), 10), (("t".to_string(), 1), 0), (("t".to_string(), 2), 5)].into();
        let committed: Offsets = [(("t".to_string(), 0), 10), (("t".to_string(), 1), -1), (("t".to_string(), 2), 3)].into();
        assert_eq!(behind(&ends, &committed), vec![("t".to_string(), 2, 2)]);
        let nothing: Offsets = Offsets::new();
        assert_eq!(behind(&ends, &nothing), vec![("t".to_string(), 0, 10), ("t".to_string(), 2, 5)]);
    }
}
