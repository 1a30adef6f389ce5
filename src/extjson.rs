//! Canonical Extended JSON v2 written straight from raw BSON (pure, no I/O).
//!
//! The source encodes every document it reads; going through `bson::Document` and a
//! `serde_json::Value` tree first cost three passes and many allocations per document.
//! This writer walks the raw bytes once and produces exactly the text
//! `Bson::into_canonical_extjson` would (a property test holds it to that).

use std::io::Write;

use base64::Engine;
use bson::raw::{RawArray, RawBsonRef, RawDocument};
use bson::{Bson, RawArrayBuf, RawBson, RawDocumentBuf};

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

// ---------------------------------------------------------------------------------------
// Reading: Extended JSON → raw BSON
// ---------------------------------------------------------------------------------------

/// An Extended JSON object (canonical, relaxed or legacy) as a raw BSON document, field
/// order kept. The common shapes are converted directly; anything unusual goes through
/// bson's own Extended JSON parser (after rewriting legacy forms), so both paths agree.
pub fn document_from_value(obj: &serde_json::Map<String, serde_json::Value>) -> Result<RawDocumentBuf, ExtJsonError> {
    let mut out = RawDocumentBuf::new();
    for (k, v) in obj {
        out.append(k, value_to_raw(v)?);
    }
    Ok(out)
}

fn value_to_raw(v: &serde_json::Value) -> Result<RawBson, ExtJsonError> {
    use serde_json::Value;
    Ok(match v {
        Value::Null => RawBson::Null,
        Value::Bool(b) => RawBson::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => RawBson::Int32(i as i32),
            Some(i) => RawBson::Int64(i),
            None => RawBson::Double(n.as_f64().ok_or_else(|| ExtJsonError(format!("number {n} out of range")))?),
        },
        Value::String(s) => RawBson::String(s.clone()),
        Value::Array(items) => {
            let mut array = RawArrayBuf::new();
            for item in items {
                array.push(value_to_raw(item)?);
            }
            RawBson::Array(array)
        }
        Value::Object(o) if !o.keys().any(|k| k.starts_with('$')) => RawBson::Document(document_from_value(o)?),
        Value::Object(o) => match fast_wrapper(o) {
            Some(raw) => raw,
            None => {
                let mut value = v.clone();
                crate::debezium::normalize_legacy_extjson(&mut value);
                let bson = Bson::try_from(value).map_err(|e| ExtJsonError(e.to_string()))?;
                RawBson::try_from(bson).map_err(|e| ExtJsonError(e.to_string()))?
            }
        },
    })
}

/// The type wrappers that make up nearly all real documents.
fn fast_wrapper(o: &serde_json::Map<String, serde_json::Value>) -> Option<RawBson> {
    use serde_json::Value;
    if o.len() != 1 {
        return None;
    }
    let (key, value) = o.iter().next()?;
    match (key.as_str(), value) {
        ("$oid", Value::String(s)) => bson::oid::ObjectId::parse_str(s).ok().map(RawBson::ObjectId),
        ("$numberInt", Value::String(s)) => s.parse::<i32>().ok().map(RawBson::Int32),
        ("$numberLong", Value::String(s)) => s.parse::<i64>().ok().map(RawBson::Int64),
        ("$numberDouble", Value::String(s)) => s.parse::<f64>().ok().filter(|f| f.is_finite()).map(RawBson::Double),
        ("$date", Value::Object(d)) if d.len() == 1 => match d.get("$numberLong") {
            Some(Value::String(ms)) => ms.parse::<i64>().ok().map(|ms| RawBson::DateTime(bson::DateTime::from_millis(ms))),
            _ => None,
        },
        ("$date", Value::Number(ms)) => ms.as_i64().map(|ms| RawBson::DateTime(bson::DateTime::from_millis(ms))),
        _ => None,
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
            // Decimals as MongoDB makes them (from text), so their bytes are canonical.
            (any::<i64>(), -30i32..30).prop_map(|(m, e)| Bson::Decimal128(format!("{m}E{e}").parse().unwrap())),
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

    fn parse(text: &str) -> RawDocumentBuf {
        match serde_json::from_str::<serde_json::Value>(text).unwrap() {
            serde_json::Value::Object(o) => document_from_value(&o).unwrap(),
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn subnormal_doubles_survive() {
        let d = doc! {"a": 1.084429303587137e-308f64, "b": 5e-324f64};
        let raw = RawDocumentBuf::from_document(&d).unwrap();
        assert_eq!(parse(&canonical_document(&raw).unwrap()).as_bytes(), raw.as_bytes());
    }

    #[test]
    fn reads_relaxed_and_legacy_like_bson() {
        let text = r#"{"_id": 5, "big": 9007199254740993, "f": 1.5, "d": {"$date": "2024-01-02T03:04:05.006Z"}, "legacy": {"$date": -1}, "bin": {"$binary": "AAE=", "$type": "80"}, "re": {"$regex": "a", "$options": "i"}, "nan": {"$numberDouble": "NaN"}, "x": {"$oid": "65976a473f3a210c022ffc55"}}"#;
        let mut value: serde_json::Value = serde_json::from_str(text).unwrap();
        crate::debezium::normalize_legacy_extjson(&mut value);
        let Bson::Document(expected) = Bson::try_from(value).unwrap() else { panic!() };
        // Bytes, not documents: NaN is not equal to itself.
        assert_eq!(parse(text).as_bytes(), RawDocumentBuf::from_document(&expected).unwrap().as_bytes());
    }

    proptest! {
        #[test]
        fn reads_back_what_it_writes(fields in proptest::collection::vec(("[a-z]{1,5}", tree()), 0..8)) {
            let doc: Document = fields.into_iter().collect();
            let raw = RawDocumentBuf::from_document(&doc).unwrap();
            let back = parse(&canonical_document(&raw).unwrap());
            prop_assert_eq!(back.as_bytes(), raw.as_bytes());
        }

        #[test]
        fn same_text_as_bson(fields in proptest::collection::vec(("[a-z]{1,5}", tree()), 0..8)) {
            let doc: Document = fields.into_iter().collect();
            let raw = RawDocumentBuf::from_document(&doc).unwrap();
            prop_assert_eq!(canonical_document(&raw).unwrap(), reference(&doc));
        }
    }
}
