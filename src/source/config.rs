//! The `[source]` section: which cluster, database and collections to read, and how.

use serde::Deserialize;

use crate::config::{require_at_least, validate_mongo_uri, ConfigError};
use crate::flavor::{Flavor, FlavorSetting};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Connection string of the source cluster (DocumentDB: add `tls=true&tlsCAFile=…&retryWrites=false`).
    pub uri: String,
    /// A file holding the password of the URI's user (a mounted Kubernetes secret), read
    /// at start; the URI then names the user only. Not with `password_env`.
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// An environment variable holding that password (set from a secret).
    #[serde(default)]
    pub password_env: Option<String>,
    /// What the source cluster is: `auto` (from its host names), `mongodb` or
    /// `documentdb`. Decides the change-stream pipeline and error handling (see `flavor`).
    #[serde(default)]
    pub flavor: FlavorSetting,
    /// The database to replicate (or `databases`).
    #[serde(default)]
    pub database: Option<String>,
    /// The databases to replicate, or `["*"]` for every user database of the cluster
    /// (databases created later included); not with `database`.
    #[serde(default)]
    pub databases: Vec<String>,
    /// Collections to replicate, with one `database`; empty (the default) means every
    /// collection, including ones created later.
    #[serde(default)]
    pub collections: Vec<String>,
    /// `db.coll` glob patterns (`*`, `?`, `[abc]`, `{a,b}`; `*` also crosses a `.`): when
    /// given, only matching namespaces are replicated.
    #[serde(default)]
    pub include: Vec<String>,
    /// `db.coll` glob patterns never replicated (they win over `include`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Copy the existing documents (`op: r`) before streaming changes, when a collection
    /// has no saved resume token.
    #[serde(default = "yes")]
    pub initial_copy: bool,
    /// Documents per batch in the initial copy.
    #[serde(default = "default_copy_batch")]
    pub copy_batch_size: u32,
    /// Initial copies running at once in this process (each reads one collection).
    #[serde(default = "default_copy_parallelism")]
    pub copy_parallelism: usize,
    /// One change stream for the whole database (`database`), one per collection
    /// (`collection`), or `auto` (default): the database's stream where the server opens
    /// it (DocumentDB only after `modifyChangeStreams` for the database), else one per
    /// collection. `/status` says which is in use.
    #[serde(default)]
    pub stream_level: StreamLevel,
    /// What an update event carries, as Debezium's `capture.mode` names it (see
    /// `CaptureMode`).
    #[serde(default)]
    pub capture_mode: CaptureMode,
    /// What to do when the saved resume token is no longer in the change stream history.
    #[serde(default)]
    pub on_history_lost: HistoryLostPolicy,
    /// Send a tombstone (null value) after each delete, for log compaction.
    #[serde(default = "yes")]
    pub tombstones: bool,
    /// What to do with an event larger than `kafka.max_message_bytes`.
    #[serde(default)]
    pub on_oversize: OversizePolicy,
    /// What a drop, rename or dropDatabase of a source collection does to the target.
    #[serde(default)]
    pub ddl: DdlPolicy,
    /// `[source.metadata]`: collection options and indexes follow the source.
    #[serde(default)]
    pub metadata: super::metadata::MetadataConfig,
    /// The logical server name written to `source.name` (Debezium's `topic.prefix`).
    /// Default: `kafka.topic_prefix`.
    #[serde(default)]
    pub name: Option<String>,
    /// How often an idle reader sends a heartbeat to every partition of its topics, so
    /// that the sinks' recovery point and lag keep moving (0: never).
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    /// How often resume tokens are saved (after Kafka acknowledged the events before them).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval_ms: u64,
    /// Where checkpoints and leases live. Default: the `docrepl` database of the source cluster.
    #[serde(default)]
    pub state: StateStoreConfig,
    /// How long a reader's lease on a collection lasts without renewal.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_ms: u64,
    /// The name this instance uses in leases; default `<hostname>-<pid>`.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// How many hours of change history the source keeps. Needed on DocumentDB (its
    /// `change_stream_log_retention_duration`); on MongoDB the oplog's span is measured.
    #[serde(default)]
    pub history_retention_hours: Option<f64>,
    /// Where a collection without a checkpoint starts streaming when `initial_copy =
    /// false`: a cluster time `"<seconds>.<increment>"`. Default: the cluster's time when
    /// its reader starts. `docrepl reverse` sets it to the point `docrepl cutover`
    /// recorded, so the writes made between the cutover and the reversal are sent too.
    #[serde(default, deserialize_with = "cluster_time")]
    pub start_at: Option<bson::Timestamp>,
}

/// `"1765000000.7"` → the cluster time (seconds, increment).
fn cluster_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bson::Timestamp>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else { return Ok(None) };
    parse_cluster_time(&text).map(Some).map_err(serde::de::Error::custom)
}

fn parse_cluster_time(text: &str) -> Result<bson::Timestamp, String> {
    let bad = || format!("{text:?} is not a cluster time: expected \"<seconds>.<increment>\", e.g. \"1765000000.7\"");
    let (time, increment) = text.split_once('.').ok_or_else(bad)?;
    Ok(bson::Timestamp { time: time.parse().map_err(|_| bad())?, increment: increment.parse().map_err(|_| bad())? })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateStoreConfig {
    /// Connection string of the cluster that keeps checkpoints and leases; default: `source.uri`.
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default = "default_state_db")]
    pub database: String,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HistoryLostPolicy {
    /// Stop the reader with an error naming the collection and the token's age.
    #[default]
    Fail,
    /// Start a fresh initial copy of the collection.
    Recopy,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OversizePolicy {
    /// Send the key and the reason (not the document) to the dead-letter topic, and go on.
    #[default]
    DeadLetter,
    /// Stop the reader with an error naming the `_id`.
    Fail,
}

/// Databases never replicated, whatever the config says.
pub const NEVER_REPLICATED: [&str; 3] = ["admin", "local", "config"];

/// Which databases a source reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseSelection {
    Named(Vec<String>),
    /// Every database of the cluster but `admin`, `local`, `config` and docrepl's state.
    Every,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StreamLevel {
    #[default]
    Auto,
    Database,
    Collection,
}

/// What an update event carries, with Debezium's names for its `capture.mode`.
/// `change_streams_update_full` (default): the document as it is after the update in
/// `after` (the server looks it up for each update event: `fullDocument: updateLookup`)
/// beside the patch in `updateDescription`. `change_streams`: the patch alone, `after`
/// null: the source cluster does no lookup per update (the largest cost of an update's
/// replication on a MongoDB source), and the sink applies the patch to the document it
/// holds. For consumers that need only docrepl's sink, or Debezium's patch events.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMode {
    #[default]
    ChangeStreamsUpdateFull,
    ChangeStreams,
}

/// `ignore` (default): reported (log, metric), the target keeps its documents.
/// `replicate`: the target collection is emptied (clear markers); a renamed collection
/// inside the replicated set is copied under its new name like any new collection.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DdlPolicy {
    #[default]
    Ignore,
    Replicate,
}

fn yes() -> bool {
    true
}
fn default_copy_batch() -> u32 {
    2000
}
fn default_copy_parallelism() -> usize {
    4
}
fn default_heartbeat() -> u64 {
    10_000
}
fn default_checkpoint_interval() -> u64 {
    1000
}
fn default_lease_ttl() -> u64 {
    12_000
}
fn default_state_db() -> String {
    "docrepl".into()
}

impl Default for StateStoreConfig {
    fn default() -> Self {
        StateStoreConfig { uri: None, database: default_state_db() }
    }
}

impl SourceConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_mongo_uri("source.uri", &self.uri)?;
        if let Some(uri) = &self.state.uri {
            validate_mongo_uri("source.state.uri", uri)?;
        }
        match (&self.database, self.databases.as_slice()) {
            (Some(_), [_, ..]) => return Err(ConfigError::invalid("source.databases", "set either source.database or source.databases, not both")),
            (None, []) => return Err(ConfigError::invalid("source.database", "set source.database = \"app\", or source.databases = [\"app\", \"billing\"] (or [\"*\"] for every database)")),
            (Some(db), []) => validate_db_name("source.database", db)?,
            (None, all) if all.iter().any(|d| d == "*") && all.len() > 1 => {
                return Err(ConfigError::invalid("source.databases", "\"*\" means every database: give it alone"))
            }
            (None, all) => {
                for (i, db) in all.iter().enumerate().filter(|(_, d)| *d != "*") {
                    validate_db_name(&format!("source.databases[{i}]"), db)?;
                    if NEVER_REPLICATED.contains(&db.as_str()) {
                        return Err(ConfigError::invalid(format!("source.databases[{i}]"), format!("{db:?} is a system database and is never replicated")));
                    }
                }
            }
        }
        if !self.collections.is_empty() && self.database.is_none() {
            return Err(ConfigError::invalid("source.collections", "names collections of one source.database; with source.databases, use source.include = [\"db.coll\", ...]"));
        }
        super::scope::NamespaceFilter::new(&self.include, &self.exclude)?;
        validate_db_name("source.state.database", &self.state.database)?;
        for (i, c) in self.collections.iter().enumerate() {
            if c.is_empty() || c.starts_with("system.") || c.contains('$') {
                return Err(ConfigError::invalid(
                    format!("source.collections[{i}]"),
                    format!("{c:?} is not a collection that can be replicated"),
                ));
            }
        }
        if self.start_at.is_some() && self.initial_copy {
            return Err(ConfigError::invalid("source.start_at", "starts the stream at a point in the past instead of copying: set source.initial_copy = false with it"));
        }
        require_at_least("source.copy_batch_size", self.copy_batch_size, 1)?;
        require_at_least("source.copy_parallelism", self.copy_parallelism, 1)?;
        require_at_least("source.checkpoint_interval_ms", self.checkpoint_interval_ms, 10)?;
        require_at_least("source.lease_ttl_ms", self.lease_ttl_ms, 2000)?;
        require_at_least("source.metadata.poll_secs", self.metadata.poll_secs, 1)?;
        if self.heartbeat_ms != 0 && self.heartbeat_ms < 100 {
            return Err(ConfigError::invalid("source.heartbeat_ms", "must be 0 (no heartbeats) or at least 100"));
        }
        if let Some(h) = self.history_retention_hours {
            if !(h > 0.0 && h.is_finite()) {
                return Err(ConfigError::invalid("source.history_retention_hours", format!("{h} is not a positive number of hours")));
            }
        }
        Ok(())
    }

    /// The databases to read, as configured.
    pub fn database_selection(&self) -> DatabaseSelection {
        match &self.database {
            Some(db) => DatabaseSelection::Named(vec![db.clone()]),
            None if self.databases.iter().any(|d| d == "*") => DatabaseSelection::Every,
            None => DatabaseSelection::Named(self.databases.clone()),
        }
    }

    /// True when docrepl's state database is `db` on the source cluster.
    pub fn state_lives_in(&self, db: &str) -> bool {
        self.state.database == db && self.state.uri.as_ref().is_none_or(|u| u == &self.uri)
    }

    pub fn state_uri(&self) -> &str {
        self.state.uri.as_deref().unwrap_or(&self.uri)
    }

    /// The source cluster's flavour and why it was chosen.
    pub fn flavor(&self) -> (Flavor, &'static str) {
        crate::flavor::resolve(self.flavor, &self.uri)
    }

    /// The state cluster's flavour: the source's when the state lives there, else
    /// judged from its own URI (an explicit `documentdb` covers both).
    pub fn state_flavor(&self) -> Flavor {
        match &self.state.uri {
            Some(uri) if uri != &self.uri && self.flavor == FlavorSetting::Auto => crate::flavor::resolve(FlavorSetting::Auto, uri).0,
            _ => self.flavor().0,
        }
    }

}

pub fn validate_db_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 63 || name.contains(['/', '\\', '.', ' ', '"', '$']) {
        return Err(ConfigError::invalid(key, format!("{name:?} is not a valid database name")));
    }
    Ok(())
}
