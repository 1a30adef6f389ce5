//! The dead-letter topic: messages that cannot be applied, with the original key and value
//! and headers saying why and where they came from. Nothing is dropped without a trace.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

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
    producer: FutureProducer<crate::kafka::KafkaContext>,
    topic: String,
}

impl DeadLetters {
    pub fn new(producer: FutureProducer<crate::kafka::KafkaContext>, topic: String) -> Self {
        DeadLetters { producer, topic }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends one dead letter and waits until the broker acknowledged it (the offset behind
    /// it is committed only afterwards). A letter too large for the dead-letter topic is
    /// sent without its value (then without its key too), with a header saying what was
    /// left out: the reason and the source coordinates always get through, and the
    /// partition never stalls on a message that can never be written.
    pub async fn send(&self, dl: &DeadLetter<'_>) -> Result<(), String> {
        let mut letter = dl.clone();
        let mut cut: Option<String> = None;
        loop {
            match self.send_once(&letter, cut.as_deref()).await {
                Ok(()) => break,
                // Too large: drop the value first, then the key; say what is missing.
                Err(e) if is_too_large(&e) && (letter.value.is_some() || letter.key.is_some()) => {
                    let left_out = if letter.value.take().is_some() {
                        format!("value of {} bytes", dl.value.map_or(0, <[u8]>::len))
                    } else {
                        letter.key = None;
                        format!("value of {} bytes and key of {} bytes", dl.value.map_or(0, <[u8]>::len), dl.key.map_or(0, <[u8]>::len))
                    };
                    cut = Some(format!("{left_out} left out: too large for the dead-letter topic"));
                }
                Err(e) => return Err(format!("cannot write to the dead-letter topic {}: {e}", self.topic)),
            }
        }
        if let Some(cut) = &cut {
            tracing::warn!(topic = %dl.topic, partition = dl.partition, offset = dl.offset, "dead letter cut: {cut}");
        }
        metrics::counter!(m::SINK_DEAD_LETTERS, "topic" => dl.topic.to_string()).increment(1);
        Ok(())
    }

    async fn send_once(&self, dl: &DeadLetter<'_>, cut: Option<&str>) -> Result<(), KafkaError> {
        let partition = dl.partition.to_string();
        let offset = dl.offset.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: "docrepl.reason", value: Some(dl.reason) })
            .insert(Header { key: "docrepl.source.topic", value: Some(dl.topic) })
            .insert(Header { key: "docrepl.source.partition", value: Some(partition.as_str()) })
            .insert(Header { key: "docrepl.source.offset", value: Some(offset.as_str()) });
        if let Some(cut) = cut {
            headers = headers.insert(Header { key: "docrepl.cut", value: Some(cut) });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(k) = dl.key {
            record = record.key(k);
        }
        if let Some(v) = dl.value {
            record = record.payload(v);
        }
        self.producer.send(record, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
    }
}

/// The broker's or librdkafka's "message too large".
fn is_too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize | RDKafkaErrorCode::MessageBatchTooLarge)
    )
}
