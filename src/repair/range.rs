//! The filter for "every `_id` in a span", across BSON types. `{$gte: lo, $lt: hi}`
//! alone matches only the `_id`s of `lo`'s own type bracket (MongoDB compares values of
//! one bracket only), so a span whose ends are of two types adds the brackets between them
//! with `$type`, from the one table of type order (`crate::bson_order`). Only operators
//! DocumentDB 5.0 has (`$gte`, `$lt`, `$type`, `$or`, `$and`). Pure.

use bson::{doc, Bson, Document};

use super::digest::Span;
use crate::bson_order::{bracket, BRACKETS};
use crate::flavor::Flavor;

/// BSON's type number for arrays: `_id` is never one (and `$type` would match arrays by
/// their elements).
const ARRAY: i32 = 4;

/// Deprecated types Amazon DocumentDB cannot store: no `_id` there has them.
const NOT_ON_DOCUMENTDB: [i32; 4] = [6, 12, 14, 15];

/// The `$type` numbers of brackets `from..to` (indexes in `BRACKETS`).
fn types(from: usize, to: usize, flavor: Flavor) -> Vec<Bson> {
    BRACKETS[from.min(to)..to]
        .iter()
        .flat_map(|b| b.iter().copied())
        .filter(|t| *t != ARRAY)
        .filter(|t| !(flavor.is_documentdb() && NOT_ON_DOCUMENTDB.contains(t)))
        .map(Bson::Int32)
        .collect()
}

/// Whether the bracket of `value` holds one value only (MinKey, undefined, null, MaxKey):
/// `$gte`/`$lt` on those say nothing `$type` does not say better.
fn single_valued(value: &Bson) -> bool {
    matches!(value, Bson::MinKey | Bson::Undefined | Bson::Null | Bson::MaxKey)
}

/// Matches the documents whose `_id` lies in `span`.
pub fn span_filter(span: &Span, flavor: Flavor) -> Document {
    let unbounded_lo = matches!(span.lo, Bson::MinKey);
    let unbounded_hi = matches!(span.hi, Bson::MaxKey);
    match (unbounded_lo, unbounded_hi) {
        (true, true) => return doc! {},
        (false, false) if bracket(&span.lo) == bracket(&span.hi) && !single_valued(&span.lo) => {
            return doc! {"_id": {"$gte": span.lo.clone(), "$lt": span.hi.clone()}};
        }
        _ => {}
    }
    let mut parts: Vec<Document> = Vec::new();
    if !unbounded_lo {
        parts.push(at_least(&span.lo, flavor));
    }
    if !unbounded_hi {
        parts.push(below(&span.hi, flavor));
    }
    match parts.len() {
        1 => parts.remove(0),
        _ => doc! {"$and": parts},
    }
}

/// `_id >= lo`, across types.
fn at_least(lo: &Bson, flavor: Flavor) -> Document {
    let own = bracket(lo);
    if single_valued(lo) {
        return doc! {"_id": {"$type": types(own, BRACKETS.len(), flavor)}};
    }
    let later = types(own + 1, BRACKETS.len(), flavor);
    doc! {"$or": [{"_id": {"$gte": lo.clone()}}, {"_id": {"$type": later}}]}
}

/// `_id < hi`, across types.
fn below(hi: &Bson, flavor: Flavor) -> Document {
    let own = bracket(hi);
    let earlier = types(0, own, flavor);
    if single_valued(hi) {
        return doc! {"_id": {"$type": earlier}};
    }
    if earlier.is_empty() {
        return doc! {"_id": {"$lt": hi.clone()}};
    }
    doc! {"$or": [{"_id": {"$lt": hi.clone()}}, {"_id": {"$type": earlier}}]}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_type_is_a_plain_range() {
        let span = Span { lo: Bson::Int32(5), hi: Bson::Int64(9) };
        assert_eq!(span_filter(&span, Flavor::MongoDb), doc! {"_id": {"$gte": 5, "$lt": 9_i64}});
        assert_eq!(span_filter(&Span::everything(), Flavor::MongoDb), doc! {});
    }

    #[test]
    fn two_types_add_the_brackets_between() {
        let span = Span { lo: Bson::Int32(5), hi: Bson::ObjectId(bson::oid::ObjectId::from_bytes([0; 12])) };
        let f = span_filter(&span, Flavor::MongoDb);
        let text = f.to_string();
        // Strings (2) and binary (5) lie between numbers and ObjectIds; arrays never.
        assert!(text.contains("\"$gte\": 5"), "{text}");
        assert!(text.contains("2") && text.contains("5"), "{text}");
        let lower_only = span_filter(&Span { lo: Bson::String("m".into()), hi: Bson::MaxKey }, Flavor::DocumentDb);
        assert!(!lower_only.to_string().contains(" 14"), "symbol is not on DocumentDB: {lower_only}");
    }
}
