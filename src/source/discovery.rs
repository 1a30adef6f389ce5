//! Finding what to read: the databases (`source.database`, `source.databases`, or every
//! user database of the cluster), their collections in scope, and whether each database
//! is read through one stream or one per collection.

use tracing::warn;

use super::checkpoint::CheckpointStore;
use super::errors::{classify_error, ReaderError, StreamFailure};
use super::scope::{is_rename_temporary, NamespaceFilter, Scope};
use super::{database, DatabaseSelection, SourceConfig, StreamLevel, NEVER_REPLICATED};
use crate::flavor::Flavor;
use crate::metadata::{CollectionMetadata, Kind};

/// The databases to read now: the configured ones, or (`["*"]`) every database of the
/// cluster but `admin`, `local`, `config`, docrepl's own state database and those no
/// `source.include` pattern can match.
pub async fn databases_to_read(client: &mongodb::Client, src: &SourceConfig) -> anyhow::Result<Vec<String>> {
    match src.database_selection() {
        DatabaseSelection::Named(dbs) => Ok(dbs),
        DatabaseSelection::Every => {
            let filter = NamespaceFilter::new(&src.include, &src.exclude)?;
            Ok(client
                .list_database_names()
                .await?
                .into_iter()
                .filter(|db| !NEVER_REPLICATED.contains(&db.as_str()) && !src.state_lives_in(db) && filter.may_include_database(db))
                .collect())
        }
    }
}

/// The collections of `db` to read: the configured list, or every collection in scope
/// (see `scope`).
pub async fn collections_to_read(client: &mongodb::Client, src: &SourceConfig, db: &str) -> anyhow::Result<Vec<String>> {
    let scope = Scope::of(src, db);
    if !src.collections.is_empty() {
        return Ok(src.collections.iter().filter(|n| scope.includes(n)).cloned().collect());
    }
    let mut names = Vec::new();
    for meta in crate::metadata::catalog::read_database(client, db, None, false).await? {
        if scope.includes(&meta.ns.coll) && !is_rename_temporary(&meta.ns.coll) && replicated_kind(&meta)? {
            names.push(meta.ns.coll);
        }
    }
    Ok(names)
}

/// True for a collection (copied and streamed), false for a view (no documents of its
/// own: a database stream sends its definition); a time-series collection in scope is
/// refused, since change streams do not report its changes.
pub(super) fn replicated_kind(meta: &CollectionMetadata) -> Result<bool, ReaderError> {
    match &meta.kind {
        Kind::Collection => Ok(true),
        Kind::Timeseries => Err(ReaderError::CannotReplicate {
            ns: meta.ns.to_string(),
            kind: "time-series collection".into(),
            why: "change streams do not report the changes of a time-series collection, so its replica would silently stop changing".into(),
        }),
        Kind::View | Kind::Other(_) => Ok(false),
    }
}

/// How the source is read, and why.
#[derive(Debug, Clone)]
pub enum Level {
    Database(String),
    Collection(String),
}

impl Level {
    pub fn describe(&self, db: &str) -> String {
        match self {
            Level::Database(why) => format!("one change stream for database {db} ({why})"),
            Level::Collection(why) => format!("one change stream per collection ({why})"),
        }
    }
}

/// `db`'s `source.stream_level`, and for `auto` a probe: a database stream is opened (and
/// closed) once; where the server refuses it (DocumentDB before `modifyChangeStreams`
/// for the database), each collection gets its own stream. Only a refusal falls back: any
/// other error stops the start, since collection readers would go on from positions of
/// their own (older than the database's, if it was read as a whole before).
pub async fn stream_level(client: &mongodb::Client, src: &SourceConfig, db: &str, flavor: Flavor, state: &CheckpointStore) -> anyhow::Result<Level> {
    match src.stream_level {
        StreamLevel::Collection => return Ok(Level::Collection("source.stream_level = \"collection\"".into())),
        // Its reader's own errors say what to do (`NotEnabled` names the command).
        StreamLevel::Database => return Ok(Level::Database("source.stream_level = \"database\"".into())),
        StreamLevel::Auto => {}
    }
    // The scope filter alone: the pipeline's own stages have their own fallback.
    let refusal = match client.database(db).watch().pipeline([Scope::of(src, db).match_stage()]).selection_criteria(crate::mongo::primary()).await {
        Ok(_) => return Ok(Level::Database("source.stream_level = \"auto\": the server opened a database stream".into())),
        Err(e) => match classify_error(&e, flavor) {
            StreamFailure::NotEnabled | StreamFailure::LostOrNotEnabled | StreamFailure::UnsupportedPipeline => e,
            _ => anyhow::bail!("cannot open a change stream on the source database {db}: {e}; check source.uri and that the source is a replica set"),
        },
    };
    let enable = format!("db.adminCommand({{modifyChangeStreams: 1, database: \"{db}\", collection: \"\", enable: true}})");
    if state.load(&database::unit_name(db)).await.ok().flatten().is_some() {
        anyhow::bail!("database {db} was read through one database stream before, and the source now refuses that stream: {refusal}. Enable it again ({enable} on Amazon DocumentDB), or set source.stream_level = \"collection\" to read each collection from its own saved position (older ones than the database's: changes may be sent again, or found lost)");
    }
    warn!(database = %db, "the source refused a change stream on the whole database ({refusal}): reading one change stream per collection instead (on Amazon DocumentDB, {enable} enables the database's stream)");
    Ok(Level::Collection(format!("source.stream_level = \"auto\": the server refused a database stream: {refusal}")))
}

