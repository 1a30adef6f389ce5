//! Handing a reader's records to librdkafka, and what a record Kafka did not take means
//! for the reader (a restart from the saved token; smaller parts after a refusal as too
//! large).

use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

use super::lease::Grant;
use super::reader::{Reader, ReaderError};
use crate::kafka::delivery::{Failure, Ticket};

/// `headers` (or none) with the run's stamp (see `crate::fence`), which every record a
/// reader sends carries.
pub(super) fn stamped(headers: Option<OwnedHeaders>, stamp: &str) -> OwnedHeaders {
    headers.unwrap_or_default().insert(Header { key: crate::fence::HEADER, value: Some(stamp) })
}

/// The smallest message limit a reader lowers itself to after the broker refused messages
/// as too large (below it, the broker's limit is taken to be misconfigured: fatal).
const MIN_MESSAGE_BYTES: usize = 16 * 1024;

impl Reader {
    /// Hands one record, stamped with the run's `stamp`, to librdkafka, waiting (without
    /// blocking the runtime) while its bounded queue is full; its delivery report goes
    /// where `ticket` says. `false`: the lease's produce window ended while waiting (the
    /// pump checks it once per chunk of events, and only a full queue makes a chunk take
    /// long).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send(
        &self,
        topic: &str,
        key: &[u8],
        value: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        stamp: &str,
        ticket: Box<Ticket>,
        lease: &watch::Receiver<Grant>,
    ) -> Result<bool, ReaderError> {
        let mut record: BaseRecord<'_, [u8], [u8], Box<Ticket>> = BaseRecord::with_opaque_to(topic, ticket).key(key).headers(stamped(headers, stamp));
        if let Some(v) = value {
            record = record.payload(v);
        }
        loop {
            match self.ctx.producer.send(record) {
                Ok(()) => return Ok(true),
                Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), again)) => {
                    record = again;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if Instant::now() >= lease.borrow().deadline {
                        return Ok(false);
                    }
                }
                Err((e, _)) => return Err(self.delivery_failed(Failure::from(&e))),
            }
        }
    }

    /// What a record Kafka did not take means for the reader. Any failure restarts it
    /// from its saved token; a refusal as too large also halves the message limit first,
    /// so the events are sent again in smaller parts (the topic's limit may be below the
    /// one configured or read); at the smallest limit the reader stops for good.
    pub(super) fn delivery_failed(&self, failure: Failure) -> ReaderError {
        if failure.too_large {
            let now = self.max_bytes.load(Ordering::Relaxed);
            if now <= MIN_MESSAGE_BYTES {
                return ReaderError::BrokerRefusesSize { ns: self.ns.clone(), bytes: now, message: failure.message };
            }
            let lower = (now / 2).max(MIN_MESSAGE_BYTES);
            self.max_bytes.store(lower, Ordering::Relaxed);
            warn!(ns = %self.ns, from = now, to = lower, "the broker refused a message as too large: sending messages of at most {lower} bytes from now on (set kafka.max_message_bytes to the topic's max.message.bytes)");
        }
        ReaderError::Delivery { ns: self.ns.clone(), message: failure.message }
    }
}
