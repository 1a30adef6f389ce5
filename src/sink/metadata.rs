//! Applying a metadata message (see `debezium::metadata`) to the target. Every worker
//! that gets one makes sure the target collection exists, created with the source's
//! options (so a collation or `capped` is there before the first document of its share);
//! the worker of the collection's home partition alone changes options, builds and drops
//! indexes (one worker per collection does that work), following the cutover rule (see
//! `metadata::rule`), and records the source's metadata in `<sink.state_database>.metadata`
//! for `docrepl cutover`. Idempotent: the same message applied twice changes nothing.

use std::collections::HashSet;
use std::sync::Mutex;

use bson::{doc, Bson, Document};
use tracing::{info, warn};

use crate::debezium::MetadataMessage;
use crate::event::Namespace;
use crate::metadata::{catalog, plan, rule, CollectionMetadata, Kind};

/// Where the sink records what it applied, per target namespace.
pub const RECORDS: &str = "metadata";

/// Codes that mean the target will never take this metadata as it is (an index kind or
/// option it does not support, a conflicting definition): reported and dead-lettered.
/// Everything else (network, elections, an index build interrupted) is retried.
const REFUSALS: [i32; 15] = [2, 9, 14, 59, 67, 72, 85, 86, 115, 166, 197, 303, 16755, 40415, 17262];

/// MongoDB's NamespaceExists: another worker created the collection first.
const NAMESPACE_EXISTS: i32 = 48;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Worth retrying (network, elections, a build interrupted).
    #[error("{ns}: {step}: {source}")]
    Transient { ns: String, step: String, source: mongodb::error::Error },
}

/// The outcome of one message.
#[derive(Debug, PartialEq)]
pub enum Applied {
    Done,
    /// What the target refused, for the dead-letter topic (the rest was applied).
    Refused(String),
}

/// The namespaces this process has seen created, so that non-home workers check once.
#[derive(Default)]
pub struct MetadataApplier {
    created: Mutex<HashSet<Namespace>>,
}

fn code_of(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

fn refused(e: &mongodb::error::Error) -> bool {
    code_of(e).is_some_and(|c| REFUSALS.contains(&c))
}

impl MetadataApplier {
    /// Applies `message` to `target` (the namespace the sink writes the collection to).
    pub async fn apply(&self, client: &mongodb::Client, state_db: &str, target: &Namespace, message: &MetadataMessage) -> Result<Applied, ApplyError> {
        let source = &message.metadata;
        let home = message.partition == message.home;
        let step = |step: &str| {
            let ns = target.to_string();
            let step = step.to_string();
            move |source| ApplyError::Transient { ns, step, source }
        };
        let known = self.created.lock().map(|c| c.contains(target)).unwrap_or(false);
        if !home && (known || source.kind != Kind::Collection) {
            return Ok(Applied::Done);
        }
        let mut problems = Vec::new();
        let mut actual = catalog::read_one(client, &target.db, &target.coll, home).await.map_err(step("listing the target"))?;
        if actual.is_none() {
            if let Some(why) = self.create(client, target, source).await? {
                problems.push(why);
            }
            if home {
                actual = catalog::read_one(client, &target.db, &target.coll, true).await.map_err(step("listing the target"))?;
            }
        }
        if let Ok(mut created) = self.created.lock() {
            created.insert(target.clone());
        }
        if !home {
            return Ok(finish(problems));
        }
        let Some(actual) = actual else { return Ok(finish(problems)) };
        let steps = plan::plan(source, Some(&actual));
        problems.extend(steps.refused.iter().cloned());
        let db = client.database(&target.db);
        if !steps.coll_mod.is_empty() {
            let mut command = doc! {"collMod": &target.coll};
            command.extend(steps.coll_mod.clone());
            if let Err(e) = db.run_command(command).await {
                if !refused(&e) {
                    return Err(step("collMod")(e));
                }
                problems.push(format!("collMod {:?} refused: {e}", steps.coll_mod));
            }
        }
        for name in &steps.drop_indexes {
            match db.run_command(doc! {"dropIndexes": &target.coll, "index": name}).await {
                Ok(_) => {}
                // Already gone (27: IndexNotFound).
                Err(e) if code_of(&e) == Some(27) => {}
                Err(e) if refused(&e) => problems.push(format!("dropping index {name} refused: {e}")),
                Err(e) => return Err(step("dropIndexes")(e)),
            }
        }
        problems.extend(create_indexes(&db, &target.coll, &steps.create_indexes).await.map_err(step("createIndexes"))?);
        for (name, hidden) in &steps.hide {
            if let Err(e) = db.run_command(doc! {"collMod": &target.coll, "index": {"name": name, "hidden": hidden}}).await {
                if !refused(&e) {
                    return Err(step("collMod index")(e));
                }
                problems.push(format!("hiding index {name} refused: {e}"));
            }
        }
        if source.indexes.is_some() {
            record(client, state_db, target, source).await.map_err(step("recording the source's metadata"))?;
        }
        if !steps.is_empty() {
            info!(
                target_ns = %target,
                created = steps.create_indexes.len(),
                dropped = steps.drop_indexes.len(),
                options = ?steps.coll_mod.keys().collect::<Vec<_>>(),
                "target metadata follows the source"
            );
        }
        Ok(finish(problems))
    }

    /// Creates the target collection (or view) with the source's options as the rule says
    /// a replicating target has them. `Some(why)`: created without an option the target
    /// does not take.
    async fn create(&self, client: &mongodb::Client, target: &Namespace, source: &CollectionMetadata) -> Result<Option<String>, ApplyError> {
        let db = client.database(&target.db);
        let mut options = rule::replicating_options(&source.options);
        let mut dropped = None;
        loop {
            let mut command = doc! {"create": &target.coll};
            command.extend(options.clone());
            match db.run_command(command).await {
                Ok(_) => {
                    info!(target_ns = %target, kind = source.kind.name(), options = ?options.keys().collect::<Vec<_>>(), "target collection created with the source's options");
                    return Ok(dropped);
                }
                Err(e) if code_of(&e) == Some(NAMESPACE_EXISTS) => return Ok(dropped),
                // Pre- and post-images are for the target's own change streams: a target
                // without them still holds the same documents.
                Err(e) if refused(&e) && options.remove("changeStreamPreAndPostImages").is_some() => {
                    warn!(target_ns = %target, "the target refused changeStreamPreAndPostImages ({e}): created without it");
                    dropped = Some(format!("the target refused option changeStreamPreAndPostImages: {e}"));
                }
                Err(e) if refused(&e) => return Ok(Some(format!("the target refused to create {target} with the source's options {options:?}: {e}"))),
                Err(e) => return Err(ApplyError::Transient { ns: target.to_string(), step: "create".into(), source: e }),
            }
        }
    }
}

fn finish(problems: Vec<String>) -> Applied {
    if problems.is_empty() {
        Applied::Done
    } else {
        Applied::Refused(problems.join("; "))
    }
}

/// Builds `indexes` in one command; when the target refuses it, one at a time, so that
/// only those it refuses are reported. Returns the refusals.
async fn create_indexes(db: &mongodb::Database, coll: &str, indexes: &[Document]) -> mongodb::error::Result<Vec<String>> {
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    let all: Vec<Bson> = indexes.iter().cloned().map(Bson::Document).collect();
    match db.run_command(doc! {"createIndexes": coll, "indexes": all}).await {
        Ok(_) => return Ok(Vec::new()),
        Err(e) if !refused(&e) => return Err(e),
        Err(_) => {}
    }
    let mut problems = Vec::new();
    for ix in indexes {
        if let Err(e) = db.run_command(doc! {"createIndexes": coll, "indexes": [ix.clone()]}).await {
            if !refused(&e) {
                return Err(e);
            }
            warn!(coll, index = crate::metadata::index_name(ix), "the target refused an index of the source: {e}");
            problems.push(format!("index {} refused: {e}", crate::metadata::index_name(ix)));
        }
    }
    Ok(problems)
}

/// Records the source's metadata of `target` (what cutover finalises and checks).
async fn record(client: &mongodb::Client, state_db: &str, target: &Namespace, source: &CollectionMetadata) -> mongodb::error::Result<()> {
    let records = client.database(state_db).collection::<Document>(RECORDS);
    let entry = doc! {"_id": target.to_string(), "source": source.to_document(), "applied_at": bson::DateTime::now()};
    records.replace_one(doc! {"_id": target.to_string()}, entry).upsert(true).await.map(drop)
}

/// The source metadata recorded for each target namespace (by `_id`, `db.coll`).
pub async fn recorded(client: &mongodb::Client, state_db: &str) -> anyhow::Result<Vec<(Namespace, CollectionMetadata)>> {
    use futures::TryStreamExt;
    let records = client.database(state_db).collection::<Document>(RECORDS);
    let all: Vec<Document> = records.find(doc! {}).await?.try_collect().await?;
    let mut out = Vec::new();
    for entry in all {
        let id = entry.get_str("_id").unwrap_or_default();
        let Some((db, coll)) = id.split_once('.') else { continue };
        let source = entry.get_document("source").map_err(|_| anyhow::anyhow!("{state_db}.{RECORDS} {id}: no `source` document"))?;
        out.push((Namespace::new(db, coll), CollectionMetadata::from_document(source)?));
    }
    Ok(out)
}
