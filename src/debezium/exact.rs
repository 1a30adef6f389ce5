//! The exact form of documents Extended JSON cannot carry unambiguously. Since MongoDB 5.0
//! field names may start with `$`, so `{"d": {"$date": 5}}` is a document whose Extended
//! JSON text reads back as a date (or not at all: `{"$oid": "not-hex"}`). Such an event
//! keeps its ordinary `after` / `updatedFields` text, for other Debezium readers, and adds
//! `docrepl.after_bson` / `docrepl.updated_fields_bson`: the BSON bytes, base64, which
//! docrepl's sink reads instead. Pure, no I/O.

use base64::Engine;
use bson::{RawBsonRef, RawDocument, RawDocumentBuf};

/// True when a field name anywhere in `doc` (in nested documents and arrays too) starts
/// with `$`: then its Extended JSON text is ambiguous.
pub fn has_dollar_field(doc: &RawDocument) -> bool {
    doc.iter().any(|entry| match entry {
        Ok((key, value)) => key.starts_with('$') || value_has_dollar_field(value),
        // Invalid BSON: encoding reports it.
        Err(_) => false,
    })
}

fn value_has_dollar_field(value: RawBsonRef<'_>) -> bool {
    match value {
        RawBsonRef::Document(d) => has_dollar_field(d),
        RawBsonRef::Array(a) => a.into_iter().any(|v| v.is_ok_and(value_has_dollar_field)),
        RawBsonRef::JavaScriptCodeWithScope(c) => has_dollar_field(c.scope),
        _ => false,
    }
}

/// The base64 text of a document's bytes.
pub fn encode(doc: &RawDocument) -> String {
    base64::engine::general_purpose::STANDARD.encode(doc.as_bytes())
}

/// The document from its base64 text, checked to be valid BSON all the way down.
pub fn decode(text: &str) -> Result<RawDocumentBuf, String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text.as_bytes()).map_err(|e| format!("not base64: {e}"))?;
    let doc = RawDocumentBuf::from_bytes(bytes).map_err(|e| format!("not a BSON document: {e}"))?;
    doc.to_document().map_err(|e| format!("not valid BSON: {e}"))?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, rawdoc};

    #[test]
    fn finds_dollar_fields_at_any_depth() {
        assert!(!has_dollar_field(&rawdoc! {"a": {"b": [1, {"c": "$x"}]}, "d.e": 1}));
        assert!(has_dollar_field(&rawdoc! {"$a": 1}));
        assert!(has_dollar_field(&rawdoc! {"a": {"$date": 5}}));
        assert!(has_dollar_field(&rawdoc! {"a": [1, [{"$oid": "x"}]]}));
    }

    #[test]
    fn round_trips_and_refuses_garbage() {
        let d = RawDocumentBuf::from_document(&doc! {"_id": 1, "q": {"$regex": "^a"}}).unwrap();
        assert_eq!(decode(&encode(&d)).unwrap(), d);
        assert!(decode("!!").is_err());
        assert!(decode(&base64::engine::general_purpose::STANDARD.encode([5u8, 0, 0, 0, 1])).is_err());
    }
}
