//! A collection's metadata as state: its kind, its options (as `listCollections` lists
//! them) and its full index list (as `listIndexes` lists them). The source reads it and
//! sends it on the collection's topic (see `debezium::MetadataMessage`); the sink makes the
//! target match it (see `plan`); `verify` and `cutover` compare it. The model, `plan` and
//! `rule` are pure; `catalog` reads a cluster.
//!
//! The rule for indexes that would make replication itself fail or lose documents (see
//! `rule`): while replicating, a unique index is built non-unique and a TTL index without
//! its `expireAfterSeconds`; `docrepl cutover` makes them what the source has.

use bson::{doc, Bson, Document};

use crate::event::Namespace;

pub mod catalog;
pub mod plan;
pub mod rule;

/// What `listCollections` says a namespace is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Collection,
    View,
    /// Change streams do not cover time-series collections: never replicated (refused).
    Timeseries,
    /// Anything a later server lists (kept by name, refused like time series).
    Other(String),
}

impl Kind {
    pub fn parse(name: &str) -> Kind {
        match name {
            "collection" => Kind::Collection,
            "view" => Kind::View,
            "timeseries" => Kind::Timeseries,
            other => Kind::Other(other.to_string()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Kind::Collection => "collection",
            Kind::View => "view",
            Kind::Timeseries => "timeseries",
            Kind::Other(name) => name,
        }
    }
}

/// One namespace's metadata, as state (not as a change).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionMetadata {
    pub ns: Namespace,
    pub kind: Kind,
    /// `listCollections`' `options` (validator, collation, capped size, clustered index,
    /// `viewOn` and `pipeline` of a view, ...), as the server lists them.
    pub options: Document,
    /// Every index, `_id_` included, each as `listIndexes` lists it without `v` and `ns`
    /// (see [`normalize_index`]), sorted by name. `None`: not carried (the message sent
    /// before a collection's initial copy, so that the copy writes into a collection
    /// created with its options, and the indexes are built once after it).
    pub indexes: Option<Vec<Document>>,
}

/// Why a metadata document (from the topic or the target's record) cannot be read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("collection metadata: {0}")]
pub struct MetadataError(pub String);

impl CollectionMetadata {
    /// From one entry of `listCollections` (`name`, `type`, `options`, ...) and the
    /// collection's `listIndexes` (`None`: not carried).
    pub fn from_listing(db: &str, entry: &Document, indexes: Option<Vec<Document>>) -> Result<Self, MetadataError> {
        let name = entry.get_str("name").map_err(|_| MetadataError("a listCollections entry without a name".into()))?;
        let kind = Kind::parse(entry.get_str("type").unwrap_or("collection"));
        let options = entry.get_document("options").cloned().unwrap_or_default();
        Ok(CollectionMetadata { ns: Namespace::new(db, name), kind, options, indexes: indexes.map(normalize_indexes) })
    }

    /// The document sent on the topic and recorded on the target.
    pub fn to_document(&self) -> Document {
        let mut d = doc! {"db": &self.ns.db, "coll": &self.ns.coll, "type": self.kind.name(), "options": self.options.clone()};
        if let Some(indexes) = &self.indexes {
            d.insert("indexes", indexes.iter().cloned().map(Bson::Document).collect::<Vec<_>>());
        }
        d
    }

    pub fn from_document(d: &Document) -> Result<Self, MetadataError> {
        let field = |name: &str| d.get_str(name).map_err(|_| MetadataError(format!("field `{name}` is missing or not a string")));
        let ns = Namespace::new(field("db")?, field("coll")?);
        let kind = Kind::parse(field("type")?);
        let options = d.get_document("options").cloned().unwrap_or_default();
        let indexes = match d.get("indexes") {
            None | Some(Bson::Null) => None,
            Some(Bson::Array(list)) => Some(
                list.iter()
                    .map(|ix| match ix {
                        Bson::Document(ix) => Ok(ix.clone()),
                        _ => Err(MetadataError("an entry of `indexes` is not a document".into())),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => return Err(MetadataError("field `indexes` is not an array".into())),
        };
        Ok(CollectionMetadata { ns, kind, options, indexes: indexes.map(normalize_indexes) })
    }

    /// Equal for equal metadata (the source sends a collection's metadata again only when
    /// this changed).
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bson::to_vec(&self.to_document()).unwrap_or_default().hash(&mut h);
        h.finish()
    }

    /// The index named `name`.
    pub fn index(&self, name: &str) -> Option<&Document> {
        self.indexes.as_ref()?.iter().find(|ix| index_name(ix) == name)
    }
}

/// An index's name (`""` when it has none).
pub fn index_name(ix: &Document) -> &str {
    ix.get_str("name").unwrap_or("")
}

/// The name of the index every collection has.
pub const ID_INDEX: &str = "_id_";

/// An index as compared and created: without the fields that describe the listing, not
/// the index (`v`, the version the server chose; `ns`, listed by old servers) or that the
/// server ignores (`background`).
pub fn normalize_index(mut ix: Document) -> Document {
    for field in ["v", "ns", "background"] {
        ix.remove(field);
    }
    ix
}

fn normalize_indexes(list: Vec<Document>) -> Vec<Document> {
    let mut list: Vec<Document> = list.into_iter().map(normalize_index).collect();
    list.sort_by(|a, b| index_name(a).cmp(index_name(b)));
    list
}

/// Two BSON values are the same metadata: numbers by value (a server may list
/// `expireAfterSeconds: 3600` as int32 or int64), documents field by field in any order,
/// except where order means something (an index's `key`: see [`same_index`]).
pub fn same_value(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Document(x), Bson::Document(y)) => same_document(x, y),
        (Bson::Array(x), Bson::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q)),
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
    }
}

/// Documents with the same fields and values, in any order.
pub fn same_document(x: &Document, y: &Document) -> bool {
    x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
}

/// Two indexes are the same index: the same fields, and the same `key` in the same order.
pub fn same_index(a: &Document, b: &Document) -> bool {
    let (a, b) = (normalize_index(a.clone()), normalize_index(b.clone()));
    let keys_in_order = match (a.get_document("key"), b.get_document("key")) {
        (Ok(x), Ok(y)) => x.len() == y.len() && x.iter().zip(y.iter()).all(|((kx, vx), (ky, vy))| kx == ky && same_value(vx, vy)),
        _ => false,
    };
    keys_in_order && same_document(&a, &b)
}

fn number(b: &Bson) -> Option<f64> {
    match b {
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing() -> Document {
        doc! {"name": "orders", "type": "collection", "options": {"validator": {"a": {"$exists": true}}, "collation": {"locale": "fr"}}, "info": {"readOnly": false}}
    }

    #[test]
    fn round_trips_through_its_document() {
        let indexes = vec![doc! {"v": 2, "key": {"b": 1}, "name": "b_1", "unique": true}, doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}];
        let m = CollectionMetadata::from_listing("shop", &listing(), Some(indexes)).unwrap();
        assert_eq!(m.ns, Namespace::new("shop", "orders"));
        assert_eq!(m.kind, Kind::Collection);
        // Sorted by name, `v` left out.
        assert_eq!(m.indexes.as_ref().unwrap()[0], doc! {"key": {"_id": 1}, "name": "_id_"});
        assert_eq!(CollectionMetadata::from_document(&m.to_document()).unwrap(), m);
        let options_only = CollectionMetadata { indexes: None, ..m.clone() };
        assert_eq!(CollectionMetadata::from_document(&options_only.to_document()).unwrap(), options_only);
        assert_ne!(options_only.digest(), m.digest());
    }

    #[test]
    fn numbers_compare_by_value_and_keys_by_order() {
        assert!(same_value(&Bson::Int32(3600), &Bson::Int64(3600)));
        assert!(same_document(&doc! {"a": 1, "b": "x"}, &doc! {"b": "x", "a": 1i64}));
        assert!(!same_document(&doc! {"a": 1}, &doc! {"a": 1, "b": 2}));
        let ab = doc! {"key": {"a": 1, "b": -1}, "name": "ab"};
        let ba = doc! {"key": {"b": -1, "a": 1}, "name": "ab"};
        assert!(!same_index(&ab, &ba), "a compound key's order is the index");
        assert!(same_index(&ab, &doc! {"name": "ab", "v": 2, "key": {"a": 1.0, "b": -1}}));
        assert!(!same_index(&ab, &doc! {"key": {"a": 1, "b": -1}, "name": "ab", "sparse": true}));
    }

    #[test]
    fn unreadable_documents_say_what_is_wrong() {
        let err = CollectionMetadata::from_document(&doc! {"db": "a", "type": "collection"}).unwrap_err();
        assert!(err.to_string().contains("`coll`"), "{err}");
        let err = CollectionMetadata::from_document(&doc! {"db": "a", "coll": "b", "type": "collection", "indexes": 3}).unwrap_err();
        assert!(err.to_string().contains("indexes"), "{err}");
    }
}
