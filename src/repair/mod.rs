//! `docrepl repair`: makes the `[sink]` side equal to the `[source]` side, moving only
//! what differs. Both sides are scanned once, at the same time, into chunks of the `_id`
//! order (count and digest, see `digest`); the comparison starts with about a thousand
//! coarse chunks and narrows only the spans that differ, level by level, down to lists of
//! `(_id, hash)` and then the documents themselves. With `--source-digests` the source is
//! read by a `docrepl digests` service in its own region (see `peer`), so the bytes
//! across the link grow with the differences, not with the data.
//!
//! It may run while the source takes writes and the stream applies them: a span compared
//! before a change is the stream's to bring level; what repair wrote is compared again
//! (after `--settle-ms`) until a pass finds nothing, since a write of repair can land
//! after a newer one of the stream. Whatever it overwrites or deletes is kept first
//! (`apply`). Exit 0 equal, 1 still different after `--max-passes`, 2 could not repair.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bson::Bson;
use clap::Args;

use crate::bson_order::compare;
use crate::config::Config;
use crate::event::Namespace;

mod apply;
pub mod digest;
mod levels;
pub mod peer;
pub mod range;
pub mod side;
mod squeeze;

use apply::{Applied, Applier};
use digest::{fixes, Fixes, Level, Span};
use levels::{fine_bits, steps_down, top_bits, LEVEL_STEP};
use side::{Local, Remote, Side};

pub use apply::REPAIRED;

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// URL of a `docrepl digests` service next to the source cluster: the source is read
    /// there and only digests and the documents that differ cross the link. Without it,
    /// this process reads the source itself (every document crosses).
    #[arg(long, value_name = "URL")]
    pub source_digests: Option<String>,
    /// Collections to repair (`coll` with one `source.database`, else `db.coll`);
    /// default: every collection the source replicates.
    #[arg(long = "collection")]
    pub collections: Vec<String>,
    /// Passes over what repair wrote before it gives up (exit 1): each compares those
    /// spans again, for writes that landed after repair read them.
    #[arg(long, default_value_t = 10)]
    pub max_passes: u32,
    /// Wait this long before comparing written spans again (lets the stream apply what
    /// is on its way).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub settle_ms: u64,
    /// Compare and report only; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What repair did to one collection.
#[derive(Debug, Default)]
struct Outcome {
    source_count: u64,
    target_count: u64,
    /// Spans read document by document in the first pass, and their documents (source).
    spans_listed: usize,
    differences: u64,
    applied: Applied,
    passes: u32,
    equal: bool,
}

/// A repair writes to the target as the pair's sink does: refused while this pair's
/// opposite direction reads the target (its source would send the repair's writes back)
/// or when the config is from before a turn; a config from a newer trip brings the
/// target's record up to it (retiring what the target read as a source before: see
/// `direction::lock::settle_trip`).
async fn guard_direction(config: &Config, state: &mongodb::Database) -> anyhow::Result<()> {
    use crate::direction::lock::{self, LockError};
    let direction = crate::direction::Direction::of(config);
    if let Some(holder) = lock::running(state, "sink.uri", &direction).await?.into_iter().find(|h| h.here == "source") {
        return Err(LockError::Held { pair: direction.pair, cluster: "sink.uri".into(), holder }.into());
    }
    lock::settle_trip(state, "sink.uri", &direction, crate::direction::Here::Target, None, None).await?;
    Ok(())
}

/// Runs repair; the exit code (0 equal, 1 still different).
pub async fn run(config: &Config, args: &RepairArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let sink = config.sink.as_ref().context("repair needs the [sink] section: the side to make equal")?;
    let target_client = crate::mongo::connect(&sink.uri, "sink.uri", sink.flavor().0).await?;
    let target = Arc::new(Local::new(target_client.clone(), sink.flavor().0));
    if !args.dry_run {
        guard_direction(config, &target_client.database(&sink.state_database)).await?;
    }
    let (source, namespaces) = match &args.source_digests {
        Some(url) => {
            let remote = Arc::new(Remote::new(url, std::env::var(peer::TOKEN_VAR).ok().filter(|t| !t.is_empty())));
            let reply = remote.call("namespaces", bson::doc! {}).await?;
            let all: Vec<Namespace> = reply
                .get_array("namespaces")
                .context("namespaces: no list in the answer")?
                .iter()
                .filter_map(|n| n.as_str()?.split_once('.').map(|(d, c)| Namespace::new(d, c)))
                .collect();
            (Side::Remote(remote), select(all, &args.collections)?)
        }
        None => {
            let src = config.source.as_ref().context("repair needs the [source] section: the side to read (or --source-digests)")?;
            let client = crate::mongo::connect(&src.uri, "source.uri", src.flavor().0).await?;
            let namespaces = crate::verify::namespaces_to_compare(&client, src, &args.collections).await?;
            (Side::Local(Arc::new(Local::new(client, src.flavor().0))), namespaces)
        }
    };
    let target_side = Side::Local(Arc::clone(&target));
    let applier = Applier::new(target_client, &sink.state_database);
    println!("repair {}: {} collections; kept versions go to {}.{REPAIRED}", applier.run_id(), namespaces.len(), sink.state_database);
    let mut all_equal = true;
    let mut total = Applied::default();
    for ns in &namespaces {
        let target_ns = sink.target_namespace(ns);
        let outcome = repair_collection(&source, &target_side, &applier, ns, &target_ns, args).await.with_context(|| format!("repairing {ns}"))?;
        all_equal &= outcome.equal;
        total.add(outcome.applied);
        println!("{}", line(ns, &outcome, args.dry_run));
    }
    let crossed = match &source {
        Side::Remote(r) => format!("{} bytes sent to and {} received from the digest service", r.bytes_sent.load(AtomicOrdering::Relaxed), r.bytes_received.load(AtomicOrdering::Relaxed)),
        Side::Local(l) => format!("{} bytes of documents read from the source by this process", l.bytes_read.load(AtomicOrdering::Relaxed)),
    };
    println!(
        "repair {}: {} in {:.1} s; inserted {}, overwritten {}, deleted {} ({} bytes written); {crossed}; {} bytes read on the repaired side",
        applier.run_id(),
        if all_equal { "EQUAL" } else if args.dry_run { "DIFFERENT (dry run)" } else { "STILL DIFFERENT" },
        started.elapsed().as_secs_f64(),
        total.inserted,
        total.overwritten,
        total.deleted,
        total.bytes,
        target.bytes_read.load(AtomicOrdering::Relaxed),
    );
    Ok(if all_equal { 0 } else { 1 })
}

/// `--collection` names among the source's namespaces (as `verify` takes them).
fn select(all: Vec<Namespace>, named: &[String]) -> anyhow::Result<Vec<Namespace>> {
    if named.is_empty() {
        return Ok(all);
    }
    named
        .iter()
        .map(|n| {
            let hits: Vec<&Namespace> = all.iter().filter(|ns| ns.to_string() == *n || ns.coll == *n).collect();
            match hits.as_slice() {
                [one] => Ok((*one).clone()),
                [] => anyhow::bail!("--collection {n:?}: the source replicates no such collection"),
                _ => anyhow::bail!("--collection {n:?}: more than one database has it; name it as db.coll"),
            }
        })
        .collect()
}

fn line(ns: &Namespace, o: &Outcome, dry_run: bool) -> String {
    let verdict = match (o.equal, dry_run) {
        (true, _) => "EQUAL",
        (false, true) => "DIFFERENT",
        (false, false) => "STILL DIFFERENT",
    };
    format!(
        "{ns}: {verdict} (source {} docs, target {} before; {} spans read document by document, {} documents differed; inserted {}, overwritten {}, deleted {}, already equal {}; {} passes)",
        o.source_count, o.target_count, o.spans_listed, o.differences, o.applied.inserted, o.applied.overwritten, o.applied.deleted, o.applied.unchanged, o.passes
    )
}

async fn repair_collection(source: &Side, target: &Side, applier: &Applier, ns: &Namespace, target_ns: &Namespace, args: &RepairArgs) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    let (a, b) = tokio::try_join!(source.estimated_count(ns), target.estimated_count(target_ns))?;
    let estimate = a.max(b);
    let (fine, top) = (fine_bits(estimate), top_bits(estimate));
    let scan_started = Instant::now();
    let ((source_scan, source_count), (target_scan, target_count)) = tokio::try_join!(source.scan(ns, fine), target.scan(target_ns, fine))?;
    tracing::info!(%ns, source_count, target_count, ms = scan_started.elapsed().as_millis() as u64, "repair scan: both sides read");
    out.source_count = source_count;
    out.target_count = target_count;
    let mut spans = vec![Span::everything()];
    let mut bits = top;
    loop {
        let (a, b) = tokio::try_join!(source.chunks(source_scan, &spans, bits), target.chunks(target_scan, &spans, bits))?;
        let mut level = Level::default();
        for (s, (a, b)) in spans.iter().zip(a.iter().zip(&b)) {
            level.compare(s, a, b);
        }
        tracing::info!(%ns, bits, spans = spans.len(), pieces = level.pieces, differing_pieces = level.differing, differing_spans = level.next.len(), "repair level");
        spans = level.next;
        if bits <= fine || spans.is_empty() {
            break;
        }
        // Levels below, and the document lists after the finest.
        let left = (bits - fine) / LEVEL_STEP + 1;
        let steps = steps_down(level.pieces, level.differing, left);
        if steps == left {
            break;
        }
        bits -= steps * LEVEL_STEP;
    }
    out.spans_listed = spans.len();
    // The scans are let go while the first lists are read (a round trip of the link saved).
    let mut scans = Some((source_scan, target_scan));

    while !spans.is_empty() {
        let listed = Instant::now();
        let forget = async {
            if let Some((s, t)) = scans.take() {
                tokio::join!(source.forget(s), target.forget(t));
            }
        };
        let (lists, ()) = tokio::join!(async { tokio::try_join!(source.list(ns, &spans), target.list(target_ns, &spans)) }, forget);
        let (a, b) = lists?;
        let list_ms = listed.elapsed().as_millis() as u64;
        let found = fixes(&a, &b);
        let differing = found.missing.len() + found.differing.len() + found.extra.len();
        if out.passes == 0 {
            out.differences = differing as u64;
        }
        if found.is_empty() {
            break;
        }
        out.passes += 1;
        if args.dry_run || out.passes > args.max_passes {
            out.equal = false;
            return Ok(out);
        }
        let put: Vec<Bson> = found.missing.iter().chain(&found.differing).cloned().collect();
        let fetched = Instant::now();
        let on_target: Vec<Bson> = put.iter().chain(&found.extra).cloned().collect();
        let (docs, current) = tokio::try_join!(source.fetch(ns, &put), applier.current(target_ns, &on_target))?;
        let fetch_ms = fetched.elapsed().as_millis() as u64;
        let applying = Instant::now();
        let applied = applier.apply(target_ns, &put, docs, &found.extra, current).await?;
        let apply_ms = applying.elapsed().as_millis() as u64;
        tracing::info!(%ns, pass = out.passes, differing, written = applied.writes(), list_ms, fetch_ms, apply_ms, "repair pass");
        out.applied.add(applied);
        spans = touched(spans, &found);
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
        // Written (or changed meanwhile) spans again, by two numbers a span: only those
        // that still differ are listed once more.
        let checking = Instant::now();
        let (a, b) = tokio::try_join!(source.span_digests(ns, &spans), target.span_digests(target_ns, &spans))?;
        let written = spans.len();
        spans = spans.into_iter().zip(a.iter().zip(&b)).filter(|(_, (a, b))| a != b).map(|(s, _)| s).collect();
        tracing::info!(%ns, pass = out.passes, written_spans = written, still_differing = spans.len(), ms = checking.elapsed().as_millis() as u64, "repair re-check");
    }
    out.equal = true;
    Ok(out)
}

/// The spans holding any `_id` repair wrote or found different (`spans` sorted and
/// disjoint, as the levels leave them).
fn touched(spans: Vec<Span>, found: &Fixes) -> Vec<Span> {
    let mut ids: Vec<&Bson> = found.missing.iter().chain(&found.differing).chain(&found.extra).collect();
    ids.sort_by(|a, b| compare(a, b));
    // Each span holds the `_id`s from the first at or after its start, while below its end.
    spans
        .into_iter()
        .filter(|s| {
            let first = if matches!(s.lo, Bson::MinKey) { 0 } else { ids.partition_point(|id| compare(id, &s.lo).is_lt()) };
            ids.get(first).is_some_and(|id| matches!(s.hi, Bson::MaxKey) || compare(id, &s.hi).is_lt())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_keeps_the_spans_holding_a_fix() {
        let span = |lo: Bson, hi: Bson| Span { lo, hi };
        let spans = vec![span(Bson::MinKey, Bson::Int32(10)), span(Bson::Int32(10), Bson::Int32(20)), span(Bson::Int32(30), Bson::Int32(40)), span(Bson::Int32(50), Bson::MaxKey)];
        let found = Fixes { missing: vec![Bson::Int32(35)], differing: vec![Bson::Int32(3)], extra: vec![Bson::Int32(25), Bson::Int32(99)] };
        assert_eq!(touched(spans.clone(), &found), vec![spans[0].clone(), spans[2].clone(), spans[3].clone()]);
        assert!(touched(spans, &Fixes::default()).is_empty());
    }
}
