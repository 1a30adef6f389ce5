//! Writes a folded batch to the target in as few round trips as possible: per target
//! collection one `insert` command with the documents last set by inserts (those already
//! on the target, after a replay, join the upserts), one `update` command carrying every
//! upsert (`ordered: false` is safe: each `_id` occurs once), one `delete` command, and,
//! for documents known only by patches: one `update` with the single patch statement of
//! each document that has one; for those with more, one `find` of their current versions,
//! the patches applied in memory (see `patching`) and one `update` replacing them; and,
//! for the rare patches behind a full document that could not apply in memory, `update`
//! commands in rounds (round k holds each document's k-th patch statement). Commands are split under 16 MiB and 100,000
//! statements; the write concern travels in each command; per-statement `writeErrors`
//! and `writeConcernError` are read out of replies that still say `ok: 1`. Every command
//! is bounded: `maxTimeMS` (the server aborts it rather than apply it late) and a client
//! deadline a little longer, both below the group's session timeout (see
//! `SinkConfig::write_time_limit`).

use std::collections::{BTreeMap, HashMap};

use bson::{rawdoc, Bson, Document, RawArrayBuf, RawBson, RawDocumentBuf};

use super::errors::{classify_code, classify_command_error, ErrorClass};
use super::fold::{DocAction, FoldedDoc};
use crate::debezium::id_fold_key;
use crate::event::{Namespace, UpdateDescription};

mod clear;

/// Largest command we build (the server takes 16 MiB + 16 KiB).
const MAX_COMMAND_BYTES: usize = 15 * 1024 * 1024;
/// The server's limit on statements per write command.
const MAX_STATEMENTS: usize = 100_000;
/// MongoDB's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;

/// A statement the target refused.
#[derive(Debug, Clone, PartialEq)]
pub struct DocFailure {
    /// Position of the document in the folded batch.
    pub doc: usize,
    pub code: i32,
    pub message: String,
    pub class: ErrorClass,
}

/// A failure of a whole command: the batch is retried.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("write to {ns} failed: {source}")]
    Command { ns: String, source: mongodb::error::Error, class: ErrorClass },
    #[error("write concern not satisfied on {ns}: {message} (code {code})")]
    WriteConcern { ns: String, code: i32, message: String },
    /// A delete by `_id` while clearing a partition's share was refused: no document can
    /// make that fail for good, so it is retried like a transient error.
    #[error("delete on {ns} refused: {message} (code {code})")]
    DeleteRefused { ns: String, code: i32, message: String },
    /// No answer within the write deadline: the server aborts the command at its
    /// `maxTimeMS`, so it is retried.
    #[error("no answer from the target for a write to {ns} within {after:?}")]
    TimedOut { ns: String, after: std::time::Duration },
    /// The worker was told to stop in the middle of clearing a partition's share.
    #[error("clearing {ns} stopped: the partition was revoked")]
    Stopped { ns: String },
}

impl CommandError {
    /// A command that failed as a whole, classified by its error.
    fn from_mongo(ns: &Namespace, source: mongodb::error::Error) -> Self {
        let class = classify_command_error(&source);
        CommandError::Command { ns: ns.to_string(), source, class }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            CommandError::Command { class, .. } => *class,
            CommandError::WriteConcern { .. }
            | CommandError::DeleteRefused { .. }
            | CommandError::TimedOut { .. }
            | CommandError::Stopped { .. } => ErrorClass::Transient,
        }
    }
}

#[derive(Debug, Default)]
pub struct WriteOutcome {
    /// Statements the target applied (upserts, deletes, patch statements).
    pub statements: usize,
    pub failures: Vec<DocFailure>,
    /// Single patches that could not apply to their document, which got the others:
    /// (document position, message position, why).
    pub refused_patches: Vec<(usize, usize, String)>,
}

#[derive(Clone)]
pub struct Writer {
    client: mongodb::Client,
    write_concern: Document,
    /// Each command's `maxTimeMS`.
    time_limit: std::time::Duration,
    /// How long an answer is waited for.
    deadline: std::time::Duration,
    /// Cleared when the target refuses `maxTimeMS` on writes (a server that does not
    /// know it): the client deadline alone bounds them from then on.
    max_time_ok: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Writer {
    pub fn new(client: mongodb::Client, w: &str, wtimeout_ms: u64, time_limit: std::time::Duration, deadline: std::time::Duration) -> Self {
        let w = match w.parse::<i32>() {
            Ok(n) => Bson::Int32(n),
            Err(_) => Bson::String(w.to_string()),
        };
        let wtimeout = (wtimeout_ms as i64).min(time_limit.as_millis() as i64);
        Writer {
            client,
            write_concern: bson::doc! {"w": w, "wtimeout": wtimeout},
            time_limit,
            deadline,
            max_time_ok: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// The target cluster (metadata is applied through it, see `sink::metadata`).
    pub fn client(&self) -> &mongodb::Client {
        &self.client
    }

    /// Writes `docs` (only those whose positions are in `include`, when given), each to the
    /// namespace `target(ns)`.
    pub async fn write(
        &self,
        docs: &[FoldedDoc],
        skip: &(dyn Fn(usize) -> bool + Sync),
        target: &(dyn Fn(&Namespace) -> Namespace + Sync),
    ) -> Result<WriteOutcome, CommandError> {
        let mut by_ns: BTreeMap<Namespace, Vec<usize>> = BTreeMap::new();
        for (i, d) in docs.iter().enumerate() {
            if !skip(i) {
                by_ns.entry(target(&d.ns)).or_default().push(i);
            }
        }
        let mut outcome = WriteOutcome::default();
        for (ns, positions) in by_ns {
            let mut inserts = Vec::new();
            let mut upserts = Vec::new();
            let mut deletes = Vec::new();
            let mut patched = Vec::new();
            let mut in_memory = Vec::new();
            for &i in &positions {
                let d = &docs[i];
                match &d.action {
                    DocAction::Insert(raw) => inserts.push((i, raw.clone())),
                    DocAction::Upsert(raw) => upserts.push((i, upsert_statement(id_raw(&d.id), raw))),
                    DocAction::Delete => deletes.push((i, rawdoc! {"q": {"_id": id_raw(&d.id)}, "limit": 1})),
                    DocAction::Patch(patches) | DocAction::UpsertThenPatch(_, patches) => {
                        match patch_statements(&id_raw(&d.id), patches) {
                            // Several statements: one write of the patched document (its
                            // messages are its patches, one each).
                            Ok(statements) if statements.len() > 1 && matches!(d.action, DocAction::Patch(_)) && d.messages.len() == patches.len() => {
                                in_memory.push(i);
                            }
                            Ok(statements) => {
                                // The upsert goes first (upserts run before the patch rounds).
                                if let DocAction::UpsertThenPatch(raw, _) = &d.action {
                                    upserts.push((i, upsert_statement(id_raw(&d.id), raw)));
                                }
                                patched.push((i, statements));
                            }
                            // Decoding refuses such patches; never send an empty update for one.
                            Err(message) => outcome.failures.push(DocFailure { doc: i, code: 0, message, class: ErrorClass::Poison }),
                        }
                    }
                }
            }
            let before = outcome.failures.len();
            self.run(&ns, "insert", "documents", inserts, &mut outcome).await?;
            // Already on the target: replaced instead. (A duplicate on another unique index
            // fails the upsert the same way, and is reported from there.)
            let failures = outcome.failures.split_off(before);
            for f in failures {
                match &docs[f.doc].action {
                    DocAction::Insert(raw) if f.code == DUPLICATE_KEY => {
                        upserts.push((f.doc, upsert_statement(id_raw(&docs[f.doc].id), raw)))
                    }
                    _ => outcome.failures.push(f),
                }
            }
            self.run(&ns, "update", "updates", upserts, &mut outcome).await?;
            self.run(&ns, "delete", "deletes", deletes, &mut outcome).await?;
            if !in_memory.is_empty() {
                let replacements = self.patch_in_memory(&ns, docs, &in_memory, &mut outcome).await?;
                self.run(&ns, "update", "updates", replacements, &mut outcome).await?;
            }
            // Round k: the k-th statement of every patched document not failed yet.
            let rounds = patched.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
            for k in 0..rounds {
                let failed: Vec<usize> = outcome.failures.iter().map(|f| f.doc).collect();
                let round: Vec<(usize, RawDocumentBuf)> = patched
                    .iter()
                    .filter(|(i, _)| !failed.contains(i))
                    .filter_map(|(i, s)| s.get(k).map(|st| (*i, st.clone())))
                    .collect();
                self.run(&ns, "update", "updates", round, &mut outcome).await?;
            }
        }
        Ok(outcome)
    }

    /// Reads the current versions of the documents at `positions` (each known only by
    /// several patches), applies their patches in memory, and returns the replacements to
    /// write; patches that cannot apply go to `outcome.refused_patches`.
    async fn patch_in_memory(
        &self,
        ns: &Namespace,
        docs: &[FoldedDoc],
        positions: &[usize],
        outcome: &mut WriteOutcome,
    ) -> Result<Vec<(usize, RawDocumentBuf)>, CommandError> {
        use futures::TryStreamExt;
        let failed = |source| CommandError::from_mongo(ns, source);
        let coll = self.client.database(&ns.db).collection::<Document>(&ns.coll);
        let mut current: HashMap<String, Document> = HashMap::new();
        for chunk in positions.chunks(1000) {
            let ids: Vec<Bson> = chunk.iter().map(|&i| docs[i].id.clone()).collect();
            let read = async {
                let mut cursor = coll.find(bson::doc! {"_id": {"$in": ids}}).max_time(self.time_limit).await?;
                let mut found = Vec::new();
                while let Some(doc) = cursor.try_next().await? {
                    found.push(doc);
                }
                Ok::<_, mongodb::error::Error>(found)
            };
            let found = tokio::time::timeout(self.deadline, read)
                .await
                .map_err(|_| CommandError::TimedOut { ns: ns.to_string(), after: self.deadline })?
                .map_err(failed)?;
            for doc in found {
                if let Some(id) = doc.get("_id") {
                    current.insert(id_fold_key(id), doc);
                }
            }
        }
        let mut replacements = Vec::new();
        for &i in positions {
            let d = &docs[i];
            let DocAction::Patch(patches) = &d.action else { continue };
            let applied = super::patching::apply(current.remove(&id_fold_key(&d.id)), patches);
            for (k, reason) in applied.refused {
                outcome.refused_patches.push((i, d.messages[k], format!("the patch cannot apply to the target's document: {reason}")));
            }
            if let Some(doc) = applied.doc {
                replacements.push((i, replace_statement(id_raw(&d.id), &doc, false)));
            }
        }
        Ok(replacements)
    }

    /// Sends `statements` as one or more `command` commands.
    async fn run(
        &self,
        ns: &Namespace,
        command: &str,
        field: &str,
        statements: Vec<(usize, RawDocumentBuf)>,
        outcome: &mut WriteOutcome,
    ) -> Result<(), CommandError> {
        let db = self.client.database(&ns.db);
        for chunk in split(statements) {
            // Statements move into the command; only their batch positions stay behind.
            let mut positions = Vec::with_capacity(chunk.len());
            let mut array = RawArrayBuf::new();
            for (position, statement) in chunk {
                positions.push(position);
                array.push(statement);
            }
            let mut cmd = RawDocumentBuf::new();
            cmd.append(command, ns.coll.as_str());
            cmd.append(field, array);
            cmd.append("ordered", false);
            // The source validated every document when it was written; a validator that
            // changed since (or `validationLevel: moderate`) must not refuse it here.
            if command != "delete" {
                cmd.append("bypassDocumentValidation", true);
            }
            cmd.append(
                "writeConcern",
                RawDocumentBuf::from_document(&self.write_concern).unwrap_or_default(),
            );
            let max_time = self.max_time_ok.load(std::sync::atomic::Ordering::Relaxed);
            if max_time {
                cmd.append("maxTimeMS", self.time_limit.as_millis() as i64);
            }
            let answer = tokio::time::timeout(self.deadline, db.run_raw_command(cmd))
                .await
                .map_err(|_| CommandError::TimedOut { ns: ns.to_string(), after: self.deadline })?;
            let reply = match answer {
                Ok(r) => r,
                Err(e) if max_time && refuses_max_time(&e) => {
                    self.max_time_ok.store(false, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(target_ns = %ns, "the target does not take maxTimeMS on writes ({e}); writes are bounded by the client deadline alone from now on");
                    let class = ErrorClass::Transient;
                    return Err(CommandError::Command { ns: ns.to_string(), source: e, class });
                }
                Err(e) => {
                    let class = classify_command_error(&e);
                    // A single statement too large for any command: that document is poison.
                    if class == ErrorClass::Poison && positions.len() == 1 {
                        outcome.failures.push(DocFailure { doc: positions[0], code: error_code(&e), message: e.to_string(), class });
                        continue;
                    }
                    return Err(CommandError::Command { ns: ns.to_string(), source: e, class });
                }
            };
            let mut failed_here = 0;
            if let Ok(errors) = reply.get_array("writeErrors") {
                for err in errors.iter().filter_map(Bson::as_document) {
                    let index = err.get_i32("index").unwrap_or(0) as usize;
                    let code = err.get_i32("code").unwrap_or(0);
                    let message = err.get_str("errmsg").unwrap_or_default().to_string();
                    if let Some(doc) = positions.get(index) {
                        outcome.failures.push(DocFailure { doc: *doc, code, message, class: classify_code(code) });
                        failed_here += 1;
                    }
                }
            }
            if let Ok(wce) = reply.get_document("writeConcernError") {
                return Err(CommandError::WriteConcern {
                    ns: ns.to_string(),
                    code: wce.get_i32("code").unwrap_or(0),
                    message: wce.get_str("errmsg").unwrap_or_default().to_string(),
                });
            }
            outcome.statements += positions.len() - failed_here;
        }
        Ok(())
    }
}

/// The server rejected the `maxTimeMS` field itself (a server that does not know it on
/// writes: unknown field, or a bad value).
fn refuses_max_time(e: &mongodb::error::Error) -> bool {
    matches!(error_code(e), 2 | 9 | 40415) && e.to_string().contains("maxTimeMS")
}

fn error_code(e: &mongodb::error::Error) -> i32 {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => c.code,
        _ => 0,
    }
}

/// Replaces the document by `_id`, inserting it when missing.
fn upsert_statement(id: RawBson, doc: &RawDocumentBuf) -> RawDocumentBuf {
    replace_statement(id, doc, true)
}

/// Replaces the document by `_id`. A replacement document cannot hold a top-level field
/// whose name starts with `$` (the server refuses it, code 52); such a document is
/// written by a pipeline that sets it literally instead.
fn replace_statement(id: RawBson, doc: &RawDocumentBuf, upsert: bool) -> RawDocumentBuf {
    let mut s = RawDocumentBuf::new();
    s.append("q", rawdoc! {"_id": id});
    if doc.iter().any(|e| e.is_ok_and(|(key, _)| key.starts_with('$'))) {
        let mut literal = RawDocumentBuf::new();
        literal.append_ref("$literal", doc.as_ref());
        let mut pipeline = RawArrayBuf::new();
        pipeline.push(rawdoc! {"$replaceRoot": {"newRoot": literal}});
        s.append("u", pipeline);
    } else {
        s.append_ref("u", doc.as_ref());
    }
    s.append("upsert", upsert);
    s
}

fn id_raw(id: &Bson) -> RawBson {
    RawBson::try_from(id.clone()).unwrap_or(RawBson::Null)
}

/// Splits statements into commands under the size and count limits.
fn split(statements: Vec<(usize, RawDocumentBuf)>) -> Vec<Vec<(usize, RawDocumentBuf)>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for s in statements {
        let len = s.1.as_bytes().len() + 16;
        if !current.is_empty() && (bytes + len > MAX_COMMAND_BYTES || current.len() >= MAX_STATEMENTS) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += len;
        current.push(s);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The server-side statements of a sequence of patches: per patch, the truncations
/// (`$push` with an empty `$each` and `$slice`) first, then `$set`/`$unset`. They are two
/// statements because `$set` of `a.2` and a truncation of `a` conflict in one update.
pub fn patch_statements(id: &RawBson, patches: &[UpdateDescription]) -> Result<Vec<RawDocumentBuf>, String> {
    let mut out = Vec::new();
    for p in patches {
        if !p.truncated_arrays.is_empty() {
            let mut push = Document::new();
            for t in &p.truncated_arrays {
                push.insert(t.field.clone(), bson::doc! {"$each": [], "$slice": t.size as i64});
            }
            out.push(statement(id, bson::doc! {"$push": push})?);
        }
        let mut update = Document::new();
        if !p.updated_fields.is_empty() {
            update.insert("$set", p.updated_fields.clone());
        }
        if !p.removed_fields.is_empty() {
            let unset: Document = p.removed_fields.iter().map(|f| (f.clone(), Bson::String(String::new()))).collect();
            update.insert("$unset", unset);
        }
        if !update.is_empty() {
            out.push(statement(id, update)?);
        }
    }
    Ok(out)
}

fn statement(id: &RawBson, update: Document) -> Result<RawDocumentBuf, String> {
    let u = RawDocumentBuf::from_document(&update).map_err(|e| format!("the patch cannot be written as BSON: {e}"))?;
    let mut s = RawDocumentBuf::new();
    s.append("q", rawdoc! {"_id": id.clone()});
    s.append("u", u);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TruncatedArray;

    #[test]
    fn split_respects_count_and_size() {
        let small: Vec<_> = (0..10).map(|i| (i, rawdoc! {"i": i as i32})).collect();
        assert_eq!(split(small).len(), 1);
        let big = RawDocumentBuf::from_document(&bson::doc! {"b": "x".repeat(6 * 1024 * 1024)}).unwrap();
        let three: Vec<_> = (0..3).map(|i| (i, big.clone())).collect();
        assert_eq!(split(three).iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1]);
    }

    #[test]
    fn truncation_goes_before_set() {
        let p = UpdateDescription {
            updated_fields: bson::doc! {"a.2": 1},
            removed_fields: vec!["x".into()],
            truncated_arrays: vec![TruncatedArray { field: "a".into(), size: 3 }],
        };
        let s = patch_statements(&RawBson::Int32(1), &[p]).unwrap();
        assert_eq!(s.len(), 2);
        let first = s[0].to_document().unwrap();
        assert!(first.get_document("u").unwrap().contains_key("$push"));
        let second = s[1].to_document().unwrap();
        let u = second.get_document("u").unwrap();
        assert!(u.contains_key("$set") && u.contains_key("$unset"));
    }
}
