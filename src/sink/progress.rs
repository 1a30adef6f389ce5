//! How far this sink member has brought the target, as `/status` shows it: per partition
//! (offsets, lag, rate, the source time of the newest applied event) and per topic the
//! recovery point, the source time up to which the target holds every change the topic
//! carries. Pure: the consumer thread gathers the numbers, this module only combines them.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::status::{LagSplit, PartitionStatus, TopicRecovery};

/// One assigned partition, as its worker left it.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionProgress {
    pub topic: String,
    pub partition: i32,
    /// Next offset to read after the last committed batch (-1: nothing committed yet).
    pub committed: i64,
    pub last_batch_size: u64,
    pub docs_written: u64,
    /// Source `ts_ms` of the newest event applied since this member took the partition
    /// (0: none yet).
    pub applied_source_ms: u64,
    /// The last batch's lag split (see [`lag_split`]), in milliseconds.
    pub lag_split_ms: [i64; 3],
}

/// The source time up to which the target holds every change of one topic, over the
/// partitions given (the ones this member holds). One document's events stay in one
/// partition in source order, so a partition that applied an event from time T holds all
/// of its changes up to T; a partition with nothing left to read holds everything the
/// topic has and does not hold the point back. `None` when a partition that is behind
/// has applied nothing yet (or its high watermark is unknown): its position in source
/// time is not known.
pub fn recovery_point(partitions: &[(&PartitionProgress, Option<i64>)]) -> Option<u64> {
    let mut point: Option<u64> = None;
    let mut newest_applied = 0;
    for (p, high) in partitions {
        newest_applied = newest_applied.max(p.applied_source_ms);
        let caught_up = matches!(high, Some(h) if p.committed >= *h);
        if caught_up {
            continue;
        }
        if high.is_none() || p.applied_source_ms == 0 {
            return None;
        }
        point = Some(point.map_or(p.applied_source_ms, |t| t.min(p.applied_source_ms)));
    }
    // Every partition caught up: the target holds the newest event it applied and all
    // before it. (With no event applied at all there is nothing to state.)
    point.or((newest_applied > 0).then_some(newest_applied))
}

/// Where the time between a change on the source and its write on the target went, in
/// milliseconds: source (change → produced to Kafka: reading it), transport (produced →
/// taken from the partition's queue: the broker, the link, waiting behind earlier
/// batches), apply (taken → written to the target). Clocks of two regions differ by their
/// skew; a negative span (a clock behind) counts as 0.
pub fn lag_split(source_ms: i64, produced_ms: i64, taken_ms: i64, written_ms: i64) -> [i64; 3] {
    [(produced_ms - source_ms).max(0), (taken_ms - produced_ms).max(0), (written_ms - taken_ms).max(0)]
}

/// Turns cumulative per-partition document counts into rates between snapshots.
#[derive(Default)]
pub struct RateTracker {
    previous: HashMap<(String, i32), (u64, Instant)>,
}

impl RateTracker {
    /// `/status` rows per partition and per topic from the workers' progress and the
    /// partitions' high watermarks.
    pub fn snapshot(
        &mut self,
        partitions: &[PartitionProgress],
        highs: &HashMap<(String, i32), i64>,
    ) -> (BTreeMap<String, PartitionStatus>, BTreeMap<String, TopicRecovery>) {
        let now = Instant::now();
        let mut rows = BTreeMap::new();
        let mut by_topic: BTreeMap<&str, Vec<(&PartitionProgress, Option<i64>)>> = BTreeMap::new();
        for p in partitions {
            let key = (p.topic.clone(), p.partition);
            let rate = match self.previous.get(&key) {
                Some((before, at)) => {
                    p.docs_written.saturating_sub(*before) as f64 / now.duration_since(*at).as_secs_f64().max(1e-3)
                }
                None => 0.0,
            };
            self.previous.insert(key.clone(), (p.docs_written, now));
            let high = highs.get(&key).copied();
            by_topic.entry(&p.topic).or_default().push((p, high));
            rows.insert(
                format!("{}/{}", p.topic, p.partition),
                PartitionStatus {
                    committed_offset: p.committed,
                    high_watermark: high,
                    consumer_lag: high.map(|h| if p.committed >= 0 { (h - p.committed).max(0) } else { h }),
                    last_batch_size: p.last_batch_size,
                    docs_written: p.docs_written,
                    docs_per_second: rate,
                    applied_source_time: millis_to_rfc3339(p.applied_source_ms),
                    lag: (p.applied_source_ms > 0).then(|| LagSplit {
                        source_seconds: p.lag_split_ms[0] as f64 / 1000.0,
                        transport_seconds: p.lag_split_ms[1] as f64 / 1000.0,
                        apply_seconds: p.lag_split_ms[2] as f64 / 1000.0,
                        end_to_end_seconds: age_seconds(p.applied_source_ms),
                    }),
                },
            );
        }
        let topics = by_topic
            .into_iter()
            .map(|(topic, parts)| {
                let point = recovery_point(&parts);
                let recovery = TopicRecovery {
                    partitions_held: parts.len(),
                    recovery_point: point.and_then(millis_to_rfc3339),
                    recovery_point_age_seconds: point.map(age_seconds),
                };
                (topic.to_string(), recovery)
            })
            .collect();
        (rows, topics)
    }
}

fn millis_to_rfc3339(ms: u64) -> Option<String> {
    (ms > 0).then(|| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        humantime::format_rfc3339_millis(t).to_string()
    })
}

fn age_seconds(ms: u64) -> f64 {
    (crate::metrics::now_ms().max(0) as u64).saturating_sub(ms) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(committed: i64, applied_source_ms: u64) -> PartitionProgress {
        PartitionProgress {
            topic: "t".into(),
            partition: 0,
            committed,
            last_batch_size: 0,
            docs_written: 0,
            applied_source_ms,
            lag_split_ms: [0; 3],
        }
    }

    #[test]
    fn the_partition_furthest_behind_sets_the_point() {
        let (a, b) = (p(10, 5_000), p(3, 2_000));
        assert_eq!(recovery_point(&[(&a, Some(20)), (&b, Some(9))]), Some(2_000));
    }

    #[test]
    fn caught_up_partitions_do_not_hold_it_back() {
        let (a, idle) = (p(10, 5_000), p(7, 1_000));
        assert_eq!(recovery_point(&[(&a, Some(20)), (&idle, Some(7))]), Some(5_000));
        // All caught up: everything up to the newest applied event is there.
        assert_eq!(recovery_point(&[(&a, Some(10)), (&idle, Some(7))]), Some(5_000));
    }

    #[test]
    fn unknown_when_a_lagging_partition_has_applied_nothing_yet() {
        let (a, fresh) = (p(10, 5_000), p(-1, 0));
        assert_eq!(recovery_point(&[(&a, Some(20)), (&fresh, Some(30))]), None);
        assert_eq!(recovery_point(&[(&a, None)]), None);
        assert_eq!(recovery_point(&[]), None);
    }
}
