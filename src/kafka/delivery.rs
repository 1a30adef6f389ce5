//! A producer whose delivery reports go to the sender's own queue of acknowledgements.
//!
//! Every record carries (in librdkafka's per-message opaque) the queue it reports to and
//! its sequence number; librdkafka's delivery callback, on the producer's polling thread,
//! appends `(sequence, outcome)` there and wakes the sender, which takes every report
//! that arrived at once. That is one small allocation per record, where a future per
//! record (rdkafka's `FutureProducer`: a oneshot channel, a task in a `FuturesUnordered`,
//! a wake-up each) cost about 7 % of a drain's CPU (perf, 1M documents).

use std::sync::{Arc, Mutex};

use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio::sync::Notify;

/// The source's producer.
pub type AckProducer = ThreadedProducer<AckContext>;

/// Routes each delivery report to the queue its record names.
pub struct AckContext;

/// Answers the token refresh of `kafka.auth = "msk_iam"` (see `kafka::context`).
impl ClientContext for AckContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;
    fn generate_oauth_token(&self, _: Option<&str>) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        crate::kafka::msk_iam::oauth_token()
    }
}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(Failure::from(e)),
        };
        ticket.acks.report(ticket.seq, ticket.bytes, outcome);
    }
}

/// What a record carries to find its way back: the sender's queue, its number there and
/// its size (key and value).
pub struct Ticket {
    acks: Arc<Acks>,
    seq: u64,
    bytes: usize,
}

impl Ticket {
    fn new(acks: &Arc<Acks>, seq: u64, bytes: usize) -> Box<Ticket> {
        Box::new(Ticket { acks: Arc::clone(acks), seq, bytes })
    }
}

/// A delivery outcome: `Ok` once the broker acknowledged, or why it did not.
pub type Outcome = Result<(), Failure>;

/// Why a record was not delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub message: String,
    /// The broker (or librdkafka) refused the record as larger than the topic takes.
    pub too_large: bool,
}

impl From<&rdkafka::error::KafkaError> for Failure {
    fn from(e: &rdkafka::error::KafkaError) -> Self {
        let too_large = e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge);
        Failure { message: e.to_string(), too_large }
    }
}

/// One sender's queue of delivery reports.
#[derive(Default)]
struct Acks {
    /// The reports, and the bytes of the records they report on.
    reports: Mutex<(Vec<(u64, Outcome)>, usize)>,
    arrived: Notify,
}

impl Acks {
    fn new() -> Arc<Acks> {
        Arc::new(Acks::default())
    }

    fn report(&self, seq: u64, bytes: usize, outcome: Outcome) {
        if let Ok(mut reports) = self.reports.lock() {
            reports.0.push((seq, outcome));
            reports.1 += bytes;
        }
        self.arrived.notify_one();
    }

    /// Waits until at least one report is there (or one arrived since the last take:
    /// then it returns at once and `take` may find nothing).
    async fn arrived(&self) {
        self.arrived.notified().await
    }

    /// Moves every report received so far into `into` (which is cleared first); returns
    /// the bytes of their records.
    fn take(&self, into: &mut Vec<(u64, Outcome)>) -> usize {
        into.clear();
        match self.reports.lock() {
            Ok(mut reports) => {
                std::mem::swap(&mut reports.0, into);
                std::mem::take(&mut reports.1)
            }
            Err(_) => 0,
        }
    }
}

/// What one sender has in flight: a queue for its reports and how many records (and
/// bytes) are still due.
pub struct InFlight {
    acks: Arc<Acks>,
    reports: Vec<(u64, Outcome)>,
    due: usize,
    due_bytes: usize,
    /// Bytes of the records reported on by the last `take`.
    taken_bytes: usize,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight { acks: Acks::new(), reports: Vec::new(), due: 0, due_bytes: 0, taken_bytes: 0 }
    }
}

impl InFlight {
    /// The ticket for the record numbered `seq` of `bytes` (key and value); call `sent`
    /// with the same size once librdkafka took it.
    pub fn ticket(&self, seq: u64, bytes: usize) -> Box<Ticket> {
        Ticket::new(&self.acks, seq, bytes)
    }

    pub fn sent(&mut self, bytes: usize) {
        self.due += 1;
        self.due_bytes += bytes;
    }

    /// Records whose report has not come yet.
    pub fn due(&self) -> usize {
        self.due
    }

    /// Their bytes.
    pub fn due_bytes(&self) -> usize {
        self.due_bytes
    }

    /// The bytes of the records the last `take` reported on.
    pub fn taken_bytes(&self) -> usize {
        self.taken_bytes
    }

    /// Waits for reports (see `Acks::arrived`).
    pub async fn arrived(&self) {
        self.acks.arrived().await
    }

    /// The reports that came since the last call, in arrival order.
    pub fn take(&mut self) -> std::vec::Drain<'_, (u64, Outcome)> {
        self.taken_bytes = self.acks.take(&mut self.reports);
        self.due = self.due.saturating_sub(self.reports.len());
        self.due_bytes = self.due_bytes.saturating_sub(self.taken_bytes);
        self.reports.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_reach_the_sender_in_one_take() {
        let mut in_flight = InFlight::default();
        for seq in 0..3 {
            let _ = in_flight.ticket(seq, 100);
            in_flight.sent(100);
        }
        in_flight.acks.report(1, 100, Ok(()));
        let down = Failure { message: "broker down".into(), too_large: false };
        in_flight.acks.report(0, 100, Err(down.clone()));
        // The wake-up that came while nobody waited is kept.
        tokio::time::timeout(std::time::Duration::from_secs(1), in_flight.arrived()).await.expect("woken");
        let got: Vec<_> = in_flight.take().collect();
        assert_eq!(got, vec![(1, Ok(())), (0, Err(down))]);
        assert_eq!(in_flight.due(), 1);
        assert_eq!((in_flight.taken_bytes(), in_flight.due_bytes()), (200, 100));
        assert_eq!(in_flight.take().count(), 0);
        assert_eq!(in_flight.taken_bytes(), 0);
    }
}
