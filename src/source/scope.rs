//! What a source replicates: the `db.coll` namespaces that `source.collections`,
//! `source.include` and `source.exclude` let through, never `system.*`, mongod's
//! temporary rename collections or docrepl's own state. Pure logic, no I/O.

use std::collections::BTreeSet;
use std::sync::Arc;

use bson::{doc, Document};
use globset::{Glob, GlobSet, GlobSetBuilder};

use super::{SourceConfig, CHECKPOINTS, LEASES};
use crate::config::ConfigError;

/// `source.include` / `source.exclude`: glob patterns over `db.coll`.
#[derive(Debug, Clone)]
pub struct NamespaceFilter {
    include: Option<GlobSet>,
    /// The database part of each include pattern (before its first `.`).
    include_databases: Option<GlobSet>,
    exclude: GlobSet,
}

impl NamespaceFilter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, ConfigError> {
        let set = |key: &str, patterns: &[String]| -> Result<GlobSet, ConfigError> {
            if let Some((i, p)) = patterns.iter().enumerate().find(|(_, p)| !p.contains('.')) {
                return Err(ConfigError::invalid(format!("{key}[{i}]"), format!("{p:?} must match `db.coll` (e.g. \"app.*\" or \"*.audit_*\")")));
            }
            set_of(key, patterns)
        };
        let databases: Vec<String> = include.iter().filter_map(|p| p.split_once('.')).map(|(db, _)| db.to_string()).collect();
        Ok(NamespaceFilter {
            include: if include.is_empty() { None } else { Some(set("source.include", include)?) },
            include_databases: if include.is_empty() { None } else { Some(set_of("source.include", &databases)?) },
            exclude: set("source.exclude", exclude)?,
        })
    }

    /// False when no include pattern can match a collection of `db` (so `["*"]` need not
    /// read it at all).
    pub fn may_include_database(&self, db: &str) -> bool {
        self.include_databases.as_ref().is_none_or(|d| d.is_match(db))
    }

    pub fn allows(&self, db: &str, coll: &str) -> bool {
        let ns = format!("{db}.{coll}");
        self.include.as_ref().is_none_or(|i| i.is_match(&ns)) && !self.exclude.is_match(&ns)
    }
}

fn set_of(key: &str, patterns: &[String]) -> Result<GlobSet, ConfigError> {
    let mut builder = GlobSetBuilder::new();
    for (i, p) in patterns.iter().enumerate() {
        builder.add(Glob::new(p).map_err(|e| ConfigError::invalid(format!("{key}[{i}]"), format!("{p:?} is not a glob pattern: {e}")))?);
    }
    builder.build().map_err(|e| ConfigError::invalid(key, e.to_string()))
}

/// Which collections of one database a source replicates.
#[derive(Debug, Clone)]
pub struct Scope {
    db: String,
    kind: Kind,
    filter: Arc<NamespaceFilter>,
}

#[derive(Debug, Clone)]
enum Kind {
    /// `source.collections` (a set: every event is checked against it).
    Listed(BTreeSet<String>),
    /// Every collection but `system.*` and, when the state lives in this database,
    /// docrepl's own.
    Every { own: Vec<String> },
}

impl Scope {
    /// `db`'s scope under `src` (`source.include`/`exclude` were checked by `validate`).
    pub fn of(src: &SourceConfig, db: &str) -> Self {
        let filter = NamespaceFilter::new(&src.include, &src.exclude).unwrap_or_else(|_| NamespaceFilter { include: None, include_databases: None, exclude: GlobSet::empty() });
        let kind = if !src.collections.is_empty() {
            Kind::Listed(src.collections.iter().cloned().collect())
        } else {
            Kind::Every { own: if src.state_lives_in(db) { vec![CHECKPOINTS.into(), LEASES.into()] } else { Vec::new() } }
        };
        Scope { db: db.to_string(), kind, filter: Arc::new(filter) }
    }

    pub fn includes(&self, coll: &str) -> bool {
        let listed = match &self.kind {
            Kind::Listed(colls) => colls.contains(coll),
            Kind::Every { own } => !coll.starts_with("system.") && !is_rename_temporary(coll) && !own.iter().any(|c| c == coll),
        };
        listed && self.filter.allows(&self.db, coll)
    }

    /// The stream's first stage: the server leaves out what is outside the scope (above
    /// all docrepl's own checkpoint writes, which would otherwise come back as events;
    /// the patterns are applied by docrepl). Events that name no collection
    /// (dropDatabase, invalidate) pass. Only `$match` with `$in`, `$nin`, `$or` and
    /// `$exists`: Amazon DocumentDB takes these.
    pub fn match_stage(&self) -> Document {
        match &self.kind {
            Kind::Listed(colls) => {
                let colls: Vec<String> = colls.iter().cloned().collect();
                doc! {"$match": {"$or": [{"ns.coll": {"$in": colls}}, {"ns.coll": {"$exists": false}}]}}
            }
            Kind::Every { own } => doc! {"$match": {"ns.coll": {"$nin": own}}},
        }
    }
}

/// mongod renames a collection across databases by copying it into `tmpXXXXX.renameCollection`
/// in the destination database and renaming that: the rename brings the result in.
pub fn is_rename_temporary(coll: &str) -> bool {
    coll.starts_with("tmp") && coll.ends_with(".renameCollection")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(own: Vec<String>, include: &[&str], exclude: &[&str]) -> Scope {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let filter = NamespaceFilter::new(&strings(include), &strings(exclude)).unwrap();
        Scope { db: "app".into(), kind: Kind::Every { own }, filter: Arc::new(filter) }
    }

    #[test]
    fn scopes_leave_out_system_and_own_collections() {
        let every = every(vec![CHECKPOINTS.into(), LEASES.into()], &[], &[]);
        assert!(every.includes("orders"));
        assert!(!every.includes("system.views"));
        assert!(!every.includes(CHECKPOINTS));
        assert!(!every.includes("tmpAb12c.renameCollection"));
        assert_eq!(every.match_stage(), doc! {"$match": {"ns.coll": {"$nin": [CHECKPOINTS, LEASES]}}});
        let listed = Scope { db: "app".into(), kind: Kind::Listed(["a".to_string()].into()), filter: every.filter.clone() };
        assert!(listed.includes("a") && !listed.includes("b"));
    }

    #[test]
    fn include_and_exclude_patterns_match_db_dot_coll() {
        let scope = every(Vec::new(), &["app.order*", "app.users"], &["app.orders_tmp*"]);
        assert!(scope.includes("orders") && scope.includes("orders_2024") && scope.includes("users"));
        assert!(!scope.includes("orders_tmp1"), "exclude wins");
        assert!(!scope.includes("audit"), "not included");
        assert!(every(Vec::new(), &[], &["*.audit*"]).includes("orders"));
        assert!(!every(Vec::new(), &[], &["*.audit*"]).includes("audit_log"));
        let filter = NamespaceFilter::new(&["app.*".into(), "logs_*.x".into()], &[]).unwrap();
        assert!(filter.may_include_database("app") && filter.may_include_database("logs_1") && !filter.may_include_database("other"));
        assert!(NamespaceFilter::new(&["app".into()], &[]).is_err(), "a pattern without a dot");
        assert!(NamespaceFilter::new(&["app.[".into()], &[]).is_err(), "not a glob");
    }
}
