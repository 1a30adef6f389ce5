//! The cutover rule: what the target carries while it replicates, and what `docrepl
//! cutover` adds. Pure.
//!
//! - A unique index is built non-unique. Events of different partitions are not in order
//!   with each other, so a unique index would refuse a document whose old holder of the
//!   value has not been updated yet on the target (a transient conflict that the sink must
//!   wait out or, past its patience, dead-letter: a lost document). Built non-unique, every
//!   write lands; at cutover, with the source quiet and the sink caught up, the source's
//!   uniqueness holds on the target too and the index is made unique.
//! - A TTL index (`expireAfterSeconds`), and a clustered collection's own
//!   `expireAfterSeconds`, are kept without it. The source's TTL monitor deletes expired
//!   documents and those deletes arrive as events; a target monitor of its own would
//!   delete documents on its own clock, ahead of the source (a copied document already
//!   expired there, an update arriving after the target deleted it: the sink would
//!   re-insert it, or a delete and a re-insert would race). At cutover the target starts
//!   expiring by itself.
//!
//! Nothing else differs: the index is built with the same name, key and every other
//! option, so queries use it as on the source while replicating.

use bson::{Bson, Document};

use super::{same_index, CollectionMetadata, ID_INDEX};

/// What cutover adds to one index.
#[derive(Debug, Clone, PartialEq)]
pub enum Deferred {
    Unique,
    ExpireAfterSeconds(Bson),
}

/// The form of a source index that the target carries while replicating.
pub fn replicating_index(ix: &Document) -> Document {
    let mut ix = super::normalize_index(ix.clone());
    if super::index_name(&ix) != ID_INDEX {
        ix.remove("unique");
        ix.remove("expireAfterSeconds");
    }
    ix
}

/// What cutover must add to make `replicating_index(ix)` into `ix`.
pub fn deferred(ix: &Document) -> Vec<Deferred> {
    if super::index_name(ix) == ID_INDEX {
        return Vec::new();
    }
    let mut out = Vec::new();
    if ix.get_bool("unique").unwrap_or(false) {
        out.push(Deferred::Unique);
    }
    if let Some(secs) = ix.get("expireAfterSeconds") {
        out.push(Deferred::ExpireAfterSeconds(secs.clone()));
    }
    out
}

/// The collection options the target carries while replicating: a clustered
/// collection's `expireAfterSeconds` waits for cutover, like a TTL index.
pub fn replicating_options(options: &Document) -> Document {
    let mut options = options.clone();
    options.remove("expireAfterSeconds");
    options
}

/// Whether the target's index `actual` stands for the source's `source` now: its
/// replicating form before cutover, or the source's own form once cutover made it so (it
/// is never turned back).
pub fn index_matches(source: &Document, actual: &Document) -> bool {
    same_index(&replicating_index(source), actual) || same_index(source, actual)
}

/// The whole metadata as the target carries it while replicating (what the sink applies).
pub fn replicating(meta: &CollectionMetadata) -> CollectionMetadata {
    CollectionMetadata {
        ns: meta.ns.clone(),
        kind: meta.kind.clone(),
        options: replicating_options(&meta.options),
        indexes: meta.indexes.as_ref().map(|list| list.iter().map(replicating_index).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn unique_and_ttl_wait_for_cutover_and_nothing_else_does() {
        let ix = doc! {"v": 2, "key": {"email": 1}, "name": "email_1", "unique": true, "collation": {"locale": "en", "strength": 2}};
        assert_eq!(replicating_index(&ix), doc! {"key": {"email": 1}, "name": "email_1", "collation": {"locale": "en", "strength": 2}});
        assert_eq!(deferred(&ix), vec![Deferred::Unique]);
        let ttl = doc! {"key": {"at": 1}, "name": "at_1", "expireAfterSeconds": 3600};
        assert_eq!(replicating_index(&ttl), doc! {"key": {"at": 1}, "name": "at_1"});
        assert_eq!(deferred(&ttl), vec![Deferred::ExpireAfterSeconds(Bson::Int32(3600))]);
        let partial = doc! {"key": {"a": 1}, "name": "a_1", "partialFilterExpression": {"a": {"$gt": 1}}, "hidden": true};
        assert_eq!(replicating_index(&partial), partial);
        assert!(deferred(&partial).is_empty());
        assert!(deferred(&doc! {"key": {"_id": 1}, "name": "_id_", "unique": true}).is_empty());
    }

    #[test]
    fn a_finalised_index_still_matches_and_a_different_one_does_not() {
        let ix = doc! {"key": {"email": 1}, "name": "email_1", "unique": true};
        assert!(index_matches(&ix, &doc! {"key": {"email": 1}, "name": "email_1"}));
        assert!(index_matches(&ix, &doc! {"key": {"email": 1}, "name": "email_1", "unique": true}));
        assert!(!index_matches(&ix, &doc! {"key": {"email": -1}, "name": "email_1"}));
        assert!(!index_matches(&ix, &doc! {"key": {"email": 1}, "name": "email_1", "sparse": true}));
    }

    #[test]
    fn a_clustered_collections_expiry_waits_too() {
        let options = doc! {"clusteredIndex": {"key": {"_id": 1}, "unique": true}, "expireAfterSeconds": 60i64};
        assert_eq!(replicating_options(&options), doc! {"clusteredIndex": {"key": {"_id": 1}, "unique": true}});
    }
}
