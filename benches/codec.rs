//! The pure hot paths: envelope encoding and decoding (a small and a 16 KB document) and
//! batch folding. `cargo bench --bench codec`.

use bson::{doc, Bson, Document, RawDocumentBuf};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use docrepl::debezium::{decode, encode_key, encode_value};
use docrepl::event::{ChangeEvent, Namespace, Op, SnapshotMarker, SourceInfo, UpdateDescription};
use docrepl::sink::fold::fold;

fn source() -> SourceInfo {
    SourceInfo {
        name: "docrepl".into(),
        rs: "rs0".into(),
        ts_ms: 1_700_000_000_000,
        ord: 1,
        snapshot: SnapshotMarker::No,
        lsid: None,
        txn_number: None,
    }
}

fn small(id: i64) -> Document {
    docrepl::loadgen::make_document(docrepl::loadgen::Shape::Flat, id, 1)
}

fn large(id: i64) -> Document {
    let mut d = docrepl::loadgen::make_document(docrepl::loadgen::Shape::Nested, id, 1);
    d.insert("blob", "x".repeat(15_000));
    d
}

fn event(op: Op, doc: Document) -> ChangeEvent {
    ChangeEvent {
        op,
        ns: Namespace::new("app", "orders"),
        id: doc.get("_id").cloned().unwrap_or(Bson::Null),
        after: Some(RawDocumentBuf::from_document(&doc).expect("bson")),
        update: None,
        source: source(),
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    for (name, doc) in [("small", small(1)), ("16KB", large(1))] {
        let ev = event(Op::Create, doc);
        let key = encode_key(&ev.id);
        let value = encode_value(&ev, 0).expect("encode");
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("encode", name), &ev, |b, ev| {
            b.iter(|| (encode_key(&ev.id), encode_value(ev, 0)))
        });
        group.bench_with_input(BenchmarkId::new("decode", name), &value, |b, value| {
            b.iter(|| decode(Some(&key), Some(value), "docrepl.app.orders"))
        });
    }
    group.finish();
}

fn folding(c: &mut Criterion) {
    // 5,000 events over 1,000 documents: full documents, patches and deletes.
    let events: Vec<(usize, ChangeEvent)> = (0..5000)
        .map(|i| {
            let id = (i % 1000) as i64;
            let ev = match i % 5 {
                0..=2 => event(Op::Update, small(id)),
                3 => ChangeEvent {
                    op: Op::Update,
                    after: None,
                    update: Some(UpdateDescription { updated_fields: doc! {"n": i as i64}, ..Default::default() }),
                    ..event(Op::Update, small(id))
                },
                _ => ChangeEvent { op: Op::Delete, after: None, ..event(Op::Delete, small(id)) },
            };
            (i, ev)
        })
        .collect();
    let mut group = c.benchmark_group("fold");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("5000 events over 1000 documents", |b| b.iter(|| fold(events.clone())));
    group.finish();
}

criterion_group!(benches, codec, folding);
criterion_main!(benches);
