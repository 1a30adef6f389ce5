//! Canonical Extended JSON v2 written straight from raw BSON (pure, no I/O).
//!
//! The source encodes every document it reads; going through `bson::Document` and a
//! `serde_json::Value` tree first cost three passes and many allocations per document.
//! This writer walks the raw bytes once and produces exactly the text
//! `Bson::into_canonical_extjson` would (a property test holds it to that).

use std::io::Write;

use base64::Engine;
use bson::raw::{RawArray, RawBsonRef, RawDocument};
use bson::Bson;

/// Why a document could not be written (malformed raw BSON).
#[derive(Debug, thiserror::Error)]
#[error("malformed BSON: {0}")]
pub struct ExtJsonError(String);

impl From<bson::raw::Error> for ExtJsonError {
    fn from(e: bson::raw::Error) -> Self {
        ExtJsonError(e.to_string())
    }
}

/// `doc` as canonical Extended JSON text.
pub fn canonical_document(doc: &RawDocument) -> Result<String, ExtJsonError> {
    let mut out = Vec::with_capacity(doc.as_bytes().len() * 2);
    write_document(doc, &mut out)?;
    // Only valid UTF-8 is written: keys and strings come from validated BSON strings.
    String::from_utf8(out).map_err(|e| ExtJsonError(e.to_string()))
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    // serde_json's escaping, so the text matches serde_json's own output.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_document(doc: &RawDocument, out: &mut Vec<u8>) -> Result<(), ExtJsonError> {
    out.push(b'{');
    let mut first = true;
    for element in doc.iter() {
        let (key, value) = element?;
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(key, out);
        out.push(b':');
        write_value(value, out)?;
    }
    out.push(b'}');
    Ok(())
}

fn write_array(array: &RawArray, out: &mut Vec<u8>) -> Result<(), ExtJsonError> {
    out.push(b'[');
    let mut first = true;
    for value in array.into_iter() {
        if !first {
            out.push(b',');
        }
        first = false;
        write_value(value?, out)?;
    }
    out.push(b']');
    Ok(())
}

fn wrapper(name: &str, value: &str, out: &mut Vec<u8>) {
    let _ = write!(out, "{{\"{name}\":");
    write_str(value, out);
    out.push(b'}');
}

fn write_value(value: RawBsonRef<'_>, out: &mut Vec<u8>) -> Result<(), ExtJsonError> {
    match value {
        RawBsonRef::Double(f) => write_double(f, out),
        RawBsonRef::String(s) => write_str(s, out),
        RawBsonRef::Document(d) => write_document(d, out)?,
        RawBsonRef::Array(a) => write_array(a, out)?,
        RawBsonRef::Boolean(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        RawBsonRef::Null => out.extend_from_slice(b"null"),
        RawBsonRef::Int32(i) => {
            let _ = write!(out, "{{\"$numberInt\":\"{i}\"}}");
        }
        RawBsonRef::Int64(i) => {
            let _ = write!(out, "{{\"$numberLong\":\"{i}\"}}");
        }
        RawBsonRef::DateTime(d) => {
            let _ = write!(out, "{{\"$date\":{{\"$numberLong\":\"{}\"}}}}", d.timestamp_millis());
        }
        RawBsonRef::ObjectId(oid) => {
            let _ = write!(out, "{{\"$oid\":\"{}\"}}", oid.to_hex());
        }
        RawBsonRef::Decimal128(d) => wrapper("$numberDecimal", &d.to_string(), out),
        RawBsonRef::Timestamp(t) => {
            let _ = write!(out, "{{\"$timestamp\":{{\"t\":{},\"i\":{}}}}}", t.time, t.increment);
        }
        RawBsonRef::Binary(b) => {
            let subtype: u8 = b.subtype.into();
            out.extend_from_slice(b"{\"$binary\":{\"base64\":\"");
            out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(b.bytes).as_bytes());
            let _ = write!(out, "\",\"subType\":\"{subtype:02x}\"}}}}");
        }
        RawBsonRef::RegularExpression(r) => {
            let mut options: Vec<char> = r.options.chars().collect();
            options.sort_unstable();
            let options: String = options.into_iter().collect();
            out.extend_from_slice(b"{\"$regularExpression\":{\"pattern\":");
            write_str(r.pattern, out);
            out.extend_from_slice(b",\"options\":");
            write_str(&options, out);
            out.extend_from_slice(b"}}");
        }
        RawBsonRef::JavaScriptCode(code) => wrapper("$code", code, out),
        RawBsonRef::JavaScriptCodeWithScope(c) => {
            out.extend_from_slice(b"{\"$code\":");
            write_str(c.code, out);
            out.extend_from_slice(b",\"$scope\":");
            write_document(c.scope, out)?;
            out.push(b'}');
        }
        RawBsonRef::Symbol(s) => wrapper("$symbol", s, out),
        RawBsonRef::Undefined => out.extend_from_slice(b"{\"$undefined\":true}"),
        RawBsonRef::MinKey => out.extend_from_slice(b"{\"$minKey\":1}"),
        RawBsonRef::MaxKey => out.extend_from_slice(b"{\"$maxKey\":1}"),
        // Deprecated and rare: the owned conversion is fine here.
        other @ RawBsonRef::DbPointer(_) => {
            let bson = Bson::try_from(other).map_err(|e| ExtJsonError(e.to_string()))?;
            let _ = serde_json::to_writer(&mut *out, &bson.into_canonical_extjson());
        }
    }
    Ok(())
}

/// Doubles exactly as `Bson::into_canonical_extjson` writes them.
fn write_double(f: f64, out: &mut Vec<u8>) {
    if f.is_normal() {
        let mut s = f.to_string();
        if f.fract() == 0.0 {
            s.push_str(".0");
        }
        wrapper("$numberDouble", &s, out);
    } else if f == 0.0 {
        wrapper("$numberDouble", if f.is_sign_negative() { "-0.0" } else { "0.0" }, out);
    } else if f.is_nan() {
        wrapper("$numberDouble", if f.is_sign_negative() { "-NaN" } else { "NaN" }, out);
    } else if f.is_infinite() {
        wrapper("$numberDouble", if f.is_sign_negative() { "-Infinity" } else { "Infinity" }, out);
    } else {
        // Subnormal: bson writes these as plain JSON numbers.
        let _ = serde_json::to_writer(&mut *out, &f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Document, RawDocumentBuf};
    use proptest::prelude::*;

    fn reference(doc: &Document) -> String {
        Bson::Document(doc.clone()).into_canonical_extjson().to_string()
    }

    #[test]
    fn matches_bson_for_every_type() {
        let d = doc! {
            "_id": bson::oid::ObjectId::from_bytes([7; 12]),
            "d": [1.5f64, 2.0f64, -0.0f64, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 5e-324f64, 1e300f64],
            "i": [1i32, -2i64, i64::MAX],
            "s": "quote \" backslash \\ newline \n unicode ключ 🔑 \u{1}",
            "b": bson::Binary { subtype: bson::spec::BinarySubtype::UserDefined(0x80), bytes: vec![0, 255, 3] },
            "re": bson::Regex { pattern: "a\"b".into(), options: "xmi".into() },
            "ts": bson::Timestamp { time: 1, increment: 2 },
            "dt": bson::DateTime::from_millis(-1),
            "dec": "1.5E+10".parse::<bson::Decimal128>().unwrap(),
            "code": Bson::JavaScriptCode("f()".into()),
            "cws": bson::JavaScriptCodeWithScope { code: "g()".into(), scope: doc! {"x": 1} },
            "sym": Bson::Symbol("s".into()),
            "u": Bson::Undefined, "n": Bson::Null, "min": Bson::MinKey, "max": Bson::MaxKey, "t": true,
            "nested": {"a": [{"b": []}, {}]},
        };
        let raw = RawDocumentBuf::from_document(&d).unwrap();
        assert_eq!(canonical_document(&raw).unwrap(), reference(&d));
    }

    fn leaf() -> impl Strategy<Value = Bson> {
        prop_oneof![
            any::<f64>().prop_map(Bson::Double),
            any::<i32>().prop_map(Bson::Int32),
            any::<i64>().prop_map(Bson::Int64),
            ".*".prop_map(Bson::String),
            any::<bool>().prop_map(Bson::Boolean),
            Just(Bson::Null),
            any::<i64>().prop_map(|m| Bson::DateTime(bson::DateTime::from_millis(m))),
            any::<[u8; 12]>().prop_map(|b| Bson::ObjectId(bson::oid::ObjectId::from_bytes(b))),
            (any::<u32>(), any::<u32>()).prop_map(|(t, i)| Bson::Timestamp(bson::Timestamp { time: t, increment: i })),
            proptest::collection::vec(any::<u8>(), 0..20)
                .prop_map(|bytes| Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes })),
            any::<[u8; 16]>().prop_map(|b| Bson::Decimal128(bson::Decimal128::from_bytes(b))),
        ]
    }

    fn tree() -> impl Strategy<Value = Bson> {
        leaf().prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Bson::Array),
                proptest::collection::vec(("[a-z\\p{Cyrillic}_]{1,6}", inner), 0..6)
                    .prop_map(|kv| Bson::Document(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn same_text_as_bson(fields in proptest::collection::vec(("[a-z]{1,5}", tree()), 0..8)) {
            let doc: Document = fields.into_iter().collect();
            let raw = RawDocumentBuf::from_document(&doc).unwrap();
            prop_assert_eq!(canonical_document(&raw).unwrap(), reference(&doc));
        }
    }
}
