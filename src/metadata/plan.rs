//! Comparing a namespace's metadata on the source with what the target has: the steps
//! that make the target match (the sink), what `docrepl cutover` still has to add, and
//! the drift `docrepl verify` reports. Pure: the callers list and run the commands.

use bson::{doc, Bson, Document};

use super::rule::{self, Deferred};
use super::{index_name, same_index, same_value, CollectionMetadata, Kind, ID_INDEX};

/// The value of an option that is not set.
type Unset = fn() -> Bson;

/// Options the target can change in place (`collMod`), with the value that stands for
/// "not set". The rest (collation, `capped`, a clustered index, storage options) are fixed
/// when the collection is created.
const MUTABLE_OPTIONS: [(&str, Option<Unset>); 6] = [
    ("validator", Some(|| Bson::Document(Document::new()))),
    ("validationLevel", Some(|| Bson::String("strict".into()))),
    ("validationAction", Some(|| Bson::String("error".into()))),
    ("changeStreamPreAndPostImages", Some(|| Bson::Document(doc! {"enabled": false}))),
    ("viewOn", None),
    ("pipeline", None),
];

/// How `collMod` names a capped collection's limits (`listCollections` says `size`, `max`).
const CAPPED_LIMITS: [(&str, &str); 2] = [("size", "cappedSize"), ("max", "cappedMax")];

/// What the target needs to match the source's metadata (while replicating: see `rule`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetPlan {
    /// The target lacks the namespace: create it with these options (a view's include
    /// `viewOn` and `pipeline`).
    pub create: Option<Document>,
    /// Options to change in place (`collMod` fields); empty: none.
    pub coll_mod: Document,
    /// Differences that cannot be changed in place: the target collection would have to be
    /// created anew (reported, never silently left).
    pub refused: Vec<String>,
    pub drop_indexes: Vec<String>,
    pub create_indexes: Vec<Document>,
    /// Indexes that differ only in `hidden`: `collMod` hides or unhides them.
    pub hide: Vec<(String, bool)>,
}

impl TargetPlan {
    pub fn is_empty(&self) -> bool {
        self.create.is_none() && self.coll_mod.is_empty() && self.refused.is_empty() && self.drop_indexes.is_empty() && self.create_indexes.is_empty() && self.hide.is_empty()
    }
}

/// The value of option `key`, with its default when it is not set.
fn effective(options: &Document, key: &str, default: Option<Unset>) -> Option<Bson> {
    options.get(key).cloned().or_else(|| default.map(|d| d()))
}

/// The options the source has that the target lacks or has otherwise, each as
/// (key, source's value, target's value); `None` stands for "not set".
fn option_differences(source: &Document, target: &Document) -> Vec<(String, Option<Bson>, Option<Bson>)> {
    let mut keys: Vec<&String> = source.keys().chain(target.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let default = MUTABLE_OPTIONS.iter().find(|(k, _)| k == key).and_then(|(_, d)| *d);
            let (s, t) = (effective(source, key, default), effective(target, key, default));
            let same = match (&s, &t) {
                (Some(a), Some(b)) => same_value(a, b),
                (None, None) => true,
                _ => false,
            };
            (!same).then(|| (key.clone(), s, t))
        })
        .collect()
}

/// The steps that make `actual` (the target's metadata, `None` when the namespace is
/// missing there) carry `source` as the rule says a replicating target does.
pub fn plan(source: &CollectionMetadata, actual: Option<&CollectionMetadata>) -> TargetPlan {
    let want = rule::replicating(source);
    let mut plan = TargetPlan::default();
    let Some(actual) = actual else {
        plan.create = Some(want.options.clone());
        plan.create_indexes = want.indexes.iter().flatten().filter(|ix| index_name(ix) != ID_INDEX).cloned().collect();
        return plan;
    };
    if actual.kind != source.kind {
        plan.refused.push(format!("the source has a {} where the target has a {}", source.kind.name(), actual.kind.name()));
        return plan;
    }
    for (key, s, _) in option_differences(&want.options, &actual.options) {
        let capped_limit = CAPPED_LIMITS.iter().find(|(listed, _)| *listed == key).map(|(_, coll_mod)| *coll_mod);
        match (MUTABLE_OPTIONS.iter().find(|(k, _)| *k == key), capped_limit, s) {
            (Some((_, default)), _, s) => {
                if let Some(value) = s.or_else(|| default.map(|d| d())) {
                    plan.coll_mod.insert(key, value);
                }
            }
            (None, Some(coll_mod), Some(value)) if source.kind == Kind::Collection => {
                plan.coll_mod.insert(coll_mod, value);
            }
            (None, _, _) => plan.refused.push(format!("option `{key}` differs and is fixed when a collection is created")),
        }
    }
    // A view's definition changes as a whole.
    if plan.coll_mod.contains_key("viewOn") || plan.coll_mod.contains_key("pipeline") {
        for key in ["viewOn", "pipeline"] {
            if let Some(v) = want.options.get(key) {
                plan.coll_mod.insert(key, v.clone());
            }
        }
    }
    let (Some(wanted), Some(have)) = (&source.indexes, &actual.indexes) else { return plan };
    for ix in wanted.iter().filter(|ix| index_name(ix) != ID_INDEX) {
        let target_form = rule::replicating_index(ix);
        match have.iter().find(|a| index_name(a) == index_name(ix)) {
            Some(a) if rule::index_matches(ix, a) => {}
            Some(a) if differs_only_in_hidden(&target_form, a) => {
                plan.hide.push((index_name(ix).to_string(), target_form.get_bool("hidden").unwrap_or(false)));
            }
            Some(_) => {
                plan.drop_indexes.push(index_name(ix).to_string());
                plan.create_indexes.push(target_form);
            }
            None => plan.create_indexes.push(target_form),
        }
    }
    for a in have.iter().filter(|a| index_name(a) != ID_INDEX) {
        if !wanted.iter().any(|ix| index_name(ix) == index_name(a)) {
            plan.drop_indexes.push(index_name(a).to_string());
        }
    }
    plan
}

fn differs_only_in_hidden(a: &Document, b: &Document) -> bool {
    let strip = |d: &Document| {
        let mut d = d.clone();
        d.remove("hidden");
        d
    };
    same_index(&strip(a), &strip(b))
}

/// One step of `docrepl cutover` on one index or collection.
#[derive(Debug, Clone, PartialEq)]
pub enum Finalise {
    MakeUnique { index: String },
    IndexExpiry { index: String, seconds: Bson },
    /// A clustered collection's own `expireAfterSeconds`.
    CollectionExpiry { seconds: Bson },
}

/// What cutover must still add to the target (`actual`) for it to carry the source's
/// unique and TTL indexes as the source has them. Indexes missing on the target are drift
/// (see [`drift`]), not steps.
pub fn finalise(source: &CollectionMetadata, actual: &CollectionMetadata) -> Vec<Finalise> {
    let mut steps = Vec::new();
    if let Some(seconds) = source.options.get("expireAfterSeconds") {
        if !actual.options.get("expireAfterSeconds").is_some_and(|t| same_value(t, seconds)) {
            steps.push(Finalise::CollectionExpiry { seconds: seconds.clone() });
        }
    }
    for ix in source.indexes.iter().flatten() {
        let Some(a) = actual.index(index_name(ix)) else { continue };
        for d in rule::deferred(ix) {
            match d {
                Deferred::Unique if !a.get_bool("unique").unwrap_or(false) => steps.push(Finalise::MakeUnique { index: index_name(ix).to_string() }),
                Deferred::ExpireAfterSeconds(seconds) if !a.get("expireAfterSeconds").is_some_and(|t| same_value(t, &seconds)) => {
                    steps.push(Finalise::IndexExpiry { index: index_name(ix).to_string(), seconds })
                }
                _ => {}
            }
        }
    }
    steps
}

/// How the target's metadata differs from the source's, one line per difference.
/// `finalised`: after cutover the target must carry the source's exact form; before it,
/// the replicating form (see `rule`) counts as equal too.
pub fn drift(source: &CollectionMetadata, target: Option<&CollectionMetadata>, finalised: bool) -> Vec<String> {
    let Some(target) = target else { return vec![format!("the {} is missing on the target", source.kind.name())] };
    let mut out = Vec::new();
    if source.kind != target.kind {
        out.push(format!("the source has a {}, the target a {}", source.kind.name(), target.kind.name()));
        return out;
    }
    let (mut source_options, mut target_options) = (source.options.clone(), target.options.clone());
    if !finalised && source.options.contains_key("expireAfterSeconds") {
        // Waits for cutover (either form is right); a target expiry of its own is drift.
        source_options.remove("expireAfterSeconds");
        target_options.remove("expireAfterSeconds");
    }
    for (key, s, t) in option_differences(&source_options, &target_options) {
        out.push(format!("option `{key}`: source {}, target {}", show(s.as_ref()), show(t.as_ref())));
    }
    let (Some(wanted), Some(have)) = (&source.indexes, &target.indexes) else { return out };
    for ix in wanted {
        match have.iter().find(|a| index_name(a) == index_name(ix)) {
            None => out.push(format!("index {} is missing on the target (source: {})", index_name(ix), show_doc(ix))),
            Some(a) => {
                let equal = if finalised { same_index(ix, a) } else { rule::index_matches(ix, a) };
                if !equal {
                    out.push(format!("index {} differs: source {}, target {}", index_name(ix), show_doc(ix), show_doc(a)));
                }
            }
        }
    }
    for a in have {
        if !wanted.iter().any(|ix| index_name(ix) == index_name(a)) {
            out.push(format!("index {} is on the target only ({})", index_name(a), show_doc(a)));
        }
    }
    out
}

fn show(v: Option<&Bson>) -> String {
    v.map_or("not set".into(), |v| v.clone().into_relaxed_extjson().to_string())
}

fn show_doc(d: &Document) -> String {
    Bson::Document(d.clone()).into_relaxed_extjson().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Namespace;

    fn meta(options: Document, indexes: Vec<Document>) -> CollectionMetadata {
        let mut all = vec![doc! {"key": {"_id": 1}, "name": "_id_"}];
        all.extend(indexes);
        CollectionMetadata { ns: Namespace::new("d", "c"), kind: Kind::Collection, options, indexes: Some(all) }
    }

    fn email() -> Document {
        doc! {"key": {"email": 1}, "name": "email_1", "unique": true}
    }

    #[test]
    fn a_missing_collection_is_created_with_its_options_and_replicating_indexes() {
        let source = meta(doc! {"collation": {"locale": "fr"}, "capped": true, "size": 4096}, vec![email()]);
        let p = plan(&source, None);
        assert_eq!(p.create, Some(doc! {"collation": {"locale": "fr"}, "capped": true, "size": 4096}));
        assert_eq!(p.create_indexes, vec![doc! {"key": {"email": 1}, "name": "email_1"}]);
    }

    #[test]
    fn indexes_are_created_dropped_rebuilt_and_hidden_as_the_source_says() {
        let source = meta(doc! {}, vec![email(), doc! {"key": {"a": 1}, "name": "a_1", "hidden": true}, doc! {"key": {"b": 1}, "name": "b_1", "sparse": true}]);
        let target = meta(doc! {}, vec![doc! {"key": {"a": 1}, "name": "a_1"}, doc! {"key": {"b": 1}, "name": "b_1"}, doc! {"key": {"z": 1}, "name": "z_1"}]);
        let p = plan(&source, Some(&target));
        assert_eq!(p.hide, vec![("a_1".to_string(), true)]);
        assert_eq!(p.drop_indexes, vec!["b_1".to_string(), "z_1".to_string()]);
        assert_eq!(p.create_indexes, vec![doc! {"key": {"email": 1}, "name": "email_1"}, doc! {"key": {"b": 1}, "name": "b_1", "sparse": true}]);
        assert!(p.refused.is_empty() && p.coll_mod.is_empty());
        // A target that already matches (in either form) needs nothing.
        assert!(plan(&source, Some(&source)).is_empty());
        assert!(plan(&source, Some(&rule::replicating(&source))).is_empty());
    }

    #[test]
    fn options_change_in_place_or_are_refused() {
        let source = meta(doc! {"validator": {"a": {"$type": "int"}}, "validationLevel": "moderate", "collation": {"locale": "fr"}}, vec![]);
        let target = meta(doc! {"collation": {"locale": "en"}}, vec![]);
        let p = plan(&source, Some(&target));
        assert_eq!(p.coll_mod, doc! {"validationLevel": "moderate", "validator": {"a": {"$type": "int"}}});
        assert_eq!(p.refused.len(), 1, "{:?}", p.refused);
        assert!(p.refused[0].contains("collation"));
        // A validator removed on the source is removed on the target.
        let p = plan(&meta(doc! {}, vec![]), Some(&meta(doc! {"validator": {"a": 1}, "validationLevel": "strict", "validationAction": "error"}, vec![])));
        assert_eq!(p.coll_mod, doc! {"validator": {}});
        // Defaults stand for "not set".
        assert!(plan(&meta(doc! {}, vec![]), Some(&meta(doc! {"validator": {}, "validationLevel": "strict"}, vec![]))).is_empty());
        // Capped limits change through collMod's own names.
        let p = plan(&meta(doc! {"capped": true, "size": 8192}, vec![]), Some(&meta(doc! {"capped": true, "size": 4096}, vec![])));
        assert_eq!(p.coll_mod, doc! {"cappedSize": 8192});
    }

    #[test]
    fn cutover_adds_unique_and_expiry_once() {
        let ttl = doc! {"key": {"at": 1}, "name": "at_1", "expireAfterSeconds": 60};
        let source = meta(doc! {}, vec![email(), ttl.clone()]);
        let replicating = rule::replicating(&source);
        assert_eq!(
            finalise(&source, &replicating),
            vec![Finalise::MakeUnique { index: "email_1".into() }, Finalise::IndexExpiry { index: "at_1".into(), seconds: Bson::Int32(60) }]
        );
        assert!(finalise(&source, &source).is_empty());
    }

    #[test]
    fn drift_names_each_difference() {
        let source = meta(doc! {"validator": {"a": 1}}, vec![email(), doc! {"key": {"b": 1}, "name": "b_1"}]);
        let replicating = rule::replicating(&source);
        assert!(drift(&source, Some(&replicating), false).is_empty());
        let finalised = drift(&source, Some(&replicating), true);
        assert_eq!(finalised.len(), 1, "{finalised:?}");
        assert!(finalised[0].contains("email_1 differs"));
        let by_hand = meta(doc! {}, vec![email(), doc! {"key": {"c": 1}, "name": "c_1"}]);
        let d = drift(&source, Some(&by_hand), false);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].starts_with("option `validator`"));
        assert!(d[1].contains("b_1 is missing"));
        assert!(d[2].contains("c_1 is on the target only"));
        assert_eq!(drift(&source, None, false), vec!["the collection is missing on the target".to_string()]);
    }
}
