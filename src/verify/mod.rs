//! `docrepl verify`: compares a source and a target collection. Exact counts, then both
//! sides walked in `_id` order at once (streaming: memory does not grow with the
//! collection), each document's canonical BSON bytes hashed and compared. Reports the
//! first missing, extra and differing `_id`s with totals; then each namespace's options
//! and indexes (see `metadata`), drift reported per namespace. Exit 0 equal, 1 different
//! (documents or metadata), 2 error.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use anyhow::Context;
use bson::{doc, Bson, RawDocumentBuf};
use clap::Args;
use futures::TryStreamExt;

use crate::config::Config;
use crate::event::Namespace;
use crate::source::SourceConfig;
use crate::debezium::id_relaxed_json;

pub mod metadata;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Collections to compare (`coll` with one `source.database`, else `db.coll`);
    /// default: every collection the source replicates.
    #[arg(long = "collection")]
    pub collections: Vec<String>,
    /// How many `_id`s of each kind to print.
    #[arg(long, default_value_t = 10)]
    pub show: usize,
    /// Re-check until equal or this many seconds passed (for "caught up" checks in scripts).
    #[arg(long, value_name = "SECS")]
    pub wait_for_quiet: Option<u64>,
    /// Compare documents only, not options and indexes.
    #[arg(long)]
    pub documents_only: bool,
}

/// What a comparison found for one collection.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    pub namespace: String,
    pub source_count: u64,
    pub target_count: u64,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub differing: Vec<String>,
    pub missing_total: u64,
    pub extra_total: u64,
    pub differing_total: u64,
}

impl Report {
    pub fn equal(&self) -> bool {
        self.missing_total == 0 && self.extra_total == 0 && self.differing_total == 0 && self.source_count == self.target_count
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.equal() { "EQUAL" } else { "DIFFERENT" };
        writeln!(
            f,
            "{}: {verdict} (source {} docs, target {} docs; missing {}, extra {}, differing {})",
            self.namespace, self.source_count, self.target_count, self.missing_total, self.extra_total, self.differing_total
        )?;
        for (what, ids) in [("missing in target", &self.missing), ("extra in target", &self.extra), ("differing", &self.differing)] {
            if !ids.is_empty() {
                writeln!(f, "  {what}: {}", ids.join(", "))?;
            }
        }
        Ok(())
    }
}

/// The namespaces to compare: `--collection`s (`coll` of the one database, or `db.coll`),
/// or every collection of every database the source replicates.
pub(crate) async fn namespaces_to_compare(source: &mongodb::Client, src: &SourceConfig, named: &[String]) -> anyhow::Result<Vec<Namespace>> {
    let databases = crate::source::discovery::databases_to_read(source, src).await?;
    if !named.is_empty() {
        return named
            .iter()
            .map(|n| match (n.split_once('.'), databases.as_slice()) {
                (Some((db, coll)), _) if databases.iter().any(|d| d == db) => Ok(Namespace::new(db, coll)),
                (_, [db]) => Ok(Namespace::new(db, n)),
                _ => anyhow::bail!("--collection {n:?}: name it as db.coll (the source reads {databases:?})"),
            })
            .collect();
    }
    let mut namespaces = Vec::new();
    for db in &databases {
        let mut colls = crate::source::discovery::collections_to_read(source, src, db).await?;
        colls.sort();
        namespaces.extend(colls.iter().map(|c| Namespace::new(db, c)));
    }
    Ok(namespaces)
}

/// Runs verify; returns the process exit code (0 equal, 1 different).
pub async fn run(config: &Config, args: &VerifyArgs) -> anyhow::Result<u8> {
    let src = config.source.as_ref().context("verify needs the [source] section")?;
    let sink = config.sink.as_ref().context("verify needs the [sink] section")?;
    let source = crate::mongo::connect(&src.uri, "source.uri", src.flavor().0).await?;
    let target = crate::mongo::connect(&sink.uri, "sink.uri", sink.flavor().0).await?;
    let namespaces = namespaces_to_compare(&source, src, &args.collections).await?;
    let databases = crate::source::discovery::databases_to_read(&source, src).await?;
    let only = (!args.collections.is_empty()).then_some(namespaces.as_slice());
    let deadline = args.wait_for_quiet.map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        let mut all_equal = true;
        let mut text = String::new();
        for ns in &namespaces {
            let target_ns = sink.target_namespace(ns);
            let report = compare(&source, ns, &target, &target_ns, args.show).await?;
            all_equal &= report.equal();
            text.push_str(&report.to_string());
        }
        if src.metadata.replicate && !args.documents_only {
            let described = metadata::source_metadata(&source, src, &databases, only).await?;
            let drifts = metadata::drifts(&target, sink, &described, false).await?;
            all_equal &= drifts.is_empty();
            for drift in &drifts {
                text.push_str(&drift.to_string());
            }
            if drifts.is_empty() {
                text.push_str(&format!("metadata: EQUAL ({} namespaces: options and indexes)\n", described.len()));
            }
        }
        let retry = !all_equal && deadline.is_some_and(|d| Instant::now() < d);
        if !retry {
            print!("{text}");
            return Ok(if all_equal { 0 } else { 1 });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Compares one collection on both sides.
pub async fn compare(
    source: &mongodb::Client,
    source_ns: &crate::event::Namespace,
    target: &mongodb::Client,
    target_ns: &crate::event::Namespace,
    show: usize,
) -> anyhow::Result<Report> {
    let a = source.database(&source_ns.db).collection::<RawDocumentBuf>(&source_ns.coll);
    let b = target.database(&target_ns.db).collection::<RawDocumentBuf>(&target_ns.coll);
    let mut report = Report {
        namespace: source_ns.to_string(),
        // Exact counts: estimates are wrong after an unclean shutdown.
        source_count: a.count_documents(doc! {}).await?,
        target_count: b.count_documents(doc! {}).await?,
        ..Default::default()
    };
    let mut ca = a.find(doc! {}).sort(doc! {"_id": 1}).batch_size(5000).await?;
    let mut cb = b.find(doc! {}).sort(doc! {"_id": 1}).batch_size(5000).await?;
    let mut da = ca.try_next().await?;
    let mut db = cb.try_next().await?;
    loop {
        let order = match (&da, &db) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => crate::bson_order::compare(&id_of(x), &id_of(y)),
        };
        match order {
            Ordering::Less => {
                note(&mut report.missing, &mut report.missing_total, da.as_ref(), show);
                da = ca.try_next().await?;
            }
            Ordering::Greater => {
                note(&mut report.extra, &mut report.extra_total, db.as_ref(), show);
                db = cb.try_next().await?;
            }
            Ordering::Equal => {
                if let (Some(x), Some(y)) = (&da, &db) {
                    if checksum(x) != checksum(y) {
                        note(&mut report.differing, &mut report.differing_total, da.as_ref(), show);
                    }
                }
                da = ca.try_next().await?;
                db = cb.try_next().await?;
            }
        }
    }
    Ok(report)
}

fn note(list: &mut Vec<String>, total: &mut u64, doc: Option<&RawDocumentBuf>, show: usize) {
    *total += 1;
    if list.len() < show {
        if let Some(d) = doc {
            list.push(id_relaxed_json(&id_of(d)));
        }
    }
}

fn id_of(doc: &RawDocumentBuf) -> Bson {
    doc.get("_id").ok().flatten().and_then(|v| Bson::try_from(v).ok()).unwrap_or(Bson::Null)
}

/// A hash of the document's BSON bytes (field order and exact types included).
pub fn checksum(doc: &RawDocumentBuf) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    doc.as_bytes().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_sort_like_mongodb() {
        let mut v = vec![
            Bson::MaxKey,
            Bson::Boolean(true),
            Bson::ObjectId(bson::oid::ObjectId::from_bytes([1; 12])),
            Bson::String("b".into()),
            Bson::Int64(10),
            Bson::Double(2.5),
            Bson::Int32(3),
            Bson::Null,
            Bson::MinKey,
            Bson::String("a".into()),
        ];
        v.sort_by(crate::bson_order::compare);
        assert_eq!(
            v,
            vec![
                Bson::MinKey,
                Bson::Null,
                Bson::Double(2.5),
                Bson::Int32(3),
                Bson::Int64(10),
                Bson::String("a".into()),
                Bson::String("b".into()),
                Bson::ObjectId(bson::oid::ObjectId::from_bytes([1; 12])),
                Bson::Boolean(true),
                Bson::MaxKey,
            ]
        );
    }
}
