//! What `repair` compares instead of documents: chunks of the `_id` order, each a count and
//! a digest (the wrapping sum of its documents' hashes), with boundaries that both sides
//! find on their own. An `_id` starts a chunk at level `bits` when the low `bits` bits of
//! its hash are zero (a content-defined boundary, as in rsync or a Merkle search tree), so
//! the two sides scan at the same time, with no list of boundaries sent between them, and a
//! document missing on one side moves no boundary but its own. Level `b + LEVEL_STEP`
//! boundaries are a subset of level `b`'s, so a span between two common boundaries of a
//! coarse level splits into about 4 chunks of the next (which levels a repair visits: see
//! `levels`). Pure: no I/O, tested here.

use std::cmp::Ordering;

use bson::{Bson, RawBsonRef, RawDocument};
use xxhash_rust::xxh3::xxh3_64;

use crate::bson_order::compare;

/// A stable hash of a document: its exact BSON bytes (field order and types included, as
/// `verify` compares). XXH3 is specified, so two docrepl builds hash alike.
pub fn document_hash(doc: &RawDocument) -> u64 {
    xxh3_64(doc.as_bytes())
}

/// The hash an `_id` is judged by for boundaries: of its BSON value with its type, so
/// `1` and `"1"` differ.
pub fn id_hash(id: &Bson) -> u64 {
    let mut buf = Vec::with_capacity(32);
    buf.push(crate::bson_order::type_number(id) as u8);
    // One-field document: the bson crate's own encoding of the value.
    let mut holder = bson::Document::new();
    holder.insert("", id.clone());
    // Encoding a document built from a valid `Bson` cannot fail but for sizes over 16 MiB,
    // which an `_id` cannot reach; hash the debug text then rather than panic.
    match bson::to_vec(&holder) {
        Ok(bytes) => buf.extend_from_slice(&bytes),
        Err(_) => buf.extend_from_slice(format!("{id:?}").as_bytes()),
    }
    xxh3_64(&buf)
}

/// `id_hash` of an `_id` as read from a document, without building a `Bson` for the
/// common `_id` types (a scan hashes every document's `_id`): the same bytes `id_hash`
/// encodes, so both sides and older builds draw the same boundaries.
pub fn raw_id_hash(id: RawBsonRef<'_>) -> u64 {
    // The one-field document `{"": value}`: length, type, empty key, value, terminator.
    let framed = |kind: u8, value: &[u8]| -> u64 {
        let mut buf = Vec::with_capacity(8 + value.len());
        buf.push(kind);
        buf.extend_from_slice(&((value.len() + 7) as i32).to_le_bytes());
        buf.extend_from_slice(&[kind, 0]);
        buf.extend_from_slice(value);
        buf.push(0);
        xxh3_64(&buf)
    };
    match id {
        RawBsonRef::Int32(v) => framed(0x10, &v.to_le_bytes()),
        RawBsonRef::Int64(v) => framed(0x12, &v.to_le_bytes()),
        RawBsonRef::Double(v) => framed(0x01, &v.to_le_bytes()),
        RawBsonRef::ObjectId(v) => framed(0x07, &v.bytes()),
        RawBsonRef::String(v) => {
            let mut value = Vec::with_capacity(v.len() + 5);
            value.extend_from_slice(&((v.len() + 1) as i32).to_le_bytes());
            value.extend_from_slice(v.as_bytes());
            value.push(0);
            framed(0x02, &value)
        }
        other => match Bson::try_from(other) {
            Ok(b) => id_hash(&b),
            Err(_) => xxh3_64(format!("{other:?}").as_bytes()),
        },
    }
}

/// Whether `hash` (an `id_hash`) starts a chunk at level `bits`.
pub fn is_boundary(hash: u64, bits: u32) -> bool {
    bits == 0 || hash.trailing_zeros() >= bits
}

/// A run of documents in `_id` order: from `first` (a boundary `_id`, or the start of the
/// span) up to the next chunk's `first`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub first: Bson,
    pub count: u64,
    pub digest: u64,
}

/// Builds the chunks of a span at one level from its documents in `_id` order.
#[derive(Debug)]
pub struct Chunker {
    bits: u32,
    chunks: Vec<Chunk>,
}

impl Chunker {
    /// A span starting at `lo` (`MinKey`: the collection's start). Its first chunk starts
    /// at `lo` even when empty, so both sides' lists of one span start alike.
    pub fn new(lo: Bson, bits: u32) -> Chunker {
        Chunker { bits, chunks: vec![Chunk { first: lo, count: 0, digest: 0 }] }
    }

    /// Adds the next document (`_id`s ascending). The span's own start is no new boundary.
    pub fn push(&mut self, id: &Bson, hash: u64) {
        self.push_hashed(id_hash(id), || id.clone(), hash);
    }

    /// `push` with the `_id`'s `id_hash` known; `id` is built only for a boundary.
    pub fn push_hashed(&mut self, id_hash: u64, id: impl FnOnce() -> Bson, hash: u64) {
        if is_boundary(id_hash, self.bits) {
            let id = id();
            let at_start = self.chunks.last().is_some_and(|c| compare(&c.first, &id) == Ordering::Equal);
            if !at_start {
                self.chunks.push(Chunk { first: id, count: 0, digest: 0 });
            }
        }
        if let Some(c) = self.chunks.last_mut() {
            c.count += 1;
            c.digest = c.digest.wrapping_add(hash);
        }
    }

    pub fn finish(self) -> Vec<Chunk> {
        self.chunks
    }
}

/// The coarser chunks at level `bits` of a span, from the finer chunks that cover it (the
/// first of which starts at the span's start). Each fine chunk's `first` is a boundary
/// of the fine level, and a coarse boundary is a fine one, so sums of fine chunks are exact.
pub fn coarsen(fine: &[Chunk], bits: u32) -> Vec<Chunk> {
    let mut out: Vec<Chunk> = Vec::new();
    for (i, c) in fine.iter().enumerate() {
        let starts = i == 0 || is_boundary(id_hash(&c.first), bits);
        match out.last_mut() {
            Some(last) if !starts => {
                last.count += c.count;
                last.digest = last.digest.wrapping_add(c.digest);
            }
            _ => out.push(c.clone()),
        }
    }
    out
}

/// Each span's count and digest (as a chunk's), from `(_id, hash)` entries in `_id` order
/// and `spans` sorted and disjoint: what a pass's written spans are compared again by.
pub fn span_digests(spans: &[Span], entries: &[(Bson, u64)]) -> Vec<(u64, u64)> {
    let mut out = vec![(0u64, 0u64); spans.len()];
    for (id, hash) in entries {
        // The last span starting at or before `id`; entries come from the spans' filters.
        let i = spans.partition_point(|s| matches!(s.lo, Bson::MinKey) || compare(&s.lo, id).is_le());
        if let Some(slot) = i.checked_sub(1).and_then(|i| out.get_mut(i)) {
            slot.0 += 1;
            slot.1 = slot.1.wrapping_add(*hash);
        }
    }
    out
}

/// A range of `_id`s, `lo` included, `hi` excluded (`MinKey` / `MaxKey`: unbounded).
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub lo: Bson,
    pub hi: Bson,
}

impl Span {
    pub fn everything() -> Span {
        Span { lo: Bson::MinKey, hi: Bson::MaxKey }
    }
}

/// One level's comparison over many spans: the spans to narrow next, and how many pieces
/// were compared and differed (what `steps_down` judges the next level by).
#[derive(Debug, Default)]
pub struct Level {
    pub next: Vec<Span>,
    pub pieces: usize,
    pub differing: usize,
}

impl Level {
    /// Adds the sub-spans of `span` (spans come in `_id` order) where the two sides' chunk
    /// lists (of the same level, both starting at `span.lo`) differ. Boundaries both sides
    /// have cut the span into pieces; a piece holding one chunk on each side is equal when
    /// count and digest are, and a piece with a boundary on one side only differs (that
    /// `_id` exists on one side only).
    pub fn compare(&mut self, span: &Span, a: &[Chunk], b: &[Chunk]) {
        // (index in a, index in b) of each boundary both have, in order.
        let mut common: Vec<(usize, usize)> = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            // The first chunks both start at the span's start, whatever it is.
            let order = if i == 0 && j == 0 { Ordering::Equal } else { compare(&a[i].first, &b[j].first) };
            match order {
                Ordering::Equal => {
                    common.push((i, j));
                    i += 1;
                    j += 1;
                }
                Ordering::Less => i += 1,
                Ordering::Greater => j += 1,
            }
        }
        self.pieces += common.len();
        for (k, &(ia, ib)) in common.iter().enumerate() {
            let (next_a, next_b) = common.get(k + 1).copied().unwrap_or((a.len(), b.len()));
            let single = next_a == ia + 1 && next_b == ib + 1;
            if single && a[ia].count == b[ib].count && a[ia].digest == b[ib].digest {
                continue;
            }
            self.differing += 1;
            let lo = if k == 0 { span.lo.clone() } else { a[ia].first.clone() };
            let hi = if next_a < a.len() { a[next_a].first.clone() } else { span.hi.clone() };
            // Adjacent differing pieces make one span: fewer ranges to read at the next level.
            match self.next.last_mut() {
                Some(last) if last.hi == lo => last.hi = hi,
                _ => self.next.push(Span { lo, hi }),
            }
        }
    }
}

/// What makes the target equal to the source, for one span read document by document.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Fixes {
    /// On the source, not on the target.
    pub missing: Vec<Bson>,
    /// On both, different.
    pub differing: Vec<Bson>,
    /// On the target only.
    pub extra: Vec<Bson>,
}

impl Fixes {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.differing.is_empty() && self.extra.is_empty()
    }

    pub fn extend(&mut self, other: Fixes) {
        self.missing.extend(other.missing);
        self.differing.extend(other.differing);
        self.extra.extend(other.extra);
    }
}

/// Merges the `(_id, document hash)` lists of one span (each in `_id` order).
pub fn fixes(source: &[(Bson, u64)], target: &[(Bson, u64)]) -> Fixes {
    let mut out = Fixes::default();
    let (mut i, mut j) = (0, 0);
    loop {
        match (source.get(i), target.get(j)) {
            (None, None) => return out,
            (Some((id, _)), None) => {
                out.missing.push(id.clone());
                i += 1;
            }
            (None, Some((id, _))) => {
                out.extra.push(id.clone());
                j += 1;
            }
            (Some((a, ha)), Some((b, hb))) => match compare(a, b) {
                Ordering::Less => {
                    out.missing.push(a.clone());
                    i += 1;
                }
                Ordering::Greater => {
                    out.extra.push(b.clone());
                    j += 1;
                }
                Ordering::Equal => {
                    if ha != hb {
                        out.differing.push(a.clone());
                    }
                    i += 1;
                    j += 1;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;
    use proptest::prelude::*;

    /// One span's `Level::compare`: the sub-spans that differ.
    fn differing_spans(span: &Span, a: &[Chunk], b: &[Chunk]) -> Vec<Span> {
        let mut level = Level::default();
        level.compare(span, a, b);
        level.next
    }

    fn chunks(ids: &[(i64, u64)], span: &Span, bits: u32) -> Vec<Chunk> {
        let mut c = Chunker::new(span.lo.clone(), bits);
        for (id, h) in ids {
            c.push(&Bson::Int64(*id), *h);
        }
        c.finish()
    }

    #[test]
    fn document_hash_follows_bytes_and_field_order() {
        let a = rawdoc! {"_id": 1, "x": 1, "y": 2};
        let b = rawdoc! {"_id": 1, "y": 2, "x": 1};
        assert_ne!(document_hash(&a), document_hash(&b));
        assert_eq!(document_hash(&a), document_hash(&rawdoc! {"_id": 1, "x": 1, "y": 2}));
        assert_ne!(id_hash(&Bson::Int32(1)), id_hash(&Bson::String("1".into())));
    }

    #[test]
    fn raw_id_hash_is_id_hash() {
        let doc = rawdoc! {"a": 7, "b": 7i64, "c": 2.5, "d": bson::oid::ObjectId::new(), "e": "héllo", "f": {"x": 1}, "g": [1, "2"], "h": true, "i": bson::DateTime::from_millis(5)};
        for element in doc.iter() {
            let (key, value) = element.expect("valid test document");
            let owned = Bson::try_from(value).expect("convertible");
            assert_eq!(raw_id_hash(value), id_hash(&owned), "field {key}");
        }
    }

    #[test]
    fn equal_sides_have_no_differing_span() {
        let ids: Vec<(i64, u64)> = (0..5000).map(|i| (i, i as u64 * 7)).collect();
        let span = Span::everything();
        let a = chunks(&ids, &span, 4);
        assert!(a.len() > 100, "about one chunk in 16: {}", a.len());
        assert!(differing_spans(&span, &a, &a.clone()).is_empty());
    }

    #[test]
    fn coarse_chunks_are_sums_of_fine_ones() {
        let ids: Vec<(i64, u64)> = (0..20_000).map(|i| (i, (i as u64).wrapping_mul(0x9E37_79B9))).collect();
        let span = Span::everything();
        assert_eq!(coarsen(&chunks(&ids, &span, 4), 8), chunks(&ids, &span, 8));
        assert_eq!(coarsen(&chunks(&ids, &span, 4), 12), chunks(&ids, &span, 12));
    }

    #[test]
    fn fixes_name_missing_differing_and_extra() {
        let source = [(Bson::Int32(1), 10), (Bson::Int32(2), 20), (Bson::Int32(4), 40)];
        let target = [(Bson::Int32(2), 21), (Bson::Int32(3), 30), (Bson::Int32(4), 40)];
        let f = fixes(&source, &target);
        assert_eq!(f.missing, vec![Bson::Int32(1)]);
        assert_eq!(f.differing, vec![Bson::Int32(2)]);
        assert_eq!(f.extra, vec![Bson::Int32(3)]);
    }

    #[test]
    fn span_digests_sum_each_span() {
        let spans = vec![Span { lo: Bson::MinKey, hi: Bson::Int32(10) }, Span { lo: Bson::Int32(20), hi: Bson::MaxKey }];
        let entries = vec![(Bson::Int32(1), 5), (Bson::Int32(9), 6), (Bson::Int32(25), 7)];
        assert_eq!(span_digests(&spans, &entries), vec![(2, 11), (1, 7)]);
        assert_eq!(span_digests(&spans, &[]), vec![(0, 0), (0, 0)]);
    }

    #[test]
    fn level_counts_pieces_and_differences() {
        let ids: Vec<(i64, u64)> = (0..5000).map(|i| (i, i as u64 * 7)).collect();
        let span = Span::everything();
        let a = chunks(&ids, &span, 4);
        let mut changed = ids.clone();
        changed[10].1 += 1;
        let mut level = Level::default();
        level.compare(&span, &a, &chunks(&changed, &span, 4));
        assert_eq!((level.pieces, level.differing, level.next.len()), (a.len(), 1, 1));
    }

    /// Narrowing from the top level down to documents, as `repair` does, on two sides
    /// `edits` apart: what it finds is exactly what differs.
    fn narrow(source: &[(i64, u64)], target: &[(i64, u64)]) -> Fixes {
        let mut spans = vec![Span::everything()];
        let mut bits = 12;
        let within = |ids: &[(i64, u64)], s: &Span| -> Vec<(i64, u64)> {
            ids.iter().copied().filter(|(id, _)| compare(&Bson::Int64(*id), &s.lo).is_ge() && compare(&Bson::Int64(*id), &s.hi).is_lt()).collect()
        };
        while bits > 0 {
            let mut next = Vec::new();
            for s in &spans {
                let a = chunks(&within(source, s), s, bits);
                let b = chunks(&within(target, s), s, bits);
                next.extend(differing_spans(s, &a, &b));
            }
            spans = next;
            bits -= 4;
        }
        let mut out = Fixes::default();
        for s in &spans {
            let a: Vec<(Bson, u64)> = within(source, s).into_iter().map(|(i, h)| (Bson::Int64(i), h)).collect();
            let b: Vec<(Bson, u64)> = within(target, s).into_iter().map(|(i, h)| (Bson::Int64(i), h)).collect();
            out.extend(fixes(&a, &b));
        }
        out
    }

    proptest! {
        #[test]
        fn narrowing_finds_every_difference(n in 0usize..3000, edits in proptest::collection::vec((0i64..3500, 0u8..3), 0..40)) {
            let source: Vec<(i64, u64)> = (0..n as i64).map(|i| (i, i as u64 + 1)).collect();
            let mut target = source.clone();
            for (id, kind) in &edits {
                match kind {
                    0 => target.retain(|(i, _)| i != id),
                    1 => if let Some(d) = target.iter_mut().find(|(i, _)| i == id) { d.1 += 1000 },
                    _ => if !target.iter().any(|(i, _)| i == id) { target.push((*id, 7)); target.sort() },
                }
            }
            let found = narrow(&source, &target);
            let expected = fixes(
                &source.iter().map(|(i, h)| (Bson::Int64(*i), *h)).collect::<Vec<_>>(),
                &target.iter().map(|(i, h)| (Bson::Int64(*i), *h)).collect::<Vec<_>>(),
            );
            prop_assert_eq!(found, expected);
        }
    }
}
