//! `docrepl reverse`: turns a pair around after `docrepl cutover` (planned, or with
//! `--source-down`), with no copy and no hand edits:
//!
//! 1. the old direction must be stopped: no live holder of its lock on either cluster;
//! 2. the cutover's record on the target gives the point the new source starts at;
//! 3. the opposite direction's file is made and validated (see `config::reversed`);
//! 4. both clusters' records move to the next trip (the old source's only when it can be
//!    reached: with its region down the new direction's sink does it when it first
//!    reaches that cluster), which retires the old source's checkpoints; the file is
//!    written.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::config::{reversed, Direction, Reversal};
use super::lock::{self, Here};
use crate::config::{Config, Role};

#[derive(Debug, Args)]
pub struct ReverseArgs {
    /// Where to write the opposite direction's config (refused if the file exists).
    #[arg(long, value_name = "FILE")]
    pub write: PathBuf,
    /// The region of [source] (default: pair.source_region).
    #[arg(long)]
    pub source_region: Option<String>,
    /// The region of [sink] (default: pair.target_region).
    #[arg(long)]
    pub target_region: Option<String>,
    /// The old source's region is down: turn the target around alone.
    #[arg(long)]
    pub source_down: bool,
}

/// Runs `reverse`; 0 when the file is written, 2 when a step before it must come first.
pub async fn run(config: &Config, path: &Path, args: &ReverseArgs) -> anyhow::Result<u8> {
    let src = config.source.as_ref().context("reverse needs the [source] section (the side that was read)")?;
    let sink = config.sink.as_ref().context("reverse needs the [sink] section (the side the applications now use)")?;
    let old = Direction::of(config);
    let region = |flag: &Option<String>, key: &Option<String>, name: &str| {
        flag.clone().or_else(|| key.clone()).with_context(|| format!("name the {name} region: pair.{name}_region in the file or --{name}-region (it names the reversed direction's topics and group)"))
    };
    let source_region = region(&args.source_region, &config.pair.source_region, "source")?;
    let target_region = region(&args.target_region, &config.pair.target_region, "target")?;
    anyhow::ensure!(source_region != target_region, "the source and target regions are both {source_region:?}");
    if args.write.exists() {
        println!("not reversed: {} exists; name a new file (the reversed direction's config)", args.write.display());
        return Ok(2);
    }
    let old = Direction { source_region: Some(source_region.clone()), target_region: Some(target_region.clone()), ..old };

    let target = crate::mongo::connect(&sink.uri, "sink.uri", sink.flavor().0).await?;
    let target_state = target.database(&sink.state_database);
    let source = if args.source_down {
        None
    } else {
        let client = crate::mongo::connect(src.state_uri(), "source.uri", src.state_flavor()).await?;
        client.database("admin").run_command(bson::doc! {"ping": 1}).await.context("the old source cannot be reached: with its region down, run reverse with --source-down")?;
        Some(client.database(&src.state.database))
    };

    // 1. Nothing of the old direction may still run.
    let mut running: Vec<String> = lock::running(&target_state, "sink.uri", &old).await?.iter().map(|h| format!("on the target: {h}")).collect();
    if let Some(db) = &source {
        running.extend(lock::running(db, "source.uri", &old).await?.iter().map(|h| format!("on the source: {h}")));
    }
    if !running.is_empty() {
        println!("not reversed: {} is still running; stop its services first:\n- {}", old.describe(), running.join("\n- "));
        return Ok(2);
    }

    // 2. Where the new direction starts.
    let Some(start_at) = lock::cutover_point(&target_state, &old).await? else {
        println!("not reversed: no cutover of {} is recorded on the target: run `docrepl cutover --config {}{}` until it says READY TO SWITCH", old.describe(), path.display(), if args.source_down { " --source-down" } else { "" });
        return Ok(2);
    };

    // 3. The new direction's file, made and checked before either cluster turns.
    let reversal = Reversal { pair: old.pair.clone(), trip: old.trip + 1, source_region: target_region.clone(), target_region: source_region.clone(), start_at };
    let (prefix, group) = reversal.names();
    let new = Direction { pair: old.pair.clone(), trip: reversal.trip, source_region: Some(target_region.clone()), target_region: Some(source_region.clone()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: toml::Value = toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let out = reversed(&value, &reversal)?;
    let written = format!(
        "# Written by `docrepl reverse --config {}` on {}: {} after {}.\n# Environment overrides (DOCREPL_SOURCE__*, DOCREPL_SINK__*) are not in this file: swap them too.\n{}",
        path.display(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        new.describe(),
        old.describe(),
        toml::to_string(&out).context("cannot write the reversed config")?
    );
    Config::from_toml_str(&written, &args.write, Vec::new(), Role::Both).context("the reversed config does not validate (a bug: please report it with the original file)")?;

    // 4. The next trip on both clusters, then the file.
    let old_scope = src.name.clone().unwrap_or_else(|| config.kafka.topic_prefix.clone());
    lock::settle_trip(&target_state, "sink.uri", &new, Here::Source, Some(&prefix), None).await?;
    match &source {
        Some(db) => lock::settle_trip(db, "source.uri", &new, Here::Target, None, Some(&old_scope)).await?,
        None => println!("the old source is down: its checkpoints are retired when the new direction's sink first reaches it (or `docrepl repair` with the new file)"),
    }
    write_new(&args.write, &written)?;
    println!("REVERSED: {}", new.describe());
    println!("- the new source reads {} from cluster time {}.{} (the cutover), with no copy", redacted(&sink.uri), start_at.time, start_at.increment);
    println!("- topics {prefix}.<db>.<coll>, sink group {group}{}", if source.is_some() { "; the old direction's checkpoints are retired" } else { "" });
    println!("- config: {} (run `docrepl source` in {target_region} and `docrepl sink` in {source_region} with it)", args.write.display());
    Ok(0)
}

fn redacted(uri: &str) -> String {
    crate::redact::redact_uri(uri)
}

/// Creates `path` with `text`, readable by its owner only (it holds both clusters' URIs).
fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}
