//! Whether every other partition of a topic has moved past a moment of the source: what
//! decides if a unique-index conflict may still clear by itself. Across partitions, order
//! is not kept, so a document can conflict on a unique secondary index with one whose
//! newer version sits unapplied in another partition (two emails swapped): that conflict
//! clears when the other partition catches up, however long that takes. It is final only
//! once every partition has applied everything up to the conflicting event's source time.
//!
//! A partition has done so when its committed offset is at its end, or when the next
//! message it has not applied is a later event: events of one collection reach each
//! partition in source order. Read through a consumer of the sink's group that never
//! joins it (committed offsets, watermarks, one message per partition behind).

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The answer for one topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Every other partition has applied everything up to the time asked about.
    AllPast,
    /// This partition is behind it: the source time of its next unapplied event (`None`
    /// when that message tells no time), and the offsets between.
    Behind { partition: i32, next_ts_ms: Option<i64>, lag: i64 },
}

/// Reads the group's progress on a topic.
pub struct TopicProgress {
    consumer: Mutex<std::sync::Arc<BaseConsumer<crate::kafka::KafkaContext>>>,
}

impl TopicProgress {
    /// `config`: the sink's consumer settings (its `group.id` names whose commits count).
    pub fn new(config: &rdkafka::ClientConfig) -> Result<Self, rdkafka::error::KafkaError> {
        let consumer = crate::kafka::context::request_consumer(config.clone().set("enable.auto.commit", "false").set("auto.offset.reset", "earliest"))?;
        Ok(TopicProgress { consumer: Mutex::new(consumer) })
    }

    /// Whether every partition of `topic` but `except` is past source time `ts_ms`
    /// (blocking: call it off the runtime's threads).
    pub fn past(&self, topic: &str, except: i32, ts_ms: i64) -> Result<Progress, String> {
        let consumer = self.consumer.lock().map_err(|_| "progress reader poisoned".to_string())?;
        let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT).map_err(|e| e.to_string())?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .filter(|p| *p != except)
            .collect();
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(topic, *p);
        }
        let committed = consumer.committed_offsets(tpl, TIMEOUT).map_err(|e| e.to_string())?;
        for p in partitions {
            let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT).map_err(|e| e.to_string())?;
            let next = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(n)) => n,
                _ => low,
            };
            if next >= high {
                continue;
            }
            let next_ts_ms = self.source_time_at(&consumer, topic, p, next)?;
            if next_ts_ms.is_none_or(|t| t <= ts_ms) {
                return Ok(Progress::Behind { partition: p, next_ts_ms, lag: high - next });
            }
        }
        Ok(Progress::AllPast)
    }

    /// The source `ts_ms` of the event at `offset` of partition `p`, if it tells one.
    fn source_time_at(&self, consumer: &BaseConsumer<crate::kafka::KafkaContext>, topic: &str, p: i32, offset: i64) -> Result<Option<i64>, String> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(offset)).map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + TIMEOUT;
        let found = loop {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) if m.partition() == p && m.offset() >= offset => {
                    break m.payload().and_then(source_ts_ms);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = consumer.unassign();
                    return Err(e.to_string());
                }
                None if std::time::Instant::now() >= deadline => break None,
                None => {}
            }
        };
        let _ = consumer.unassign();
        Ok(found)
    }
}

/// `source.ts_ms` of a Debezium envelope (Connect-wrapped or not).
fn source_ts_ms(value: &[u8]) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let v = v.get("payload").filter(|_| v.get("schema").is_some()).unwrap_or(&v);
    v.get("source")?.get("ts_ms")?.as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_source_time() {
        assert_eq!(source_ts_ms(br#"{"op":"u","source":{"ts_ms":5}}"#), Some(5));
        assert_eq!(source_ts_ms(br#"{"schema":{},"payload":{"source":{"ts_ms":7}}}"#), Some(7));
        assert_eq!(source_ts_ms(b"not json"), None);
    }
}
