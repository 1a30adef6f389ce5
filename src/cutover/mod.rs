//! `docrepl cutover`: the steps of switching the applications to the target, done and
//! checked in order, ending "ready to switch" (exit 0) or "not ready" with every reason
//! (exit 1; 2 when it could not check):
//!
//! 1. wait for quiet: no message but heartbeats added to the sink's topics for
//!    `--quiet-secs` (the applications' writes stopped, the source published what it read);
//! 2. wait until the sink group has applied everything (its committed offset at each
//!    partition's end);
//! 3. make the unique and TTL indexes final (see `metadata::rule`), unless `--check-only`;
//! 4. verify documents and metadata against the source (the metadata in its final form).
//!
//! With the source region gone (`--source-down`) the target is checked against the
//! source metadata the sink recorded (documents cannot be compared).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::config::Config;
use crate::event::Namespace;
use crate::metadata::{catalog, plan, CollectionMetadata};

mod finalise;
pub mod kafka;

#[derive(Debug, Args)]
pub struct CutoverArgs {
    /// How long the topics must gain no message before the source counts as quiet.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub quiet_secs: u64,
    /// Give up waiting (for quiet, for the sink) after this long, and say what is missing.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub timeout_secs: u64,
    /// Check only: leave unique and TTL indexes in their replicating form.
    #[arg(long)]
    pub check_only: bool,
    /// The source cannot be reached (its region is down): check the target against the
    /// metadata the sink recorded, and what reached Kafka.
    #[arg(long)]
    pub source_down: bool,
}

/// Runs the cutover; returns the exit code (0 ready, 1 not ready).
pub async fn run(config: &Config, args: &CutoverArgs) -> anyhow::Result<u8> {
    let sink = config.sink.as_ref().context("cutover needs the [sink] section")?;
    let target = crate::mongo::connect(&sink.uri, "sink.uri", sink.flavor().0).await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut not_ready: Vec<String> = Vec::new();

    let progress = kafka::Progress::new(config).await?;
    println!("cutover: {} partitions of the sink's topics (group {})", progress.partition_count(), sink.group_id);
    let ends = wait_for_quiet(config, &progress, args.quiet_secs, deadline, &mut not_ready).await?;
    if not_ready.is_empty() {
        println!("1. quiet: no message but heartbeats added for {} s", args.quiet_secs);
    }
    let behind = wait_until_applied(config, &progress, &ends, deadline).await?;
    if behind.is_empty() {
        println!("2. caught up: the sink group applied every message on its topics");
    } else {
        let total: i64 = behind.iter().map(|(_, _, n)| n).sum();
        let worst: Vec<String> = behind.iter().take(5).map(|(t, p, n)| format!("{t}[{p}]: {n}")).collect();
        not_ready.push(format!("the sink group {} has not applied {total} messages on {} partitions ({}); is the sink running?", sink.group_id, behind.len(), worst.join(", ")));
    }

    let source = match (args.source_down, config.source.as_ref()) {
        (true, _) => None,
        (false, None) => anyhow::bail!("cutover needs the [source] section to compare with the source (or --source-down when its region is gone)"),
        (false, Some(src)) => match connect_source(src).await {
            Ok(client) => Some((client, src)),
            Err(e) => {
                not_ready.push(format!("the source cannot be reached ({e:#}); with its region gone, run with --source-down to check the target against what reached it"));
                None
            }
        },
    };
    let metadata = match &source {
        Some((client, src)) => {
            let databases = crate::source::discovery::databases_to_read(client, src).await?;
            crate::verify::metadata::source_metadata(client, src, &databases, None).await?
        }
        // What the sink recorded, of the namespaces this pair replicates (other pairs may
        // record theirs on the same target).
        None => crate::sink::metadata::recorded(&target, &sink.state_database)
            .await?
            .into_iter()
            .map(|(_, m)| m)
            .filter(|m| config.source.as_ref().is_none_or(|src| replicates(src, &m.ns)))
            .collect(),
    };

    // Unique and TTL only once nothing is left to apply: a unique index made early could
    // refuse a write still on its way.
    let finalised = !args.check_only && not_ready.is_empty();
    if finalised {
        let steps = finalise_all(&target, sink, &metadata).await?;
        println!("3. indexes final: {} steps (unique, TTL) done", steps.done);
        not_ready.extend(steps.refused);
    } else if args.check_only {
        println!("3. indexes final: skipped (--check-only)");
    }

    let mut drift_lines = Vec::new();
    for drift in crate::verify::metadata::drifts(&target, sink, &metadata, finalised).await? {
        drift_lines.push(drift.to_string());
    }
    if !drift_lines.is_empty() {
        not_ready.push(format!("metadata differs on {} namespaces:\n{}", drift_lines.len(), drift_lines.concat().trim_end()));
    }
    if let Some((client, src)) = &source {
        let unequal = compare_documents(client, src, &target, sink).await?;
        if unequal.is_empty() {
            let what = if drift_lines.is_empty() { "documents and metadata equal" } else { "documents equal, metadata differs (below)" };
            println!("4. verify: {what} ({} namespaces)", metadata.len());
        } else {
            not_ready.push(format!("documents differ:\n{}", unequal.concat().trim_end()));
        }
    } else {
        println!("4. verify: metadata checked against the sink's record; documents not compared (source down)");
    }

    if not_ready.is_empty() {
        if !args.check_only {
            let at = record_cutover_point(config, &target, sink, args.source_down).await?;
            println!("5. recorded: the target is ready from cluster time {}.{} (where `docrepl reverse` starts the opposite direction)", at.time, at.increment);
        }
        println!("READY TO SWITCH: point the applications at the target");
        Ok(0)
    } else {
        println!("NOT READY:");
        for reason in &not_ready {
            println!("- {reason}");
        }
        Ok(1)
    }
}

/// Records the target's cluster time now, just past the sink's last write: everything
/// written on the target after it is the applications' (see `direction::lock`).
async fn record_cutover_point(config: &Config, target: &mongodb::Client, sink: &crate::sink::SinkConfig, source_down: bool) -> anyhow::Result<bson::Timestamp> {
    let now = crate::mongo::cluster_time(target)
        .await
        .context("cannot read the target's cluster time")?
        .context("the target reported no cluster time (is it a replica set?)")?;
    // Later writes have a greater time: one increment on, none of the sink's is after it.
    let at = bson::Timestamp { time: now.time, increment: now.increment + 1 };
    let direction = crate::direction::Direction::of(config);
    crate::direction::lock::record_cutover(&target.database(&sink.state_database), &direction, at, source_down).await.context("cannot record the cutover point on the target")
}

async fn connect_source(src: &crate::source::SourceConfig) -> anyhow::Result<mongodb::Client> {
    let client = crate::mongo::connect(&src.uri, "source.uri", src.flavor().0).await?;
    client.database("admin").run_command(bson::doc! {"ping": 1}).await?;
    Ok(client)
}

/// Waits until the topics' ends stop moving for `quiet_secs`; returns the ends.
async fn wait_for_quiet(config: &Config, progress: &kafka::Progress, quiet_secs: u64, deadline: Instant, not_ready: &mut Vec<String>) -> anyhow::Result<kafka::Offsets> {
    let mut ends = tokio::task::block_in_place(|| progress.ends())?;
    let mut since = Instant::now();
    loop {
        if since.elapsed() >= Duration::from_secs(quiet_secs) {
            return Ok(ends);
        }
        if Instant::now() >= deadline {
            not_ready.push(format!("the topics did not go quiet for {quiet_secs} s: messages were still being added (stop the applications' writes first)"));
            return Ok(ends);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = tokio::task::block_in_place(|| progress.ends())?;
        if now != ends {
            // An idle source's heartbeats move the ends too: only changes break the quiet.
            if !tokio::task::block_in_place(|| progress.only_heartbeats(config, &ends, &now))? {
                since = Instant::now();
            }
            ends = now;
        }
    }
}

/// Waits until the group committed `ends` everywhere (or all it has left are heartbeats,
/// which change nothing: the last ones of a source that stopped after its sinks); returns
/// what is still behind.
async fn wait_until_applied(config: &Config, progress: &kafka::Progress, ends: &kafka::Offsets, deadline: Instant) -> anyhow::Result<Vec<(String, i32, i64)>> {
    loop {
        let committed = tokio::task::block_in_place(|| progress.committed())?;
        let behind = kafka::behind(ends, &committed);
        if behind.is_empty() {
            return Ok(behind);
        }
        let applied: kafka::Offsets = committed.iter().map(|(k, &o)| (k.clone(), o.max(0))).collect();
        let rest: kafka::Offsets = behind.iter().filter_map(|(t, p, _)| ends.get(&(t.clone(), *p)).map(|&e| ((t.clone(), *p), e))).collect();
        if tokio::task::block_in_place(|| progress.only_heartbeats(config, &applied, &rest))? {
            return Ok(Vec::new());
        }
        if Instant::now() >= deadline {
            return Ok(behind);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether the source configuration `src` replicates `ns` (without asking the source).
fn replicates(src: &crate::source::SourceConfig, ns: &Namespace) -> bool {
    let database = match src.database_selection() {
        crate::source::DatabaseSelection::Named(dbs) => dbs.contains(&ns.db),
        crate::source::DatabaseSelection::Every => true,
    };
    database && crate::source::scope::Scope::of(src, &ns.db).includes(&ns.coll)
}

struct Finalised {
    done: usize,
    refused: Vec<String>,
}

/// Makes every unique and TTL index of the target final.
async fn finalise_all(target: &mongodb::Client, sink: &crate::sink::SinkConfig, metadata: &[CollectionMetadata]) -> anyhow::Result<Finalised> {
    let mut out = Finalised { done: 0, refused: Vec::new() };
    let by_target: BTreeMap<Namespace, &CollectionMetadata> = metadata.iter().map(|m| (sink.target_namespace(&m.ns), m)).collect();
    for (ns, source) in by_target {
        let Some(actual) = catalog::read_one(target, &ns.db, &ns.coll, true).await? else { continue };
        for step in plan::finalise(source, &actual) {
            match finalise::apply(target, sink.flavor().0, &ns, source, &step).await {
                Ok(()) => out.done += 1,
                Err(why) => out.refused.push(why),
            }
        }
    }
    Ok(out)
}

/// `verify`'s document comparison of every namespace; the reports that are not equal.
async fn compare_documents(source: &mongodb::Client, src: &crate::source::SourceConfig, target: &mongodb::Client, sink: &crate::sink::SinkConfig) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for ns in crate::verify::namespaces_to_compare(source, src, &[]).await? {
        let report = crate::verify::compare(source, &ns, target, &sink.target_namespace(&ns), 5).await?;
        if !report.equal() {
            out.push(report.to_string());
        }
    }
    Ok(out)
}
