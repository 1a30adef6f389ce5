//! Writing one folded segment until every document is applied or known to be poison:
//! transient errors are retried with backoff and jitter (never dead-lettered), and
//! unique-index conflicts wait for the other partitions of the topic (see `conflicts`):
//! a document in conflict is dead-lettered only once every other partition has applied
//! everything up to the segment's newest source time and it still conflicts. Meanwhile a
//! document in conflict whose events were folded together is written one event at a
//! time, as the source changed it (its intermediate versions are what free the values
//! other documents are waiting for).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::conflicts::Progress;
use super::errors::ErrorClass;
use super::fold::{DocAction, FoldedDoc};
use super::worker::{PartitionShared, WorkerContext};
use super::writer::DocFailure;
use crate::event::Namespace;
use crate::metrics as m;

/// How often the other partitions' progress is read while a conflict waits.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// How often a waiting conflict is reported (log, status page).
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// The batch was abandoned (stop requested while the target kept failing): nothing of it
/// is committed, so the next owner of the partition replays it.
#[derive(Debug)]
pub struct Abandoned;

/// What a segment's write ended with: the poison failures by document position, and the
/// single patches refused (by message position, with why) of documents that got the rest.
pub struct Written {
    pub poison: HashMap<usize, DocFailure>,
    pub refused_patches: Vec<(usize, String)>,
}

/// Writes `docs` (folded from events whose newest source time is `newest_ts_ms`).
/// `one_by_one(doc)`: the actions of that document's events, each alone, in order.
pub async fn write_with_retry(
    ctx: &WorkerContext,
    shared: &PartitionShared,
    docs: &[FoldedDoc],
    newest_ts_ms: i64,
    one_by_one: &(dyn Fn(usize) -> Vec<DocAction> + Sync),
) -> Result<Written, Abandoned> {
    let mut work: Cow<'_, [FoldedDoc]> = Cow::Borrowed(docs);
    let mut poison: HashMap<usize, DocFailure> = HashMap::new();
    // Applied by an earlier attempt: not written again (patches must apply once).
    let mut done: HashSet<usize> = HashSet::new();
    let mut refused_patches = Vec::new();
    // Documents written one event at a time: the actions still to write.
    let mut stepping: HashMap<usize, std::collections::VecDeque<DocAction>> = HashMap::new();
    let mut conflict = ConflictWait::new(ctx, shared, newest_ts_ms);
    let mut backoff = Duration::from_millis(50);
    let mut attempts = 0u64;
    loop {
        let target = |ns: &Namespace| ctx.config.target_namespace(ns);
        let skip = |i: usize| poison.contains_key(&i) || done.contains(&i);
        let attempted: Vec<usize> = (0..work.len()).filter(|&i| !skip(i)).collect();
        let retry = match ctx.writer.write(&work, &skip, &target).await {
            Ok(outcome) => {
                let failed: HashSet<usize> = outcome.failures.iter().map(|f| f.doc).collect();
                refused_patches.extend(outcome.refused_patches.into_iter().filter(|(doc, ..)| !failed.contains(doc)).map(|(_, message, reason)| (message, reason)));
                let mut retry = false;
                for i in attempted.into_iter().filter(|i| !failed.contains(i)) {
                    // A step written: the next one, or done.
                    match stepping.get_mut(&i).and_then(|steps| steps.pop_front()) {
                        Some(next) => {
                            work.to_mut()[i].action = next;
                            retry = true;
                        }
                        None => {
                            done.insert(i);
                        }
                    }
                }
                let mut conflicts = Vec::new();
                for f in outcome.failures {
                    match f.class {
                        ErrorClass::Poison => {
                            poison.insert(f.doc, f);
                        }
                        ErrorClass::DuplicateKey => {
                            if !stepping.contains_key(&f.doc) && docs[f.doc].messages.len() > 1 {
                                let mut steps: std::collections::VecDeque<DocAction> = one_by_one(f.doc).into();
                                if let Some(first) = steps.pop_front() {
                                    debug!(doc = f.doc, steps = steps.len() + 1, "unique-index conflict: writing the document's events one at a time");
                                    work.to_mut()[f.doc].action = first;
                                    stepping.insert(f.doc, steps);
                                }
                            }
                            conflicts.push(f);
                        }
                        ErrorClass::Transient => {
                            // Not known to be about the document: retried until it passes,
                            // loudly, rather than dead-lettered.
                            if attempts.is_multiple_of(10) {
                                warn!(topic = %shared.topic, partition = shared.partition, code = f.code, attempts, "the target refused a statement with a code not known to be permanent; retrying (never dead-lettered): {}", f.message);
                                ctx.board.error(format!("{}[{}]: target refused a statement (code {}), retrying: {}", shared.topic, shared.partition, f.code, f.message));
                            }
                            retry = true;
                        }
                    }
                }
                if conflicts.is_empty() {
                    conflict.cleared();
                } else if conflict.final_now(&conflicts).await {
                    for f in conflicts {
                        poison.insert(f.doc, f);
                    }
                } else {
                    retry = true;
                }
                retry
            }
            Err(e) => {
                warn!(topic = %shared.topic, partition = shared.partition, "{e}; retrying in {backoff:?}");
                true
            }
        };
        if !retry {
            conflict.cleared();
            return Ok(Written { poison, refused_patches });
        }
        attempts += 1;
        metrics::counter!(m::SINK_RETRIES, "topic" => shared.topic.clone(), "partition" => shared.partition.to_string()).increment(1);
        sleep_unless_stopped(&shared.stop, backoff).await.map_err(|_| Abandoned)?;
        backoff = (backoff * 2).min(Duration::from_millis(ctx.config.max_backoff_ms));
    }
}

/// The state of a unique-index conflict's wait.
struct ConflictWait<'a> {
    ctx: &'a WorkerContext,
    shared: &'a PartitionShared,
    ts_ms: i64,
    since: Option<Instant>,
    checked: Option<Instant>,
    reported: Option<Instant>,
}

impl<'a> ConflictWait<'a> {
    fn new(ctx: &'a WorkerContext, shared: &'a PartitionShared, ts_ms: i64) -> Self {
        ConflictWait { ctx, shared, ts_ms, since: None, checked: None, reported: None }
    }

    fn gauge(&self) -> metrics::Gauge {
        metrics::gauge!(m::SINK_CONFLICTS_WAITING, "topic" => self.shared.topic.clone(), "partition" => self.shared.partition.to_string())
    }

    /// True when the conflicts are final: `sink.duplicate_key_retry_ms` has passed and
    /// every other partition of the topic is past the segment's newest source time.
    async fn final_now(&mut self, conflicts: &[DocFailure]) -> bool {
        let since = *self.since.get_or_insert_with(Instant::now);
        self.gauge().set(conflicts.len() as f64);
        if since.elapsed() < Duration::from_millis(self.ctx.config.duplicate_key_retry_ms) {
            return false;
        }
        if self.checked.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return false;
        }
        self.checked = Some(Instant::now());
        let progress = match &self.ctx.progress {
            Some(reader) => {
                let (reader, topic, partition, ts) = (std::sync::Arc::clone(reader), self.shared.topic.clone(), self.shared.partition, self.ts_ms);
                tokio::task::spawn_blocking(move || reader.past(&topic, partition, ts)).await.unwrap_or_else(|e| Err(e.to_string()))
            }
            None => Ok(Progress::AllPast),
        };
        let first = &conflicts[0];
        let behind = match progress {
            Ok(Progress::AllPast) => {
                warn!(topic = %self.shared.topic, partition = self.shared.partition, waited = ?since.elapsed(), "unique-index conflict still there with every other partition past it: dead-lettering ({})", first.message);
                return true;
            }
            Ok(Progress::Behind { partition, next_ts_ms, lag }) => {
                format!("partition {partition} is behind (next unapplied event at source time {next_ts_ms:?} ms, {lag} messages to go)")
            }
            Err(e) => format!("cannot read the other partitions' progress ({e})"),
        };
        if self.reported.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            self.reported = Some(Instant::now());
            let message = format!(
                "{}[{}]: {} document(s) in a unique-index conflict for {:?}; the write waits for the other partitions: {behind} ({})",
                self.shared.topic, self.shared.partition, conflicts.len(), since.elapsed(), first.message
            );
            warn!("{message}");
            self.ctx.board.error(message);
        }
        false
    }

    fn cleared(&mut self) {
        if self.since.take().is_some() {
            self.gauge().set(0.0);
        }
    }
}

/// Sleeps `base` ± 25 % jitter, or returns `Err` at once when stop was requested.
pub async fn sleep_unless_stopped(stop: &CancellationToken, base: Duration) -> Result<(), ()> {
    let jitter = rand::rng().random_range(0.75..1.25);
    tokio::select! {
        _ = stop.cancelled() => Err(()),
        _ = tokio::time::sleep(base.mul_f64(jitter)) => Ok(()),
    }
}
