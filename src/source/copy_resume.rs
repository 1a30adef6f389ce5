//! Where an interrupted initial copy picks up: the filter for "every `_id` after this one
//! in the `_id` index's order", across BSON types.
//!
//! A plain `{_id: {$gt: x}}` only matches `_id`s of x's own type bracket (numbers with
//! numbers, strings with strings), so on its own it would skip every `_id` of a type that
//! sorts later. The filter adds those types with `$type` (their order:
//! `crate::bson_order`). It replaces `find(...).min()`, which Amazon DocumentDB does not
//! support (cursor `min`/`max`); one query serves both flavours. Pure: unit-tested here, and against a real server in `tests/documentdb.rs`.

use bson::{doc, Bson, Document};

use crate::bson_order::{bracket, BRACKETS};
use crate::flavor::Flavor;

/// Deprecated types Amazon DocumentDB cannot store (its data-type table lists none of
/// them), so no `_id` there has them; naming them in `$type` is left to MongoDB.
const NOT_ON_DOCUMENTDB: [i32; 4] = [6, 12, 14, 15];

/// BSON's type number for arrays, left out of `$type`: see `after_id`.
const ARRAY: i32 = 4;

/// Matches every document whose `_id` sorts after `after` (not `after` itself).
pub fn after_id(after: &Bson, flavor: Flavor) -> Document {
    let later: Vec<Bson> = BRACKETS[bracket(after) + 1..]
        .iter()
        .flat_map(|b| b.iter().copied())
        // `_id` is never an array (and `$type` would match arrays by their elements).
        .filter(|t| *t != ARRAY)
        .filter(|t| !(flavor.is_documentdb() && NOT_ON_DOCUMENTDB.contains(t)))
        .map(Bson::Int32)
        .collect();
    // MinKey, undefined, null and MaxKey are single values: nothing of their type is greater.
    let same_type = doc! {"_id": {"$gt": after.clone()}};
    if later.is_empty() {
        return same_type;
    }
    doc! {"$or": [same_type, {"_id": {"$type": later}}]}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_types_follow_the_comparison_order() {
        let f = after_id(&Bson::Int32(5), Flavor::MongoDb);
        let or = f.get_array("$or").unwrap();
        assert_eq!(or[0].as_document().unwrap(), &doc! {"_id": {"$gt": 5}});
        let types = or[1].as_document().unwrap().get_document("_id").unwrap().get_array("$type").unwrap();
        // Strings come next, MaxKey last; no number type is among them.
        assert_eq!(types.first(), Some(&Bson::Int32(2)));
        assert_eq!(types.last(), Some(&Bson::Int32(127)));
        assert!(!types.contains(&Bson::Int32(16)) && !types.contains(&Bson::Int32(1)));
    }

    #[test]
    fn max_key_has_nothing_after_it() {
        assert_eq!(after_id(&Bson::MaxKey, Flavor::MongoDb), doc! {"_id": {"$gt": Bson::MaxKey}});
    }

    #[test]
    fn documentdb_gets_no_deprecated_types() {
        let f = after_id(&Bson::Null, Flavor::DocumentDb);
        let types = f.get_array("$or").unwrap()[1].as_document().unwrap().get_document("_id").unwrap().get_array("$type").unwrap().clone();
        assert!(types.contains(&Bson::Int32(7)) && !types.contains(&Bson::Int32(14)) && !types.contains(&Bson::Int32(6)));
    }
}
