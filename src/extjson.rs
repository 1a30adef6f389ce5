//! Extended JSON written straight from raw BSON and read straight back into it (pure, no I/O).
//!
//! The source encodes every document it reads; going through `bson::Document` and a
//! `serde_json::Value` tree first cost three passes and many allocations per document.
//! The writer walks the raw bytes once and produces exactly the text
//! `Bson::into_canonical_extjson` would; the reader (`parse_document`) is its mirror for
//! the sink, and reads relaxed and legacy Extended JSON the way bson does (property tests
//! hold both to bson's own conversions).

use std::io::Write;

use base64::Engine;
use bson::raw::{RawArray, RawBsonRef, RawDocument};
use bson::{Bson, RawArrayBuf, RawBson, RawDocumentBuf};

/// Why a document could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ExtJsonError {
    #[error("malformed BSON: {0}")]
    MalformedBson(String),
    #[error("{0}")]
    InvalidText(String),
}

impl From<bson::raw::Error> for ExtJsonError {
    fn from(e: bson::raw::Error) -> Self {
        ExtJsonError::MalformedBson(e.to_string())
    }
}

/// `doc` as canonical Extended JSON text.
pub fn canonical_document(doc: &RawDocument) -> Result<String, ExtJsonError> {
    let mut out = Vec::with_capacity(doc.as_bytes().len() * 2);
    write_document(doc, &mut out)?;
    // Only valid UTF-8 is written: keys and strings come from validated BSON strings.
    String::from_utf8(out).map_err(|e| ExtJsonError::MalformedBson(e.to_string()))
}

/// Appends `doc` as canonical Extended JSON *inside a JSON string* (the envelope's `after`
/// field): exactly what serde_json writes for the string `canonical_document(doc)`, without
/// the surrounding quotes, in one pass and without building that text first.
pub fn write_canonical_document_in_string(doc: &RawDocument, out: &mut Vec<u8>) -> Result<(), ExtJsonError> {
    write_document(doc, &mut InString(out))
}

/// A writer that escapes what it is given as the contents of a JSON string. Canonical
/// Extended JSON as written here has no control characters left (serde_json escaped them
/// inside its strings), so only `"` and `\` need a backslash, as serde_json would add.
struct InString<'a>(&'a mut Vec<u8>);

impl Write for InString<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let out = &mut *self.0;
        if buf.len() <= 32 {
            // Structure and short strings: a plain loop beats searching.
            out.reserve(buf.len() * 2);
            for &b in buf {
                if b == b'"' || b == b'\\' {
                    out.push(b'\\');
                }
                out.push(b);
            }
        } else {
            let mut rest = buf;
            while let Some(i) = memchr::memchr2(b'"', b'\\', rest) {
                out.extend_from_slice(&rest[..i]);
                out.push(b'\\');
                out.push(rest[i]);
                rest = &rest[i + 1..];
            }
            out.extend_from_slice(rest);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Writes into a `Vec` or an `InString` cannot fail, so their `io::Result`s are ignored.

fn write_str(s: &str, out: &mut impl Write) {
    // serde_json's escaping, so the text matches serde_json's own output.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_document(doc: &RawDocument, out: &mut impl Write) -> Result<(), ExtJsonError> {
    let _ = out.write_all(b"{");
    let mut first = true;
    for element in doc.iter() {
        let (key, value) = element?;
        if !first {
            let _ = out.write_all(b",");
        }
        first = false;
        write_str(key, out);
        let _ = out.write_all(b":");
        write_value(value, out)?;
    }
    let _ = out.write_all(b"}");
    Ok(())
}

fn write_array(array: &RawArray, out: &mut impl Write) -> Result<(), ExtJsonError> {
    let _ = out.write_all(b"[");
    let mut first = true;
    for value in array.into_iter() {
        if !first {
            let _ = out.write_all(b",");
        }
        first = false;
        write_value(value?, out)?;
    }
    let _ = out.write_all(b"]");
    Ok(())
}

fn wrapper(name: &str, value: &str, out: &mut impl Write) {
    let _ = write!(out, "{{\"{name}\":");
    write_str(value, out);
    let _ = out.write_all(b"}");
}

fn write_value(value: RawBsonRef<'_>, out: &mut impl Write) -> Result<(), ExtJsonError> {
    match value {
        RawBsonRef::Double(f) => write_double(f, out),
        RawBsonRef::String(s) => write_str(s, out),
        RawBsonRef::Document(d) => write_document(d, out)?,
        RawBsonRef::Array(a) => write_array(a, out)?,
        RawBsonRef::Boolean(b) => {
            let _ = out.write_all(if b { b"true" } else { b"false" });
        }
        RawBsonRef::Null => {
            let _ = out.write_all(b"null");
        }
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
            let base64 = base64::engine::general_purpose::STANDARD.encode(b.bytes);
            let _ = write!(out, "{{\"$binary\":{{\"base64\":\"{base64}\",\"subType\":\"{subtype:02x}\"}}}}");
        }
        RawBsonRef::RegularExpression(r) => {
            let mut options: Vec<char> = r.options.chars().collect();
            options.sort_unstable();
            let options: String = options.into_iter().collect();
            let _ = out.write_all(b"{\"$regularExpression\":{\"pattern\":");
            write_str(r.pattern, out);
            let _ = out.write_all(b",\"options\":");
            write_str(&options, out);
            let _ = out.write_all(b"}}");
        }
        RawBsonRef::JavaScriptCode(code) => wrapper("$code", code, out),
        RawBsonRef::JavaScriptCodeWithScope(c) => {
            let _ = out.write_all(b"{\"$code\":");
            write_str(c.code, out);
            let _ = out.write_all(b",\"$scope\":");
            write_document(c.scope, out)?;
            let _ = out.write_all(b"}");
        }
        RawBsonRef::Symbol(s) => wrapper("$symbol", s, out),
        RawBsonRef::Undefined => {
            let _ = out.write_all(b"{\"$undefined\":true}");
        }
        RawBsonRef::MinKey => {
            let _ = out.write_all(b"{\"$minKey\":1}");
        }
        RawBsonRef::MaxKey => {
            let _ = out.write_all(b"{\"$maxKey\":1}");
        }
        // Deprecated and rare: the owned conversion is fine here.
        other @ RawBsonRef::DbPointer(_) => {
            let bson = Bson::try_from(other).map_err(|e| ExtJsonError::MalformedBson(e.to_string()))?;
            let _ = serde_json::to_writer(&mut *out, &bson.into_canonical_extjson());
        }
    }
    Ok(())
}

/// Doubles exactly as `Bson::into_canonical_extjson` writes them.
fn write_double(f: f64, out: &mut impl Write) {
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

/// Extended JSON text (canonical, relaxed or legacy) as a raw BSON document, field order
/// kept, in one pass: the JSON is read straight into BSON bytes, with no `serde_json::Value`
/// tree in between (that tree, an ordered map per object, was most of a sink's decoding
/// cost). Only type wrappers (`{"$…": …}`) go through a small `Value` each: the common
/// ones are converted directly, anything unusual by bson's own Extended JSON parser (after
/// rewriting legacy forms), so both paths agree.
pub fn parse_document(text: &str) -> Result<RawDocumentBuf, ExtJsonError> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_str(text);
    // BSON takes somewhat less room than its canonical text: one allocation, no regrowth.
    let doc = DocumentSeed { capacity: text.len() * 3 / 4 }.deserialize(&mut de).map_err(|e| ExtJsonError::InvalidText(e.to_string()))?;
    de.end().map_err(|e| ExtJsonError::InvalidText(e.to_string()))?;
    Ok(doc)
}

/// Reads a JSON object that must be a document (not a type wrapper).
struct DocumentSeed {
    capacity: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for DocumentSeed {
    type Value = RawDocumentBuf;
    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<RawDocumentBuf, D::Error> {
        match de.deserialize_map(ValueVisitor { capacity: self.capacity })? {
            RawBson::Document(doc) => Ok(doc),
            _ => Err(serde::de::Error::custom("a type wrapper where a document was expected")),
        }
    }
}

/// Reads any JSON value as the BSON value its Extended JSON means.
struct ValueSeed;

impl<'de> serde::de::DeserializeSeed<'de> for ValueSeed {
    type Value = RawBson;
    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<RawBson, D::Error> {
        de.deserialize_any(ValueVisitor { capacity: 0 })
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v)))
            }
        }
        de.deserialize_str(KeyVisitor)
    }
}

struct ValueVisitor {
    /// Bytes to reserve when the value is a document.
    capacity: usize,
}

impl<'de> serde::de::Visitor<'de> for ValueVisitor {
    type Value = RawBson;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an Extended JSON value")
    }
    fn visit_unit<E>(self) -> Result<RawBson, E> {
        Ok(RawBson::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<RawBson, E> {
        Ok(RawBson::Boolean(b))
    }
    // Plain JSON numbers as bson reads relaxed Extended JSON: int32 when it fits, else
    // int64, else double.
    fn visit_i64<E>(self, i: i64) -> Result<RawBson, E> {
        Ok(match i32::try_from(i) {
            Ok(small) => RawBson::Int32(small),
            Err(_) => RawBson::Int64(i),
        })
    }
    fn visit_u64<E>(self, u: u64) -> Result<RawBson, E> {
        Ok(match (i32::try_from(u), i64::try_from(u)) {
            (Ok(small), _) => RawBson::Int32(small),
            (_, Ok(i)) => RawBson::Int64(i),
            _ => RawBson::Double(u as f64),
        })
    }
    fn visit_f64<E>(self, f: f64) -> Result<RawBson, E> {
        Ok(RawBson::Double(f))
    }
    fn visit_str<E>(self, s: &str) -> Result<RawBson, E> {
        Ok(RawBson::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<RawBson, E> {
        Ok(RawBson::String(s))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawBson, A::Error> {
        let mut array = RawArrayBuf::new();
        while let Some(item) = seq.next_element_seed(ValueSeed)? {
            array.push(item);
        }
        Ok(RawBson::Array(array))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawBson, A::Error> {
        let mut doc = empty_document(self.capacity);
        let Some(Key(first)) = map.next_key::<Key<'de>>()? else {
            return Ok(RawBson::Document(doc));
        };
        if first.starts_with('$') {
            return wrapper_from_map(first.into_owned(), map);
        }
        // BSON field names are C strings: a NUL cannot be stored (and would panic `append`).
        check_field_name(&first)?;
        doc.append(first.as_ref(), map.next_value_seed(ValueSeed)?);
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            check_field_name(&key)?;
            doc.append(key.as_ref(), map.next_value_seed(ValueSeed)?);
        }
        Ok(RawBson::Document(doc))
    }
}

/// An empty document with room for `capacity` bytes.
fn empty_document(capacity: usize) -> RawDocumentBuf {
    let mut bytes = Vec::with_capacity(capacity.max(5));
    bytes.extend_from_slice(&[5, 0, 0, 0, 0]);
    RawDocumentBuf::from_bytes(bytes).unwrap_or_default()
}

/// An object whose first key starts with `$`: a type wrapper (or, rarely, a document with
/// such field names, which bson's parser tells apart). The common one-key wrappers are
/// converted directly; anything else is gathered into a `Value` for bson's parser.
fn wrapper_from_map<'de, A: serde::de::MapAccess<'de>>(first: String, mut map: A) -> Result<RawBson, A::Error> {
    let value: serde_json::Value = map.next_value()?;
    let Some(Key(second)) = map.next_key::<Key<'de>>()? else {
        if let Some(raw) = fast_wrapper(&first, &value) {
            return Ok(raw);
        }
        return slow_wrapper(serde_json::Map::from_iter([(first, value)]));
    };
    let mut object = serde_json::Map::new();
    object.insert(first, value);
    object.insert(second.into_owned(), map.next_value::<serde_json::Value>()?);
    while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
        object.insert(key.into_owned(), map.next_value::<serde_json::Value>()?);
    }
    slow_wrapper(object)
}

fn slow_wrapper<E: serde::de::Error>(object: serde_json::Map<String, serde_json::Value>) -> Result<RawBson, E> {
    let mut value = serde_json::Value::Object(object);
    normalize_legacy_extjson(&mut value);
    let bson = Bson::try_from(value).map_err(E::custom)?;
    if let Some(problem) = c_string_problem(&bson) {
        return Err(E::custom(problem));
    }
    RawBson::try_from(bson).map_err(E::custom)
}

fn check_field_name<E: serde::de::Error>(name: &str) -> Result<(), E> {
    field_name_problem(name).map_or(Ok(()), |problem| Err(E::custom(problem)))
}

/// Why BSON cannot store `name` as a field name (a C string: no NUL byte), if it cannot.
pub fn field_name_problem(name: &str) -> Option<String> {
    name.contains('\0').then(|| format!("field name {name:?} contains a NUL byte, which BSON cannot store"))
}

/// What in `value` BSON cannot store as a C string (a field name, a regex pattern or
/// its options with a NUL byte), if anything.
pub fn c_string_problem(value: &Bson) -> Option<String> {
    match value {
        Bson::Document(d) => document_c_string_problem(d),
        Bson::Array(a) => a.iter().find_map(c_string_problem),
        Bson::RegularExpression(r) if r.pattern.contains('\0') || r.options.contains('\0') => {
            Some(format!("regular expression {:?} contains a NUL byte, which BSON cannot store", r.pattern))
        }
        Bson::JavaScriptCodeWithScope(c) => document_c_string_problem(&c.scope),
        _ => None,
    }
}

/// `c_string_problem` for a document's field names and values.
pub fn document_c_string_problem(doc: &bson::Document) -> Option<String> {
    doc.iter().find_map(|(k, v)| field_name_problem(k).or_else(|| c_string_problem(v)))
}

/// The one-key type wrappers that make up nearly all real documents.
fn fast_wrapper(key: &str, value: &serde_json::Value) -> Option<RawBson> {
    use serde_json::Value;
    let date = |ms: i64| RawBson::DateTime(bson::DateTime::from_millis(ms));
    match (key, value) {
        ("$oid", Value::String(s)) => bson::oid::ObjectId::parse_str(s).ok().map(RawBson::ObjectId),
        ("$numberInt", Value::String(s)) => s.parse::<i32>().ok().map(RawBson::Int32),
        ("$numberLong", Value::String(s)) => s.parse::<i64>().ok().map(RawBson::Int64),
        ("$numberDouble", Value::String(s)) => s.parse::<f64>().ok().filter(|f| f.is_finite()).map(RawBson::Double),
        ("$date", Value::Object(d)) if d.len() == 1 => match d.get("$numberLong") {
            Some(Value::String(ms)) => ms.parse::<i64>().ok().map(date),
            _ => None,
        },
        ("$date", Value::Number(ms)) => ms.as_i64().map(date),
        _ => None,
    }
}

/// Rewrites the legacy ("strict mode") Extended JSON forms older Debezium and Java driver
/// versions write into their v2 canonical equivalents, in place:
/// `{"$binary":"<b64>","$type":"<hex>"}`, `{"$regex":"…","$options":"…"}`,
/// `{"$date":<millis>}` (also accepted as is by bson), `{"$numberLong":<number>}`.
pub fn normalize_legacy_extjson(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Array(items) => items.iter_mut().for_each(normalize_legacy_extjson),
        Value::Object(o) => {
            if o.len() == 2 {
                if let (Some(Value::String(b64)), Some(Value::String(t))) = (o.get("$binary"), o.get("$type")) {
                    let sub = format!("{:0>2}", t.trim_start_matches("0x"));
                    let body = serde_json::json!({"base64": b64, "subType": sub});
                    *value = serde_json::json!({ "$binary": body });
                    return;
                }
                if let (Some(Value::String(p)), Some(Value::String(opts))) = (o.get("$regex"), o.get("$options")) {
                    let body = serde_json::json!({"pattern": p, "options": opts});
                    *value = serde_json::json!({ "$regularExpression": body });
                    return;
                }
            }
            if o.len() == 1 {
                if let Some(Value::Number(n)) = o.get("$date") {
                    if let Some(ms) = n.as_i64() {
                        *value = serde_json::json!({"$date": {"$numberLong": ms.to_string()}});
                        return;
                    }
                }
                if let Some(Value::Number(n)) = o.get("$numberLong") {
                    *value = serde_json::json!({"$numberLong": n.to_string()});
                    return;
                }
            }
            o.values_mut().for_each(normalize_legacy_extjson);
        }
        _ => {}
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
        assert_eq!(in_string(&raw), serde_json::to_string(&reference(&d)).unwrap());
    }

    /// `write_canonical_document_in_string` with the quotes serde_json would put around it.
    fn in_string(raw: &RawDocument) -> String {
        let mut out = b"\"".to_vec();
        write_canonical_document_in_string(raw, &mut out).unwrap();
        out.push(b'"');
        String::from_utf8(out).unwrap()
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
        parse_document(text).unwrap()
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
        normalize_legacy_extjson(&mut value);
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
        fn reads_relaxed_text_as_bson_does(fields in proptest::collection::vec(("[a-z$]{1,5}", tree()), 0..8)) {
            let doc: Document = fields.into_iter().collect();
            let text = Bson::Document(doc).into_relaxed_extjson().to_string();
            let expected = match Bson::try_from(serde_json::from_str::<serde_json::Value>(&text).unwrap()) {
                Ok(Bson::Document(d)) => RawDocumentBuf::from_document(&d).unwrap(),
                other => panic!("bson read {text} as {other:?}"),
            };
            let read = parse(&text);
            prop_assert_eq!(read.as_bytes(), expected.as_bytes());
        }

        #[test]
        fn same_text_as_bson(fields in proptest::collection::vec(("[a-z]{1,5}", tree()), 0..8)) {
            let doc: Document = fields.into_iter().collect();
            let raw = RawDocumentBuf::from_document(&doc).unwrap();
            prop_assert_eq!(canonical_document(&raw).unwrap(), reference(&doc));
        }

        #[test]
        fn in_a_string_as_serde_json_escapes_it(fields in proptest::collection::vec(("[a-z\"\\\\]{1,5}", tree()), 0..8)) {
            let doc: Document = fields.into_iter().collect();
            let raw = RawDocumentBuf::from_document(&doc).unwrap();
            prop_assert_eq!(in_string(&raw), serde_json::to_string(&reference(&doc)).unwrap());
        }
    }
}
