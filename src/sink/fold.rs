//! Folding a batch of events into one action per document (pure; no I/O).
//!
//! A full document (`c`, `r`, `u` with `after`) or a delete replaces whatever came before
//! it for that document; a patch (`u` with only `updateDescription`) is applied in memory
//! on top of a full document folded earlier in the batch, and otherwise stays a patch to
//! apply on the server, after any earlier patches of the same document. A patch that
//! cannot be applied in memory stays a patch behind the full document, for the server to
//! apply or refuse (never dropped). Writing the folded batch gives the same final state as
//! applying every event one by one.

use std::collections::HashMap;

use bson::{Bson, Document, RawDocumentBuf};

use crate::debezium::id_fold_key;
use crate::event::{ChangeEvent, Namespace, Op, UpdateDescription};

/// What the writer does for one document.
#[derive(Debug, Clone, PartialEq)]
pub enum DocAction {
    /// A full document last set by an insert (`c`, or `r` from a copy), with its `_id`:
    /// most likely new on the target, so written with `insert` (cheaper for the target than
    /// an upsert, and its reply lists no upserted `_id`s), and replaced by `_id` instead
    /// when it is already there (a replay after a restart).
    Insert(RawDocumentBuf),
    /// Replace the whole document by `_id`, inserting it when missing.
    Upsert(RawDocumentBuf),
    /// Delete by `_id`.
    Delete,
    /// Apply these patches, in order, to the document if it exists.
    Patch(Vec<UpdateDescription>),
    /// Replace the whole document by `_id`, then apply these patches on the server: what
    /// a full document followed by patches folds to when the patches cannot be applied in
    /// memory (the server then applies them, or refuses them with a reason, which goes to
    /// the dead-letter topic; the patches are never dropped in silence).
    UpsertThenPatch(RawDocumentBuf, Vec<UpdateDescription>),
}

/// One document's folded outcome, with the batch positions of the messages behind it
/// (for the dead-letter topic when the target refuses it).
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedDoc {
    pub ns: Namespace,
    pub id: Bson,
    pub action: DocAction,
    pub messages: Vec<usize>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("cannot apply a patch to the document in memory: {0}")]
pub struct PatchError(pub String);

/// Folds `(message position, event)` pairs, in topic order, into one action per document,
/// in the order each document first appeared.
pub fn fold(events: impl IntoIterator<Item = (usize, ChangeEvent)>) -> Vec<FoldedDoc> {
    let mut index: HashMap<(Namespace, String), usize> = HashMap::new();
    let mut out: Vec<FoldedDoc> = Vec::new();
    for (pos, ev) in events {
        let key = (ev.ns.clone(), id_fold_key(&ev.id));
        let action = match (&ev.op, ev.after, ev.update) {
            (Op::Delete, _, _) => DocAction::Delete,
            (Op::Create | Op::Read, Some(after), _) if matches!(after.get("_id"), Ok(Some(_))) => DocAction::Insert(after),
            (_, Some(after), _) => DocAction::Upsert(after),
            (_, None, Some(patch)) => DocAction::Patch(vec![patch]),
            // Decoding rejects events with neither; nothing to apply.
            (_, None, None) => continue,
        };
        match index.get(&key) {
            None => {
                index.insert(key, out.len());
                out.push(FoldedDoc { ns: ev.ns, id: ev.id, action, messages: vec![pos] });
            }
            Some(&i) => {
                let doc = &mut out[i];
                doc.messages.push(pos);
                doc.action = combine(std::mem::replace(&mut doc.action, DocAction::Delete), action);
                // Keep the exact `_id` type of a full document when there is one.
                if let DocAction::Insert(raw) | DocAction::Upsert(raw) = &doc.action {
                    if let Ok(Some(id)) = raw.get("_id") {
                        if let Ok(id) = Bson::try_from(id) {
                            doc.id = id;
                        }
                    }
                }
            }
        }
    }
    out
}

/// The action equal to applying `earlier` and then `later`.
fn combine(earlier: DocAction, later: DocAction) -> DocAction {
    match (earlier, later) {
        (_, DocAction::Insert(d)) => DocAction::Insert(d),
        (_, DocAction::Upsert(d)) => DocAction::Upsert(d),
        (_, DocAction::Delete) => DocAction::Delete,
        // (A single event never folds to this; it replaces what came before, like an upsert.)
        (_, later @ DocAction::UpsertThenPatch(..)) => later,
        // An update of a missing document changes nothing.
        (DocAction::Delete, DocAction::Patch(_)) => DocAction::Delete,
        (DocAction::Insert(raw), DocAction::Patch(patches)) => match patch_raw(&raw, &patches) {
            Ok(patched) => DocAction::Insert(patched),
            Err(_) => DocAction::UpsertThenPatch(raw, patches),
        },
        (DocAction::Upsert(raw), DocAction::Patch(patches)) => match patch_raw(&raw, &patches) {
            Ok(patched) => DocAction::Upsert(patched),
            Err(_) => DocAction::UpsertThenPatch(raw, patches),
        },
        // Once a patch could not be applied in memory, later ones queue behind it.
        (DocAction::UpsertThenPatch(raw, mut a), DocAction::Patch(b)) => {
            a.extend(b);
            DocAction::UpsertThenPatch(raw, a)
        }
        (DocAction::Patch(mut a), DocAction::Patch(b)) => {
            a.extend(b);
            DocAction::Patch(a)
        }
    }
}

fn patch_raw(raw: &RawDocumentBuf, patches: &[UpdateDescription]) -> Result<RawDocumentBuf, PatchError> {
    let mut doc = raw.to_document().map_err(|e| PatchError(e.to_string()))?;
    for p in patches {
        apply_patch(&mut doc, p)?;
    }
    RawDocumentBuf::from_document(&doc).map_err(|e| PatchError(e.to_string()))
}

/// Applies a change stream patch the way MongoDB does: truncate arrays, then set the
/// updated paths (in lexicographic order, as MongoDB 5.0+ applies them), then remove
/// the removed paths. Array elements are addressed by numeric path components; setting
/// past an array's end pads it with nulls; removing an array element leaves a null.
pub fn apply_patch(doc: &mut Document, patch: &UpdateDescription) -> Result<(), PatchError> {
    for t in &patch.truncated_arrays {
        if let Some(Bson::Array(a)) = lookup_mut(doc, &t.field) {
            a.truncate(t.size as usize);
        }
    }
    let mut updated: Vec<(&String, &Bson)> = patch.updated_fields.iter().collect();
    updated.sort_by(|a, b| a.0.cmp(b.0));
    for (path, value) in updated {
        set_path(doc, path, value.clone())?;
    }
    for path in &patch.removed_fields {
        unset_path(doc, path);
    }
    Ok(())
}

fn lookup_mut<'a>(doc: &'a mut Document, path: &str) -> Option<&'a mut Bson> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut cur = doc.get_mut(first)?;
    for part in parts {
        cur = match cur {
            Bson::Document(d) => d.get_mut(part)?,
            Bson::Array(a) => a.get_mut(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn set_path(doc: &mut Document, path: &str, value: Bson) -> Result<(), PatchError> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut cur: &mut Bson = {
        let first = parts[0];
        if parts.len() == 1 {
            doc.insert(first, value);
            return Ok(());
        }
        if !doc.contains_key(first) {
            doc.insert(first, Document::new());
        }
        doc.get_mut(first).ok_or_else(|| PatchError(format!("cannot reach {path}")))?
    };
    for (i, part) in parts.iter().enumerate().skip(1) {
        let last = i + 1 == parts.len();
        cur = match cur {
            Bson::Document(d) => {
                if last {
                    d.insert(*part, value);
                    return Ok(());
                }
                if !d.contains_key(*part) {
                    d.insert(*part, Document::new());
                }
                d.get_mut(*part).ok_or_else(|| PatchError(format!("cannot reach {path}")))?
            }
            Bson::Array(a) => {
                let idx: usize = part
                    .parse()
                    .map_err(|_| PatchError(format!("{path}: {part:?} is not an array index")))?;
                while a.len() <= idx {
                    a.push(Bson::Null);
                }
                if last {
                    a[idx] = value;
                    return Ok(());
                }
                if a[idx] == Bson::Null {
                    a[idx] = Bson::Document(Document::new());
                }
                &mut a[idx]
            }
            _ => return Err(PatchError(format!("{path}: cannot create a field inside a non-container"))),
        };
    }
    Ok(())
}

fn unset_path(doc: &mut Document, path: &str) {
    match path.rsplit_once('.') {
        None => {
            doc.remove(path);
        }
        Some((parent, last)) => match lookup_mut(doc, parent) {
            Some(Bson::Document(d)) => {
                d.remove(last);
            }
            Some(Bson::Array(a)) => {
                if let Some(slot) = last.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                    *slot = Bson::Null;
                }
            }
            _ => {}
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{SnapshotMarker, SourceInfo, TruncatedArray};
    use bson::doc;
    use proptest::prelude::*;

    fn source() -> SourceInfo {
        SourceInfo { name: String::new(), rs: String::new(), ts_ms: 0, ord: 0, snapshot: SnapshotMarker::No, lsid: None, txn_number: None }
    }

    fn ev(id: i32, op: Op, after: Option<Document>, update: Option<UpdateDescription>) -> ChangeEvent {
        ChangeEvent {
            op,
            ns: Namespace::new("db", "c"),
            id: Bson::Int32(id),
            after: after.map(|d| RawDocumentBuf::from_document(&d).unwrap()),
            update,
            source: source(),
        }
    }

    #[test]
    fn last_full_document_wins_and_patches_apply_on_top() {
        let events = vec![
            ev(1, Op::Create, Some(doc! {"_id": 1, "a": 1}), None),
            ev(1, Op::Update, None, Some(UpdateDescription { updated_fields: doc! {"b": 2}, ..Default::default() })),
            ev(2, Op::Delete, None, None),
        ];
        let folded = fold(events.into_iter().enumerate());
        assert_eq!(folded.len(), 2);
        assert_eq!(folded[0].action, DocAction::Insert(RawDocumentBuf::from_document(&doc! {"_id": 1, "a": 1, "b": 2}).unwrap()));
        assert_eq!(folded[0].messages, vec![0, 1]);
        assert_eq!(folded[1].action, DocAction::Delete);
    }

    #[test]
    fn patch_truncates_then_sets_then_unsets() {
        let mut d = doc! {"_id": 1, "a": [1, 2, 3, 4], "x": {"y": 1, "z": 2}, "k": 0};
        apply_patch(
            &mut d,
            &UpdateDescription {
                updated_fields: doc! {"a.2": 9, "x.w": "new", "a.5": true},
                removed_fields: vec!["x.y".into(), "k".into()],
                truncated_arrays: vec![TruncatedArray { field: "a".into(), size: 3 }],
            },
        )
        .unwrap();
        assert_eq!(d, doc! {"_id": 1, "a": [1, 2, 9, Bson::Null, Bson::Null, true], "x": {"z": 2, "w": "new"}});
    }

    // ---- property test: folding never changes the outcome ----

    #[derive(Debug, Clone)]
    enum Step {
        Full(i32, i32),
        Delete(i32),
        Set(i32, &'static str, i32),
        Unset(i32, &'static str),
        Truncate(i32, u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        let id = 0..4i32;
        let field = prop_oneof![Just("a"), Just("b"), Just("n.x"), Just("arr.1")];
        prop_oneof![
            (id.clone(), 0..100i32).prop_map(|(i, v)| Step::Full(i, v)),
            id.clone().prop_map(Step::Delete),
            (id.clone(), field.clone(), 0..100i32).prop_map(|(i, f, v)| Step::Set(i, f, v)),
            (id.clone(), field).prop_map(|(i, f)| Step::Unset(i, f)),
            (id, 0..3u32).prop_map(|(i, n)| Step::Truncate(i, n)),
        ]
    }

    fn to_event(s: &Step) -> ChangeEvent {
        match s {
            Step::Full(i, v) => ev(*i, Op::Update, Some(doc! {"_id": *i, "v": *v, "arr": [1, 2, 3], "n": {"x": 0}}), None),
            Step::Delete(i) => ev(*i, Op::Delete, None, None),
            Step::Set(i, f, v) => ev(*i, Op::Update, None, Some(UpdateDescription { updated_fields: doc! {*f: *v}, ..Default::default() })),
            Step::Unset(i, f) => ev(*i, Op::Update, None, Some(UpdateDescription { removed_fields: vec![f.to_string()], ..Default::default() })),
            Step::Truncate(i, n) => ev(*i, Op::Update, None, Some(UpdateDescription {
                truncated_arrays: vec![TruncatedArray { field: "arr".into(), size: *n }],
                ..Default::default()
            })),
        }
    }

    /// The target as a map, changed the way MongoDB changes it.
    fn apply_one(state: &mut HashMap<String, Document>, e: &ChangeEvent) {
        let key = id_fold_key(&e.id);
        match (&e.op, &e.after, &e.update) {
            (Op::Delete, _, _) => {
                state.remove(&key);
            }
            (_, Some(a), _) => {
                state.insert(key, a.to_document().unwrap());
            }
            (_, None, Some(p)) => {
                if let Some(d) = state.get_mut(&key) {
                    apply_patch(d, p).unwrap();
                }
            }
            _ => {}
        }
    }

    fn apply_folded(state: &mut HashMap<String, Document>, f: &FoldedDoc) {
        let key = id_fold_key(&f.id);
        match &f.action {
            DocAction::Insert(raw) | DocAction::Upsert(raw) => {
                state.insert(key, raw.to_document().unwrap());
            }
            DocAction::Delete => {
                state.remove(&key);
            }
            DocAction::Patch(ps) => {
                if let Some(d) = state.get_mut(&key) {
                    for p in ps {
                        apply_patch(d, p).unwrap();
                    }
                }
            }
            DocAction::UpsertThenPatch(raw, ps) => {
                let mut d = raw.to_document().unwrap();
                for p in ps {
                    apply_patch(&mut d, p).unwrap();
                }
                state.insert(key, d);
            }
        }
    }

    #[test]
    fn a_patch_that_cannot_be_applied_in_memory_is_kept_for_the_server() {
        let full = ev(1, Op::Create, Some(doc! {"_id": 1, "a": "text"}), None);
        // `a.b` inside a string: MongoDB refuses this too (PathNotViable); it must reach the
        // server (and, refused, the dead-letter topic), not vanish.
        let patch = ev(1, Op::Update, None, Some(UpdateDescription { updated_fields: doc! {"a.b": 1}, ..Default::default() }));
        let later = ev(1, Op::Update, None, Some(UpdateDescription { updated_fields: doc! {"n": 2}, ..Default::default() }));
        let folded = fold(vec![(0, full), (1, patch), (2, later)]);
        assert_eq!(folded.len(), 1);
        match &folded[0].action {
            DocAction::UpsertThenPatch(raw, patches) => {
                assert_eq!(raw.to_document().unwrap(), doc! {"_id": 1, "a": "text"});
                assert_eq!(patches.len(), 2);
            }
            other => panic!("the patches were not kept: {other:?}"),
        }
        assert_eq!(folded[0].messages, vec![0, 1, 2]);
    }

    proptest! {
        #[test]
        fn folded_batch_equals_one_by_one(initial in proptest::collection::vec(step(), 0..6), batch in proptest::collection::vec(step(), 0..30)) {
            let mut one_by_one = HashMap::new();
            for s in &initial { apply_one(&mut one_by_one, &to_event(s)); }
            let mut folded_state = one_by_one.clone();
            let events: Vec<ChangeEvent> = batch.iter().map(to_event).collect();
            for e in &events { apply_one(&mut one_by_one, e); }
            let folded = fold(events.into_iter().enumerate());
            let mut seen = std::collections::HashSet::new();
            for f in &folded {
                prop_assert!(seen.insert(id_fold_key(&f.id)), "a document appears twice in a folded batch");
                apply_folded(&mut folded_state, f);
            }
            // Compare as BSON bytes: field order counts.
            let bytes = |m: &HashMap<String, Document>| {
                let mut v: Vec<(String, Vec<u8>)> = m.iter().map(|(k, d)| (k.clone(), bson::to_vec(d).unwrap())).collect();
                v.sort();
                v
            };
            prop_assert_eq!(bytes(&folded_state), bytes(&one_by_one));
        }
    }
}
