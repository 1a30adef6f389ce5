//! A document's patches applied as one write (pure; the writer does the I/O). A document
//! known only by patches whose statements are more than one (several patches, or a
//! truncation with a `$set`) used to be written in rounds: a refused statement skipped
//! the valid ones after it, and a crash between rounds left a half-patched document. Now
//! the writer reads the target's current document, [`apply`] applies each patch to it in
//! memory, whole or not at all and in order (as the server would, one update after the
//! other), and one replacement writes the outcome.

use bson::{Document, RawDocumentBuf};

use super::fold::apply_patch;
use crate::event::UpdateDescription;

/// What applying a document's patches gave.
#[derive(Debug, PartialEq)]
pub struct Applied {
    /// The document to write, or `None` when there is nothing to write (the document is
    /// not on the target: an update of a missing document changes nothing).
    pub doc: Option<RawDocumentBuf>,
    /// The patches that could not apply (their index, and why): each left the document
    /// as it was, like a refused update.
    pub refused: Vec<(usize, String)>,
}

/// Applies `patches`, in order, to `current`.
pub fn apply(current: Option<Document>, patches: &[UpdateDescription]) -> Applied {
    let Some(mut doc) = current else { return Applied { doc: None, refused: Vec::new() } };
    let mut refused = Vec::new();
    for (i, patch) in patches.iter().enumerate() {
        let mut next = doc.clone();
        match apply_patch(&mut next, patch) {
            Ok(()) => doc = next,
            Err(e) => refused.push((i, e.0)),
        }
    }
    match RawDocumentBuf::from_document(&doc) {
        Ok(raw) => Applied { doc: Some(raw), refused },
        // (Only a NUL in a field name fails here, and decoding refuses those.)
        Err(e) => Applied { doc: None, refused: (0..patches.len()).map(|i| (i, format!("the patched document is not valid BSON: {e}"))).collect() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TruncatedArray;
    use bson::doc;

    fn set(fields: Document) -> UpdateDescription {
        UpdateDescription { updated_fields: fields, ..Default::default() }
    }

    #[test]
    fn a_refused_patch_leaves_the_others() {
        let patches = [set(doc! {"n": 1}), set(doc! {"a.b": 1, "n": 2}), set(doc! {"n": 3})];
        let applied = apply(Some(doc! {"_id": 1, "a": "text", "n": 0}), &patches);
        assert_eq!(applied.doc.unwrap().to_document().unwrap(), doc! {"_id": 1, "a": "text", "n": 3});
        assert_eq!(applied.refused.len(), 1);
        assert_eq!(applied.refused[0].0, 1);
    }

    #[test]
    fn truncation_and_set_apply_together() {
        let patch = UpdateDescription {
            updated_fields: doc! {"a.3": "x"},
            removed_fields: vec!["gone".into()],
            truncated_arrays: vec![TruncatedArray { field: "a".into(), size: 2 }],
        };
        let applied = apply(Some(doc! {"_id": 1, "a": [1, 2, 3, 4, 5], "gone": 1}), &[patch]);
        assert_eq!(applied.doc.unwrap().to_document().unwrap(), doc! {"_id": 1, "a": [1, 2, bson::Bson::Null, "x"]});
    }

    #[test]
    fn a_missing_document_stays_missing() {
        assert_eq!(apply(None, &[set(doc! {"n": 1})]), Applied { doc: None, refused: vec![] });
    }
}
