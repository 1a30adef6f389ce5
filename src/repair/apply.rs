//! Makes the documents that differ equal on the repaired side, keeping what it replaces:
//! before a document there is overwritten or deleted, its version goes to
//! `<sink.state_database>.repaired` (what was there, what replaced it, when, by which
//! repair run), with majority write concern, so the writes a returning region made after
//! it was cut off are never lost in silence. Then one `update` (replacements, upserted)
//! and one `delete` per batch, `ordered: false` (each `_id` occurs once).

use std::collections::HashMap;

use anyhow::Context;
use bson::{doc, Bson, Document, RawArrayBuf, RawDocumentBuf};
use futures::TryStreamExt;

use super::side::{id_of, in_flight, FETCH_GROUP};
use crate::event::Namespace;

/// Where kept versions go, in the repaired side's state database.
pub const REPAIRED: &str = "repaired";
/// A kept record must fit in 16 MiB: beyond this, the replacing version is left out (it
/// is on the source anyway).
const KEEP_BOTH_UNDER: usize = 15 * 1024 * 1024;
/// Statements per write command: far under the server's limits and its 16 MiB.
const STATEMENTS_PER_COMMAND: usize = 500;

/// What one batch of fixes did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Written where the target had no document.
    pub inserted: u64,
    /// Written over a different document (kept first).
    pub overwritten: u64,
    /// Deleted (kept first).
    pub deleted: u64,
    /// Left alone: equal by now (the stream got there first), or gone from the source
    /// since it was listed (its delete is on its way).
    pub unchanged: u64,
    /// Bytes of the documents written.
    pub bytes: u64,
}

impl Applied {
    pub fn add(&mut self, o: Applied) {
        self.inserted += o.inserted;
        self.overwritten += o.overwritten;
        self.deleted += o.deleted;
        self.unchanged += o.unchanged;
        self.bytes += o.bytes;
    }

    pub fn writes(&self) -> u64 {
        self.inserted + self.overwritten + self.deleted
    }
}

/// The repaired side's documents by `_id` (see `Applier::current`).
pub struct Current(HashMap<Vec<u8>, RawDocumentBuf>);

pub struct Applier {
    target: mongodb::Client,
    kept: mongodb::Collection<Document>,
    run: bson::oid::ObjectId,
}

impl Applier {
    pub fn new(target: mongodb::Client, state_database: &str) -> Applier {
        let options = mongodb::options::CollectionOptions::builder().write_concern(mongodb::options::WriteConcern::majority()).build();
        let kept = target.database(state_database).collection_with_options(REPAIRED, options);
        Applier { target, kept, run: bson::oid::ObjectId::new() }
    }

    /// This run's id, in every record it keeps.
    pub fn run_id(&self) -> bson::oid::ObjectId {
        self.run
    }

    /// The repaired side's versions of these `_id`s (those it has): what `apply` keeps
    /// before it writes. Read while the source's versions are fetched (a few queries at once).
    pub async fn current(&self, ns: &Namespace, ids: &[Bson]) -> anyhow::Result<Current> {
        let coll = self.target.database(&ns.db).collection::<RawDocumentBuf>(&ns.coll);
        let reads = ids.chunks(FETCH_GROUP).map(|group| {
            let coll = coll.clone();
            let filter = doc! {"_id": {"$in": group.to_vec()}};
            async move {
                let cursor = coll.find(filter).await.with_context(|| format!("cannot read {ns} on the side being repaired"))?;
                cursor.try_collect::<Vec<RawDocumentBuf>>().await.with_context(|| format!("reading {ns}"))
            }
        });
        let found = in_flight(reads).await?.into_iter().flatten().map(|d| (id_key(&id_of(&d)), d));
        Ok(Current(found.collect()))
    }

    /// Writes `sources` (the source's versions of the `_id`s to put; an `_id` in `put`
    /// without one is gone from the source) and deletes `delete`, on `ns`; `current` is
    /// what `current` read of `put` and `delete` on the repaired side.
    pub async fn apply(&self, ns: &Namespace, put: &[Bson], sources: Vec<RawDocumentBuf>, delete: &[Bson], current: Current) -> anyhow::Result<Applied> {
        let mut out = Applied::default();
        let source_by_id: HashMap<Vec<u8>, RawDocumentBuf> = sources.into_iter().map(|d| (id_key(&id_of(&d)), d)).collect();
        let current = current.0;
        let mut keep: Vec<Document> = Vec::new();
        let mut replacements: Vec<RawDocumentBuf> = Vec::new();
        let mut deletes: Vec<Bson> = Vec::new();
        for id in put {
            let key = id_key(id);
            let Some(new) = source_by_id.get(&key) else {
                out.unchanged += 1;
                continue;
            };
            match current.get(&key) {
                Some(old) if old.as_bytes() == new.as_bytes() => out.unchanged += 1,
                Some(old) => {
                    keep.push(self.record(ns, id, "overwritten", Some(old), Some(new))?);
                    out.overwritten += 1;
                    replacements.push(new.clone());
                }
                None => {
                    out.inserted += 1;
                    replacements.push(new.clone());
                }
            }
        }
        for id in delete {
            match current.get(&id_key(id)) {
                Some(old) => {
                    keep.push(self.record(ns, id, "deleted", Some(old), None)?);
                    out.deleted += 1;
                    deletes.push(id.clone());
                }
                None => out.unchanged += 1,
            }
        }
        // Kept first, all of them, before anything is overwritten or deleted; then the
        // writes, a few commands at once (each `_id` occurs once, so their order is free).
        let keeps = keep.chunks(STATEMENTS_PER_COMMAND).map(|group| async move {
            self.kept.insert_many(group).await.with_context(|| format!("cannot keep the versions repair replaces on {ns}; nothing of them was changed")).map(|_| ())
        });
        in_flight(keeps).await?;
        out.bytes = replacements.iter().map(|d| d.as_bytes().len() as u64).sum();
        let db = self.target.database(&ns.db);
        let mut commands: Vec<RawDocumentBuf> = Vec::new();
        for group in replacements.chunks(STATEMENTS_PER_COMMAND) {
            let mut statements = RawArrayBuf::new();
            for d in group {
                let mut s = RawDocumentBuf::new();
                let mut q = RawDocumentBuf::new();
                q.append("_id", bson::RawBson::try_from(id_of(d)).context("an _id cannot be written back")?);
                s.append("q", q);
                s.append("u", d.clone());
                s.append("upsert", true);
                statements.push(s);
            }
            let mut cmd = RawDocumentBuf::new();
            cmd.append("update", ns.coll.as_str());
            cmd.append("updates", statements);
            cmd.append("ordered", false);
            cmd.append("bypassDocumentValidation", true);
            cmd.append("writeConcern", bson::rawdoc! {"w": "majority"});
            commands.push(cmd);
        }
        for group in deletes.chunks(STATEMENTS_PER_COMMAND) {
            let statements: Vec<Document> = group.iter().map(|id| doc! {"q": {"_id": id.clone()}, "limit": 1}).collect();
            let cmd = doc! {"delete": ns.coll.as_str(), "deletes": statements, "ordered": false, "writeConcern": {"w": "majority"}};
            commands.push(RawDocumentBuf::from_document(&cmd).context("a delete command cannot be encoded")?);
        }
        let writes = commands.into_iter().map(|cmd| {
            let db = db.clone();
            async move {
                let reply = db.run_raw_command(cmd).await.with_context(|| format!("repair's write to {ns} failed"))?;
                refuse_write_errors(ns, &reply)
            }
        });
        in_flight(writes).await?;
        Ok(out)
    }

    fn record(&self, ns: &Namespace, id: &Bson, action: &str, before: Option<&RawDocumentBuf>, after: Option<&RawDocumentBuf>) -> anyhow::Result<Document> {
        let before_doc = before.map(|d| d.to_document()).transpose().context("the target's version is not valid BSON")?;
        let both = before.map_or(0, |d| d.as_bytes().len()) + after.map_or(0, |d| d.as_bytes().len());
        let after_doc = match after {
            Some(d) if both < KEEP_BOTH_UNDER => Some(d.to_document().context("the source's version is not valid BSON")?),
            _ => None,
        };
        let mut rec = doc! {
            "ns": ns.to_string(),
            "doc_id": id.clone(),
            "action": action,
            "before": before_doc.map(Bson::Document).unwrap_or(Bson::Null),
            "after": after_doc.map(Bson::Document).unwrap_or(Bson::Null),
            "at": bson::DateTime::now(),
            "repair": self.run,
        };
        if after.is_some() && both >= KEEP_BOTH_UNDER {
            rec.insert("after_left_out", "too large to keep beside the old version; it is the source's current one");
        }
        Ok(rec)
    }
}

/// An `_id`'s exact bytes, as a map key (`Bson` is not `Hash`).
fn id_key(id: &Bson) -> Vec<u8> {
    let mut holder = Document::new();
    holder.insert("", id.clone());
    bson::to_vec(&holder).unwrap_or_else(|_| format!("{id:?}").into_bytes())
}

fn refuse_write_errors(ns: &Namespace, reply: &Document) -> anyhow::Result<()> {
    if let Ok(errors) = reply.get_array("writeErrors") {
        let first = errors.iter().filter_map(Bson::as_document).map(|d| d.get_str("errmsg").unwrap_or_default().to_string()).next();
        anyhow::bail!("the target refused {} of repair's writes to {ns}, the first: {}", errors.len(), first.unwrap_or_default());
    }
    if let Ok(wce) = reply.get_document("writeConcernError") {
        anyhow::bail!("repair's writes to {ns} did not reach a majority: {}", wce.get_str("errmsg").unwrap_or_default());
    }
    Ok(())
}
