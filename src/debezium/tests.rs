//! Tests of the envelope: round trips, what real Debezium connectors write, damaged input.

use super::*;
use crate::event::{SnapshotMarker, TruncatedArray, UpdateDescription};
use bson::{Document, RawDocumentBuf};
use bson::{doc, oid::ObjectId, spec::BinarySubtype, Binary, DateTime, Decimal128, Regex, Timestamp};

fn source() -> SourceInfo {
    SourceInfo {
        name: "docrepl".into(),
        rs: "rs0".into(),
        ts_ms: 1_700_000_000_000,
        ord: 3,
        snapshot: SnapshotMarker::No,
        lsid: None,
        txn_number: None,
    }
}

fn event(op: Op, doc: Option<Document>) -> ChangeEvent {
    let id = doc.as_ref().and_then(|d| d.get("_id").cloned()).unwrap_or(Bson::Int32(7));
    ChangeEvent {
        op,
        ns: Namespace::new("app", "orders"),
        id,
        after: doc.map(|d| RawDocumentBuf::from_document(&d).unwrap()),
        update: None,
        source: source(),
    }
}

fn round_trip(ev: &ChangeEvent) -> ChangeEvent {
    let key = encode_key(&ev.id);
    let value = encode_value(ev, 1).unwrap();
    match decode(Some(&key), Some(&value), "docrepl.app.orders").unwrap() {
        Decoded::Event(e) => e,
        other => panic!("not an event: {other:?}"),
    }
}

#[test]
fn keys_look_like_debeziums() {
    let oid = ObjectId::parse_str("65976a473f3a210c022ffc55").unwrap();
    assert_eq!(encode_key(&Bson::ObjectId(oid)), br#"{"id":"{\"$oid\":\"65976a473f3a210c022ffc55\"}"}"#);
    assert_eq!(encode_key(&Bson::Int32(1234)), br#"{"id":"1234"}"#);
    assert_eq!(encode_key(&Bson::Int64(-5_000_000_000)), br#"{"id":"-5000000000"}"#);
    // The direct forms are what bson's relaxed text gives.
    for id in [Bson::Int32(-7), Bson::Int64(1 << 40), Bson::ObjectId(oid)] {
        let via_bson = serde_json::to_vec(&KeyOut { id: id_relaxed_json(&id) }).unwrap();
        assert_eq!(encode_key(&id), via_bson);
    }
    assert_eq!(encode_key(&Bson::String("abc".into())), br#"{"id":"\"abc\""}"#);
}

#[test]
fn numerically_equal_ids_share_a_key() {
    let one = encode_key(&Bson::Int32(1));
    for same in [Bson::Int64(1), Bson::Double(1.0), Bson::Decimal128("1".parse().unwrap()), Bson::Decimal128("1.00".parse().unwrap()), Bson::Decimal128("1E+0".parse().unwrap())] {
        assert_eq!(encode_key(&same), one, "{same:?}");
        assert_eq!(id_fold_key(&same), id_fold_key(&Bson::Int32(1)), "{same:?}");
    }
    assert_eq!(encode_key(&Bson::Double(-0.0)), encode_key(&Bson::Int32(0)));
    // Not whole, or too large to be exact: Debezium's text.
    assert_eq!(encode_key(&Bson::Double(1.5)), br#"{"id":"1.5"}"#);
    assert_ne!(encode_key(&Bson::Double(1e300)), encode_key(&Bson::Int64(i64::MAX)));
}

#[test]
fn values_have_debeziums_layout() {
    let mut ev = event(Op::Update, Some(doc! {"_id": 1, "s": "a\"b"}));
    ev.update = Some(UpdateDescription { updated_fields: doc! {"s": "a\"b"}, removed_fields: vec!["x".into()], truncated_arrays: vec![] });
    let value = String::from_utf8(encode_value(&ev, 5).unwrap()).unwrap();
    let expected = serde_json::json!({
        "before": null,
        "after": r#"{"_id":{"$numberInt":"1"},"s":"a\"b"}"#,
        "updateDescription": {"removedFields": ["x"], "updatedFields": r#"{"s":"a\"b"}"#, "truncatedArrays": []},
        "source": {
            "version": VERSION, "connector": "mongodb", "name": "docrepl", "ts_ms": 1_700_000_000_000i64,
            "snapshot": "false", "db": "app", "sequence": null, "collection": "orders", "ord": 3,
            "lsid": null, "txnNumber": null, "rs": "rs0",
        },
        "op": "u",
        "ts_ms": 5,
        "transaction": null,
    });
    assert_eq!(value, expected.to_string());
    let delete = encode_value(&event(Op::Delete, Some(doc! {"_id": 1})), 5).unwrap();
    assert!(String::from_utf8(delete).unwrap().starts_with(r#"{"before":null,"after":null,"updateDescription":null,"source":{"#));
}

#[test]
fn every_bson_type_survives_byte_for_byte() {
    let doc = doc! {
        "_id": ObjectId::new(),
        "big": 9_007_199_254_740_993i64,
        "i32": -5i32,
        "dbl": 0.1f64,
        "negzero": -0.0f64,
        "nan": f64::NAN,
        "dec": "1234.5678901234567890".parse::<Decimal128>().unwrap(),
        "old": DateTime::from_millis(-86_400_000_123),
        "far": DateTime::from_millis(253_402_300_800_001),
        "bin": Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 1, 2, 255] },
        "uuid": Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] },
        "user": Binary { subtype: BinarySubtype::UserDefined(0x80), bytes: vec![9] },
        "re": Regex { pattern: "^a.*b$".into(), options: "imsx".into() },
        "ts": Timestamp { time: 1_700_000_000, increment: 42 },
        "min": Bson::MinKey,
        "max": Bson::MaxKey,
        "null": Bson::Null,
        "nested": { "arr": [[1, 2], [], [{"x": "y"}]], "ключ": "значение", "🔑": true },
        "code": Bson::JavaScriptCode("function(){}".into()),
        "sym": Bson::Symbol("s".into()),
        "undef": Bson::Undefined,
    };
    let ev = event(Op::Create, Some(doc));
    let back = round_trip(&ev);
    assert_eq!(back.after.as_ref().unwrap().as_bytes(), ev.after.as_ref().unwrap().as_bytes());
    assert_eq!(back.op, Op::Create);
    assert_eq!(back.ns, ev.ns);
}

#[test]
fn delete_takes_id_from_key() {
    let mut ev = event(Op::Delete, None);
    ev.id = Bson::String("abc".into());
    let back = round_trip(&ev);
    assert_eq!(back.op, Op::Delete);
    assert_eq!(back.id, Bson::String("abc".into()));
    assert!(back.after.is_none());
}

#[test]
fn update_description_round_trips() {
    let mut ev = event(Op::Update, None);
    ev.update = Some(UpdateDescription {
        updated_fields: doc! {"a.2": 5i64, "b": {"c": 1}},
        removed_fields: vec!["x".into()],
        truncated_arrays: vec![TruncatedArray { field: "a".into(), size: 3 }],
    });
    let back = round_trip(&ev);
    assert_eq!(back.update, ev.update);
    assert_eq!(back.id, Bson::Int32(7));
}

#[test]
fn tombstones_and_bad_input() {
    assert_eq!(decode(Some(b"{}"), None, "t"), Ok(Decoded::Tombstone));
    assert!(matches!(decode(None, Some(b"{nope"), "t"), Err(DecodeError::InvalidJson(_))));
    assert!(matches!(decode(None, Some(&[0xff, 0xfe]), "t"), Err(DecodeError::InvalidJson(_))));
    assert_eq!(decode(None, Some(b"[1]"), "t"), Err(DecodeError::NotAnObject));
    assert_eq!(decode(None, Some(br#"{"op":"x"}"#), "t"), Err(DecodeError::UnknownOp("x".into())));
    assert_eq!(decode(None, Some(br#"{"op":"c","after":null}"#), "t"), Err(DecodeError::MissingField("after")));
    assert_eq!(decode(Some(br#"{"id":"1"}"#), Some(br#"{"op":"u"}"#), "p.d.c"), Err(DecodeError::EmptyUpdate));
}

/// A `u` event as Debezium 2.x writes it in `change_streams` mode (no `after`), wrapped
/// by the JSON converter with schemas, with a legacy-form key.
#[test]
fn debezium_wrapped_update_without_after() {
    let key = br#"{"schema":{"type":"struct"},"payload":{"id":"{\"$oid\": \"65976a473f3a210c022ffc55\"}"}}"#;
    let value = br#"{"schema":{"type":"struct"},"payload":{"before":null,"after":null,
        "updateDescription":{"removedFields":["gone"],"updatedFields":"{\"n\": {\"$numberLong\": \"5\"}, \"when\": {\"$date\": 1700000000000}, \"bin\": {\"$binary\": \"AAE=\", \"$type\": \"00\"}}","truncatedArrays":null},
        "source":{"version":"2.5.0.Final","connector":"mongodb","name":"dbserver1","ts_ms":1700000000000,"snapshot":"false","db":"inventory","sequence":null,"rs":"rs0","collection":"customers","ord":1,"lsid":null,"txnNumber":null},
        "op":"u","ts_ms":1700000000123,"transaction":null}}"#;
    let Decoded::Event(ev) = decode(Some(key), Some(value), "dbserver1.inventory.customers").unwrap() else {
        panic!("tombstone")
    };
    assert_eq!(ev.ns, Namespace::new("inventory", "customers"));
    assert_eq!(ev.id, Bson::ObjectId(ObjectId::parse_str("65976a473f3a210c022ffc55").unwrap()));
    let u = ev.update.unwrap();
    assert_eq!(u.removed_fields, vec!["gone".to_string()]);
    assert_eq!(u.updated_fields.get_i64("n").unwrap(), 5);
    assert_eq!(u.updated_fields.get_datetime("when").unwrap().timestamp_millis(), 1_700_000_000_000);
    assert_eq!(u.updated_fields.get_binary_generic("bin").unwrap(), &vec![0u8, 1]);
}

#[test]
fn relaxed_after_and_topic_namespace() {
    let value = br#"{"after":"{\"_id\": 5, \"price\": 1.5, \"at\": {\"$date\": \"2024-01-02T03:04:05.006Z\"}}","op":"r"}"#;
    let Decoded::Event(ev) = decode(None, Some(value), "pfx.shop.items").unwrap() else { panic!() };
    assert_eq!(ev.ns, Namespace::new("shop", "items"));
    assert_eq!(ev.id, Bson::Int32(5));
    let doc = ev.after.unwrap().to_document().unwrap();
    assert_eq!(doc.get_f64("price").unwrap(), 1.5);
}

#[test]
fn fold_keys_treat_numbers_by_value() {
    assert_eq!(id_fold_key(&Bson::Int32(5)), id_fold_key(&Bson::Int64(5)));
    assert_eq!(id_fold_key(&Bson::Double(5.0)), id_fold_key(&Bson::Int64(5)));
    assert_ne!(id_fold_key(&Bson::String("5".into())), id_fold_key(&Bson::Int32(5)));
}

#[test]
fn clear_markers_round_trip_and_foreign_truncates_are_refused() {
    let marker = ClearMarker { ns: Namespace::new("app", "orders"), partition: 3, partitions: 8, reason: "dropped".into() };
    let source = SourceInfo {
        name: "docrepl".into(),
        rs: "rs0".into(),
        ts_ms: 1_700_000_000_000,
        ord: 1,
        snapshot: SnapshotMarker::Yes,
        lsid: None,
        txn_number: None,
    };
    let (key, value) = encode_clear_marker(&marker, &source, 1);
    assert_eq!(decode(Some(&key), Some(&value), "docrepl.app.orders").unwrap(), Decoded::Clear(marker));

    let foreign = br#"{"op":"t","source":{"db":"app","collection":"orders"}}"#;
    assert!(matches!(decode(None, Some(foreign), "docrepl.app.orders"), Err(DecodeError::ForeignTruncate)));
    let out_of_range = br#"{"op":"t","source":{"db":"app","collection":"orders"},"docrepl":{"clear":{"partition":8,"partitions":8}}}"#;
    assert!(decode(None, Some(out_of_range), "docrepl.app.orders").is_err());
}

/// Field names that look like Extended JSON wrappers, `$`-prefixed or dotted.
fn tricky_key() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        proptest::sample::select(vec!["$date", "$oid", "$regex", "$options", "$numberLong", "$numberInt", "$binary", "$type", "$", "$$x", "a.b", ".", "$a.$b"])
            .prop_map(str::to_string),
        "[a-z$.]{1,5}",
    ]
}

fn tricky_value() -> impl proptest::strategy::Strategy<Value = Bson> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        any::<i32>().prop_map(Bson::Int32),
        any::<i64>().prop_map(Bson::Int64),
        "[a-z0-9]{0,6}".prop_map(Bson::String),
        Just(Bson::Null),
        any::<i64>().prop_map(|m| Bson::DateTime(bson::DateTime::from_millis(m))),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Bson::Array),
            proptest::collection::vec((tricky_key(), inner), 0..4).prop_map(|kv| Bson::Document(kv.into_iter().collect())),
        ]
    })
}

proptest::proptest! {
    /// Documents and patches with `$`-prefixed and dotted field names, nested anywhere,
    /// come back byte-identical (field order and types).
    #[test]
    fn dollar_and_dotted_field_names_round_trip(
        fields in proptest::collection::vec((tricky_key(), tricky_value()), 0..6),
        patch in proptest::collection::vec((tricky_key(), tricky_value()), 0..4),
    ) {
        let mut doc = doc! {"_id": 1};
        doc.extend(fields.into_iter().filter(|(k, _)| k != "_id"));
        let mut ev = event(Op::Update, Some(doc));
        let updated_fields: Document = patch.into_iter().collect();
        ev.update = Some(UpdateDescription { updated_fields, removed_fields: vec![], truncated_arrays: vec![] });
        let back = round_trip(&ev);
        proptest::prop_assert_eq!(back.after.as_ref().map(|a| a.as_bytes().to_vec()), ev.after.as_ref().map(|a| a.as_bytes().to_vec()));
        let (sent, got) = (ev.update.unwrap().updated_fields, back.update.unwrap().updated_fields);
        proptest::prop_assert_eq!(bson::to_vec(&got).unwrap(), bson::to_vec(&sent).unwrap());
    }

    /// Whatever arrives on the topic, decoding returns (a value or an error), never panics.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        key in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..64)),
        value in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..512)),
    ) {
        let _ = decode(key.as_deref(), value.as_deref(), "docrepl.app.orders");
    }

    /// Envelopes that are almost right: every prefix of a valid one, and valid ones with
    /// one byte changed, decode or fail cleanly.
    #[test]
    fn damaged_envelopes_never_panic(cut in 0usize..400, at in 0usize..400, byte in proptest::num::u8::ANY) {
        let ev = event(Op::Update, Some(doc! {"_id": 1, "a": [1, {"b": "x"}], "d": 1.5}));
        let key = encode_key(&ev.id);
        let value = encode_value(&ev, 1).unwrap();
        let _ = decode(Some(&key), Some(&value[..cut.min(value.len())]), "docrepl.app.orders");
        let mut changed = value.clone();
        let i = at % changed.len();
        changed[i] = byte;
        let _ = decode(Some(&key), Some(&changed), "docrepl.app.orders");
    }

    /// NUL bytes anywhere in field names, regexes or patch paths are refused, never a
    /// panic (BSON's C strings cannot hold them), and so are absurd array indexes.
    #[test]
    fn nul_bytes_and_huge_indexes_are_refused(pre in "[a-z]{0,3}", post in "[a-z]{0,3}", index in 1_500_001u64..u64::MAX) {
        // `escaped` goes into Extended JSON text (where JSON escapes it), `nul` is the
        // field name itself.
        let escaped = format!("{pre}\\u0000{post}");
        let nul = format!("{pre}\0{post}");
        let source = serde_json::json!({"db": "d", "collection": "c"});
        let values = [
            serde_json::json!({"op": "c", "after": format!(r#"{{"_id": 1, "{escaped}": 1}}"#), "source": source}),
            serde_json::json!({"op": "c", "after": format!(r#"{{"_id": 1, "x": {{"{escaped}": 1}}}}"#), "source": source}),
            serde_json::json!({"op": "c", "after": format!(r#"{{"_id": 1, "r": {{"$regularExpression": {{"pattern": "{escaped}", "options": ""}}}}}}"#), "source": source}),
            serde_json::json!({"op": "u", "updateDescription": {"updatedFields": format!(r#"{{"{escaped}": 1}}"#), "removedFields": []}, "source": source}),
            serde_json::json!({"op": "u", "updateDescription": {"updatedFields": "{}", "removedFields": [nul]}, "source": source}),
            serde_json::json!({"op": "u", "updateDescription": {"updatedFields": format!(r#"{{"a.{index}": 1}}"#), "removedFields": []}, "source": source}),
        ];
        for v in values {
            let text = serde_json::to_vec(&v).unwrap();
            let decoded = decode(Some(br#"{"id":"1"}"#), Some(&text), "docrepl.d.c");
            let message = decoded.err().map(|e| e.to_string()).unwrap_or_default();
            proptest::prop_assert!(message.contains("NUL") || message.contains("past MongoDB's limit"), "{v}: {message}");
        }
    }
}
