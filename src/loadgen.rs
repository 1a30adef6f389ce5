//! `docrepl loadgen`: inserts N documents (default 10 million) into a collection, batched
//! and concurrent, optionally paced (governor) and optionally mixed with updates, deletes
//! and replaces over existing `_id`s for correctness runs. Deterministic with `--seed`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bson::{doc, Bson, Document};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::Config;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shape {
    /// Small flat documents (~100 bytes).
    Flat,
    /// Nested documents with arrays (~400 bytes).
    Nested,
    /// Every BSON type, including the awkward ones (Decimal128, old dates, regex, ...).
    Types,
    /// ~4 KB of random text per document: little for compression to take, so a capped
    /// link, not the CPU, limits how fast they cross it (scripts/bench.sh's 100 Mbit/s rows).
    Text,
}

#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// Documents to insert.
    #[arg(long, short = 'n', default_value_t = 10_000_000)]
    pub count: u64,
    /// Collection in `source.database` (or `--database`).
    #[arg(long, default_value = "loadgen")]
    pub collection: String,
    /// Database; default `source.database` of the config.
    #[arg(long)]
    pub database: Option<String>,
    /// Write into the sink's (target) cluster instead of the source: the machine's ceiling.
    #[arg(long)]
    pub target: bool,
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent insert tasks.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    #[arg(long, value_enum, default_value_t = Shape::Flat)]
    pub shape: Shape,
    /// Documents (or operations) per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Mixed mode, `inserts:updates:deletes:replaces` weights, e.g. `50:30:10:10`.
    /// Updates, deletes and replaces pick `_id`s among the first `--hot` documents.
    #[arg(long)]
    pub mix: Option<String>,
    /// How many `_id`s mixed mode updates, deletes and replaces.
    #[arg(long, default_value_t = 5000)]
    pub hot: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Insert into a collection that already has documents (new `_id`s follow the highest).
    #[arg(long)]
    pub append: bool,
}

/// Operation weights of mixed mode.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Mix {
    insert: u32,
    update: u32,
    delete: u32,
    replace: u32,
}

fn parse_mix(s: &str) -> anyhow::Result<Mix> {
    let parts: Vec<u32> = s
        .split(':')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--mix {s:?}: expected four numbers like 50:30:10:10"))?;
    match parts.as_slice() {
        [i, u, d, r] if i + u + d + r > 0 => Ok(Mix { insert: *i, update: *u, delete: *d, replace: *r }),
        _ => bail!("--mix {s:?}: expected four non-negative weights (inserts:updates:deletes:replaces), not all zero"),
    }
}

/// Characters of a `Text` document's body.
const TEXT_BYTES: usize = 4000;

/// One generated document: deterministic for (seed, id).
pub fn make_document(shape: Shape, id: i64, seed: u64) -> Document {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let word: String = (0..16).map(|_| rng.random_range(b'a'..=b'z') as char).collect();
    match shape {
        Shape::Flat => doc! {
            "_id": id,
            "n": rng.random_range(0..1_000_000i32),
            "name": word,
            "price": rng.random_range(0.0..1000.0f64),
            "at": bson::DateTime::from_millis(1_700_000_000_000 + id),
        },
        Shape::Nested => doc! {
            "_id": id,
            "customer": {"name": word.clone(), "address": {"city": "Oslo", "zip": format!("{:04}", id % 10_000)}},
            "items": (0..5).map(|i| doc! {"sku": format!("{word}-{i}"), "qty": rng.random_range(1..10i32), "price": rng.random_range(1.0..100.0f64)}).collect::<Vec<_>>(),
            "tags": ["a", "b", "c"],
            "total": rng.random_range(0..100_000i64),
        },
        Shape::Types => doc! {
            "_id": id,
            "i32": rng.random::<i32>(),
            "i64": rng.random::<i64>(),
            "dbl": rng.random::<f64>(),
            "dec": format!("{}.{:04}", rng.random_range(0..1_000_000u32), rng.random_range(0..10_000u32)).parse::<bson::Decimal128>().unwrap_or_else(|_| bson::Decimal128::from_bytes([0; 16])),
            "old": bson::DateTime::from_millis(-rng.random_range(0..4_000_000_000_000i64)),
            "bin": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: word.as_bytes().to_vec() },
            "uuid": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: rng.random::<[u8; 16]>().to_vec() },
            "oid": bson::oid::ObjectId::from_bytes(rng.random::<[u8; 12]>()),
            "re": bson::Regex { pattern: format!("^{word}"), options: "i".into() },
            "ts": bson::Timestamp { time: rng.random(), increment: rng.random() },
            "min": Bson::MinKey,
            "max": Bson::MaxKey,
            "null": Bson::Null,
            "bool": rng.random::<bool>(),
            "arr": [[1, 2], [], [{"k": "v"}]],
            "ключ": "значение",
        },
        Shape::Text => {
            const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .";
            let body: String = (0..TEXT_BYTES).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
            doc! { "_id": id, "title": word, "body": body }
        }
    }
}

/// The database to write when `--database` is not given: the one `source.database`, or
/// with `--target` the database the sink writes that collection to (its `namespace_map`).
fn default_database(config: &Config, target: bool, collection: &str) -> Option<String> {
    let src = config.source.as_ref()?;
    let single = match src.database_selection() {
        crate::source::DatabaseSelection::Named(dbs) if dbs.len() == 1 => dbs.into_iter().next()?,
        _ => return None,
    };
    match (target, config.sink.as_ref()) {
        (true, Some(sink)) => Some(sink.target_namespace(&crate::event::Namespace::new(&single, collection)).db),
        _ => Some(single),
    }
}

/// Runs the generator; prints a final summary line. Returns an error for bad arguments
/// or an unusable cluster.
pub async fn run(config: &Config, args: &LoadgenArgs) -> anyhow::Result<()> {
    let (uri, key, flavor) = if args.target {
        let sink = config.sink.as_ref().context("--target needs a [sink] section")?;
        (sink.uri.clone(), "sink.uri", sink.flavor().0)
    } else {
        let src = config.source.as_ref().context("loadgen needs a [source] section (or --target with [sink])")?;
        (src.uri.clone(), "source.uri", src.flavor().0)
    };
    let database = args
        .database
        .clone()
        .or_else(|| default_database(config, args.target, &args.collection))
        .context("no database: pass --database (or set a single source.database)")?;
    if args.batch == 0 || args.concurrency == 0 {
        bail!("--batch and --concurrency must be at least 1");
    }
    let mix = args.mix.as_deref().map(parse_mix).transpose()?;
    let client = crate::mongo::connect(&uri, key, flavor).await?;
    crate::mongo::replica_set_name(&client, key).await?;
    let coll = client.database(&database).collection::<Document>(&args.collection);
    let existing = coll.estimated_document_count().await.context("cannot count the collection")?;
    let mut first_id: i64 = 0;
    if existing > 0 {
        if !args.append && mix.is_none() {
            bail!(
                "collection {database}.{} already has about {existing} documents; pass --append to add to it, or pick another --collection",
                args.collection
            );
        }
        let top = coll.find_one(doc! {}).sort(doc! {"_id": -1}).await?;
        let top_id = top.and_then(|d| match d.get("_id") {
            Some(Bson::Int32(i)) => Some(*i as i64),
            Some(Bson::Int64(i)) => Some(*i),
            Some(Bson::Double(f)) => Some(*f as i64),
            _ => None,
        });
        first_id = top_id.map(|i| i + 1).unwrap_or(0);
    }

    let progress = Progress::new(args.count);
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.store(true, Ordering::SeqCst);
        });
    }
    let limiter = crate::pacer::Pacer::per_second(args.rate).map(Arc::new);
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency {
        let coll = coll.clone();
        let (next, errors, stop, limiter, progress) =
            (Arc::clone(&next), Arc::clone(&errors), Arc::clone(&stop), limiter.clone(), progress.clone());
        let (count, batch, shape, seed, hot) = (args.count, args.batch, args.shape, args.seed, args.hot.max(1));
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(worker as u64));
            while !stop.load(Ordering::SeqCst) {
                let start = next.fetch_add(batch as u64, Ordering::SeqCst);
                if start >= count {
                    break;
                }
                let n = (batch as u64).min(count - start);
                if let Some(pacer) = &limiter {
                    pacer.take(n).await;
                }
                let result = match mix {
                    None => {
                        let docs: Vec<Document> =
                            (start..start + n).map(|i| make_document(shape, first_id + i as i64, seed)).collect();
                        coll.insert_many(docs).ordered(false).await.map(|_| ())
                    }
                    Some(mix) => mixed_ops(&coll, &mut rng, mix, shape, seed, first_id + start as i64, n, hot).await,
                };
                if let Err(e) = result {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("batch at {start} failed: {}", short_error(&e));
                }
                progress.add(n);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let done = progress.finish();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "loadgen: {done} docs into {database}.{} in {secs:.1} s = {:.0} docs/s, {} failed batches{}",
        args.collection,
        done as f64 / secs.max(1e-9),
        errors.load(Ordering::Relaxed),
        if stop.load(Ordering::SeqCst) { " (stopped early)" } else { "" }
    );
    Ok(())
}

/// One line for a failed batch: the first write error and how many there were.
fn short_error(e: &mongodb::error::Error) -> String {
    use mongodb::error::ErrorKind;
    match e.kind.as_ref() {
        ErrorKind::InsertMany(m) => match m.write_errors.as_deref() {
            Some([first, ..]) => format!(
                "{} of the batch's documents refused, first: {} (code {})",
                m.write_errors.as_ref().map(Vec::len).unwrap_or(0),
                first.message,
                first.code
            ),
            _ => e.to_string(),
        },
        _ => e.to_string(),
    }
}

/// `n` operations of mixed mode: inserts get new `_id`s from `next_id` on; the others
/// pick among `0..hot`.
#[allow(clippy::too_many_arguments)]
async fn mixed_ops(
    coll: &mongodb::Collection<Document>,
    rng: &mut StdRng,
    mix: Mix,
    shape: Shape,
    seed: u64,
    next_id: i64,
    n: u64,
    hot: u64,
) -> mongodb::error::Result<()> {
    let total = mix.insert + mix.update + mix.delete + mix.replace;
    let mut inserts = Vec::new();
    for i in 0..n {
        let pick = rng.random_range(0..total);
        let id = rng.random_range(0..hot) as i64;
        if pick < mix.insert {
            inserts.push(make_document(shape, next_id + i as i64, seed));
        } else if pick < mix.insert + mix.update {
            let v: i64 = rng.random();
            coll.update_one(doc! {"_id": id}, doc! {"$set": {"u": v, "sub.x": v % 7}, "$inc": {"count": 1}}).upsert(true).await?;
        } else if pick < mix.insert + mix.update + mix.delete {
            coll.delete_one(doc! {"_id": id}).await?;
        } else {
            let mut d = make_document(shape, id, rng.random());
            d.insert("replaced", true);
            coll.replace_one(doc! {"_id": id}, d).upsert(true).await?;
        }
    }
    if !inserts.is_empty() {
        coll.insert_many(inserts).ordered(false).await?;
    }
    Ok(())
}

/// A progress bar on a terminal; a plain line every 5 s otherwise.
#[derive(Clone)]
struct Progress {
    bar: Option<ProgressBar>,
    done: Arc<AtomicU64>,
    total: u64,
    started: Instant,
    last_line: Arc<std::sync::Mutex<Instant>>,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} docs  {per_sec}  ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            bar,
            done: Arc::new(AtomicU64::new(0)),
            total,
            started: Instant::now(),
            last_line: Arc::new(std::sync::Mutex::new(Instant::now())),
        }
    }

    fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        if let Ok(mut last) = self.last_line.lock() {
            if last.elapsed() >= Duration::from_secs(5) {
                *last = Instant::now();
                let secs = self.started.elapsed().as_secs_f64();
                eprintln!("loadgen: {done}/{} docs, {:.0} docs/s", self.total, done as f64 / secs.max(1e-9));
            }
        }
    }

    fn finish(&self) -> u64 {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.done.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_deterministic_per_seed() {
        for shape in [Shape::Flat, Shape::Nested, Shape::Types, Shape::Text] {
            assert_eq!(make_document(shape, 7, 1), make_document(shape, 7, 1));
            assert_ne!(make_document(shape, 7, 1), make_document(shape, 7, 2));
        }
    }

    #[test]
    fn text_documents_are_about_four_kilobytes() {
        let size = bson::to_vec(&make_document(Shape::Text, 7, 1)).map(|b| b.len()).unwrap_or(0);
        assert!((4000..4200).contains(&size), "{size}");
    }

    fn config(text: &str) -> Config {
        Config::from_toml_str(text, std::path::Path::new("test.toml"), std::iter::empty(), crate::config::Role::Tool)
            .expect("a valid test config")
    }

    const BOTH: &str = r#"
[source]
uri = "mongodb://127.0.0.1:27117/?replicaSet=rs-source"
database = "bench"
[sink]
uri = "mongodb://127.0.0.1:27217/?replicaSet=rs-target"
namespace_map = { "bench.docs" = "copy.docs" }
[kafka]
bootstrap_servers = "127.0.0.1:19092"
"#;

    #[test]
    fn the_source_database_is_the_default_on_the_source() {
        assert_eq!(default_database(&config(BOTH), false, "loadgen").as_deref(), Some("bench"));
    }

    #[test]
    fn target_writes_default_to_where_the_source_database_replicates() {
        // Issue #35 item 10: `loadgen --target` said "set a single source.database" with it set.
        assert_eq!(default_database(&config(BOTH), true, "loadgen").as_deref(), Some("bench"));
        // A collection the sink maps elsewhere goes where the sink would write it.
        assert_eq!(default_database(&config(BOTH), true, "docs").as_deref(), Some("copy"));
    }

    #[test]
    fn mix_parsing() {
        assert_eq!(parse_mix("50:30:10:10").unwrap(), Mix { insert: 50, update: 30, delete: 10, replace: 10 });
        assert!(parse_mix("1:2:3").is_err());
        assert!(parse_mix("0:0:0:0").is_err());
        assert!(parse_mix("a:b:c:d").is_err());
    }
}
