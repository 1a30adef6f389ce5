//! The dead-letter topic: messages that cannot be applied, with the original key and value
//! and headers saying why and where they came from. Nothing is dropped without a trace.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::metrics as m;

/// Where a dead letter came from and why.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub reason: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, topic: String) -> Self {
        DeadLetters { producer, topic }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends one dead letter and waits until the broker acknowledged it (the offset behind
    /// it is committed only afterwards).
    pub async fn send(&self, dl: &DeadLetter<'_>) -> Result<(), String> {
        let partition = dl.partition.to_string();
        let offset = dl.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "docrepl.reason", value: Some(dl.reason) })
            .insert(Header { key: "docrepl.source.topic", value: Some(dl.topic) })
            .insert(Header { key: "docrepl.source.partition", value: Some(partition.as_str()) })
            .insert(Header { key: "docrepl.source.offset", value: Some(offset.as_str()) });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(k) = dl.key {
            record = record.key(k);
        }
        if let Some(v) = dl.value {
            record = record.payload(v);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| format!("cannot write to the dead-letter topic {}: {e}", self.topic))?;
        metrics::counter!(m::SINK_DEAD_LETTERS, "topic" => dl.topic.to_string()).increment(1);
        Ok(())
    }
}
