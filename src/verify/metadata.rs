//! `docrepl verify`'s metadata half: each namespace's options and indexes on the source
//! and on the target, compared under the cutover rule (see `metadata::rule`: a unique or
//! TTL index may still be in its replicating form), each difference reported.

use crate::event::Namespace;
use crate::metadata::{catalog, plan, CollectionMetadata, Kind};
use crate::sink::SinkConfig;
use crate::source::scope::Scope;
use crate::source::SourceConfig;

/// What differs for one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    pub namespace: String,
    pub differences: Vec<String>,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}: METADATA DRIFT ({} differences)", self.namespace, self.differences.len())?;
        for d in &self.differences {
            writeln!(f, "  {d}")?;
        }
        Ok(())
    }
}

/// The source's collections and views of `databases` in scope (`only`: just those
/// namespaces), with their indexes.
pub async fn source_metadata(client: &mongodb::Client, src: &SourceConfig, databases: &[String], only: Option<&[Namespace]>) -> anyhow::Result<Vec<CollectionMetadata>> {
    let mut out = Vec::new();
    for db in databases {
        let scope = Scope::of(src, db);
        for meta in catalog::read_database(client, db, None, true).await? {
            let named = only.is_none_or(|only| only.contains(&meta.ns));
            let kind_ok = matches!(meta.kind, Kind::Collection | Kind::View);
            if named && kind_ok && scope.includes(&meta.ns.coll) && !crate::source::scope::is_rename_temporary(&meta.ns.coll) {
                out.push(meta);
            }
        }
    }
    Ok(out)
}

/// The drift of each namespace of `source` on the target (`finalised`: after cutover,
/// only the source's exact form counts).
pub async fn drifts(target: &mongodb::Client, sink: &SinkConfig, source: &[CollectionMetadata], finalised: bool) -> anyhow::Result<Vec<Drift>> {
    let mut out = Vec::new();
    for meta in source {
        let target_ns = sink.target_namespace(&meta.ns);
        let actual = catalog::read_one(target, &target_ns.db, &target_ns.coll, true).await?;
        let differences = plan::drift(meta, actual.as_ref(), finalised);
        if !differences.is_empty() {
            out.push(Drift { namespace: meta.ns.to_string(), differences });
        }
    }
    Ok(out)
}
