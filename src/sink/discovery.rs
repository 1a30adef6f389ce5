//! Finds the topics of new collections within a fraction of a second.
//!
//! A pattern subscription (`^<prefix>\..*`) learns of a new topic only when librdkafka
//! refreshes its metadata (`topic.metadata.refresh.interval.ms`, 5 s here), so the copy
//! of a new collection, or its first change, waited up to that long before the sink took
//! its partitions: 5.0 s of a 6.3 s copy of 100,000 documents (scripts/bench.sh's jobs).
//! An application request for every topic's metadata makes librdkafka compare the
//! cluster's topics with the subscription and rejoin the group when one matches (its
//! `cgrp_update` on all-topics requests, rdkafka_metadata.c), so a thread here asks for
//! it often while the cluster has few topics, and leaves a large cluster, where each
//! answer is big, to librdkafka's own refresh. Only the classic protocol needs it: under
//! the `consumer` protocol the broker matches the pattern itself.

use std::sync::Weak;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// librdkafka's own refresh (`topic.metadata.refresh.interval.ms` in `kafka::consumer_config`).
const LIBRDKAFKA_REFRESH: Duration = Duration::from_secs(5);
/// How often to ask while the cluster has at most 100 topics.
const FASTEST: Duration = Duration::from_millis(250);

/// How long to wait between two requests for a cluster of `topics` topics: 250 ms per
/// started hundred, so that the broker's work stays about constant; `None` once that
/// reaches librdkafka's own refresh.
pub fn interval(topics: usize) -> Option<Duration> {
    let wait = FASTEST * (1 + topics / 100) as u32;
    (wait < LIBRDKAFKA_REFRESH).then_some(wait)
}

/// True when `subscription` is a pattern that this thread helps: a classic-protocol
/// member's regular expression (librdkafka takes those that start with `^`).
pub fn wanted(subscription: &[String], consumer_config: &rdkafka::ClientConfig) -> bool {
    let pattern = subscription.iter().any(|t| t.starts_with('^'));
    pattern && consumer_config.get("group.protocol").is_none_or(|p| p == "classic")
}

/// Asks for every topic's metadata until stopped or until the consumer is gone. Dropping
/// it stops the thread and waits for it (at most one request's timeout).
pub struct Discovery {
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl Discovery {
    pub fn start<C: ConsumerContext + 'static>(consumer: Weak<BaseConsumer<C>>) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let thread = std::thread::Builder::new().name("topic-discovery".into()).spawn(move || {
            while !token.is_cancelled() {
                let Some(consumer) = consumer.upgrade() else { return };
                let wait = match consumer.fetch_metadata(None, Duration::from_secs(2)) {
                    Ok(metadata) => match interval(metadata.topics().len()) {
                        Some(next) => next,
                        None => return,
                    },
                    // The broker away: the group's loop reports it; ask again later.
                    Err(e) => {
                        debug!("topic discovery: {e}");
                        LIBRDKAFKA_REFRESH
                    }
                };
                drop(consumer);
                let until = Instant::now() + wait;
                while !token.is_cancelled() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })?;
        Ok(Discovery { stop, thread: Some(thread) })
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_less_often_as_topics_grow_and_stops_where_librdkafka_refreshes() {
        assert_eq!(interval(0), Some(Duration::from_millis(250)));
        assert_eq!(interval(99), Some(Duration::from_millis(250)));
        assert_eq!(interval(100), Some(Duration::from_millis(500)));
        assert_eq!(interval(1_000), Some(Duration::from_millis(2_750)));
        assert_eq!(interval(1_900), None);
        assert_eq!(interval(5_000), None);
    }

    #[test]
    fn only_for_patterns_of_the_classic_protocol() {
        let mut classic = rdkafka::ClientConfig::new();
        classic.set("group.id", "g");
        let mut consumer = classic.clone();
        consumer.set("group.protocol", "consumer");
        let pattern = vec!["^docrepl\\..*".to_string()];
        assert!(wanted(&pattern, &classic));
        assert!(!wanted(&pattern, &consumer));
        assert!(!wanted(&["docrepl.shop.orders".to_string()], &classic));
    }
}
