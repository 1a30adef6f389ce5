//! The `[pair]` section and the pure part of `docrepl reverse`: the names of a direction
//! and the configuration of the opposite one, computed from the file's TOML (no I/O).
//!
//! A pair is two clusters that replicate one way at a time; both directions share its
//! name (the direction lock's key, see `lock`). A direction's topics and sink group are
//! named `<pair.name>-<source region>`, so the two directions never read each other's
//! topics, and a direction used again after a round trip finds its own group's offsets
//! at the end of its own topics.

use serde::Deserialize;

use crate::config::ConfigError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairConfig {
    /// The name both directions share (the key of the direction lock in both clusters'
    /// state databases). Default: `kafka.topic_prefix`.
    #[serde(default)]
    pub name: Option<String>,
    /// The region of `[source]` (e.g. `eu-west-1`): names the reversed direction's topics
    /// and group. `docrepl reverse --source-region` when not set here.
    #[serde(default)]
    pub source_region: Option<String>,
    /// The region of `[sink]`.
    #[serde(default)]
    pub target_region: Option<String>,
    /// How many times `docrepl reverse` turned the pair around (it writes this key). A
    /// service whose trip is older than a cluster's record refuses to start: its config
    /// is from before the pair was turned around.
    #[serde(default)]
    pub trip: u32,
}

impl PairConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [("pair.name", &self.name), ("pair.source_region", &self.source_region), ("pair.target_region", &self.target_region)] {
            if let Some(v) = value {
                if !is_name(v) {
                    return Err(ConfigError::invalid(key, format!("{v:?} must be letters, digits, '-' or '_' (it becomes part of topic and group names)")));
                }
            }
        }
        if let (Some(a), Some(b)) = (&self.source_region, &self.target_region) {
            if a == b {
                return Err(ConfigError::invalid("pair.target_region", format!("{b:?} is also pair.source_region: the two sides of a pair are in different regions")));
            }
        }
        Ok(())
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Who a direction is: the pair, which trip, the regions (when known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Direction {
    pub pair: String,
    pub trip: u32,
    pub source_region: Option<String>,
    pub target_region: Option<String>,
}

impl Direction {
    pub fn of(config: &crate::config::Config) -> Direction {
        let pair = &config.pair;
        Direction {
            pair: pair.name.clone().unwrap_or_else(|| config.kafka.topic_prefix.clone()),
            trip: pair.trip,
            source_region: pair.source_region.clone(),
            target_region: pair.target_region.clone(),
        }
    }

    /// "eu → us (pair orders, trip 1)" for messages.
    pub fn describe(&self) -> String {
        let side = |r: &Option<String>, d: &str| r.clone().unwrap_or_else(|| d.to_string());
        format!("{} → {} (pair {}, trip {})", side(&self.source_region, "source"), side(&self.target_region, "target"), self.pair, self.trip)
    }
}

/// The topic prefix and the sink group of the direction that reads `source_region`.
pub fn direction_names(pair: &str, source_region: &str) -> (String, String) {
    let name = format!("{pair}-{source_region}");
    (name.clone(), name)
}

/// What `reverse` needs to know to write the opposite direction's file.
#[derive(Debug, Clone)]
pub struct Reversal {
    pub pair: String,
    /// The new direction's trip (the old one's plus one).
    pub trip: u32,
    /// The new source's region (the old target's).
    pub source_region: String,
    pub target_region: String,
    /// `source.start_at` of the new direction: where the cutover left the new source.
    pub start_at: bson::Timestamp,
}

impl Reversal {
    pub fn names(&self) -> (String, String) {
        direction_names(&self.pair, &self.source_region)
    }
}

/// Why a file cannot be turned around without a person deciding.
#[derive(Debug, thiserror::Error)]
#[error("cannot reverse the config: {0}")]
pub struct ReverseError(pub String);

/// The opposite direction's configuration, from the old one's TOML as written in its
/// file (environment overrides are not baked in: they stay the operator's to swap).
/// `[source]` and `[sink]` exchange clusters, flavours and state databases; the source
/// starts at `start_at` with no copy; topics and group get the new direction's names;
/// keys that name the old side's hosts (`source.instance_id`) are dropped.
pub fn reversed(old: &toml::Value, r: &Reversal) -> Result<toml::Value, ReverseError> {
    let err = |m: &str| ReverseError(m.to_string());
    let root = old.as_table().ok_or_else(|| err("the file is not a TOML table"))?;
    let src = root.get("source").and_then(|v| v.as_table()).ok_or_else(|| err("it has no [source] section"))?;
    let sink = root.get("sink").and_then(|v| v.as_table()).ok_or_else(|| err("it has no [sink] section"))?;
    let kafka = root.get("kafka").and_then(|v| v.as_table()).ok_or_else(|| err("it has no [kafka] section"))?;
    if sink.get("namespace_map").and_then(|m| m.as_table()).is_some_and(|m| !m.is_empty()) {
        return Err(err("sink.namespace_map renames namespaces, and turning a rename around (which target databases to read, how to name them back) is not automated yet: write the reversed file by hand (deploy/runbook.md)"));
    }
    if let Some(state) = src.get("state").and_then(|v| v.as_table()) {
        if state.contains_key("uri") {
            return Err(err("source.state.uri keeps the source's checkpoints in a third cluster, which the reversed sink cannot take over: write the reversed file by hand (deploy/runbook.md)"));
        }
    }
    let str_of = |t: &toml::Table, k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let source_state_db = src.get("state").and_then(|v| v.as_table()).and_then(|t| str_of(t, "database")).unwrap_or_else(|| "docrepl".into());
    let sink_state_db = str_of(sink, "state_database").unwrap_or_else(|| "docrepl".into());
    let (prefix, group) = r.names();

    // The new source reads the old target: the same selection of databases and
    // collections (no rename), from its cluster, with its state where the old sink's was.
    let mut new_source = src.clone();
    for key in ["instance_id", "name", "state", "start_at"] {
        new_source.remove(key);
    }
    new_source.insert("uri".into(), sink.get("uri").cloned().ok_or_else(|| err("sink.uri is missing"))?);
    set_or_remove(&mut new_source, "flavor", sink.get("flavor"));
    new_source.insert("initial_copy".into(), toml::Value::Boolean(false));
    new_source.insert("start_at".into(), toml::Value::String(format!("{}.{}", r.start_at.time, r.start_at.increment)));
    let mut state = toml::Table::new();
    state.insert("database".into(), toml::Value::String(sink_state_db));
    new_source.insert("state".into(), toml::Value::Table(state));

    // The new sink writes the old source, keeping its state where the old source's was,
    // so that both directions' locks and records meet in one database there.
    let mut new_sink = sink.clone();
    for key in ["topics", "namespace_map"] {
        new_sink.remove(key);
    }
    new_sink.insert("uri".into(), src.get("uri").cloned().ok_or_else(|| err("source.uri is missing"))?);
    set_or_remove(&mut new_sink, "flavor", src.get("flavor"));
    new_sink.insert("group_id".into(), toml::Value::String(group));
    new_sink.insert("state_database".into(), toml::Value::String(source_state_db));

    let mut new_kafka = kafka.clone();
    new_kafka.remove("dead_letter_topic");
    new_kafka.insert("topic_prefix".into(), toml::Value::String(prefix));

    let mut pair = toml::Table::new();
    pair.insert("name".into(), toml::Value::String(r.pair.clone()));
    pair.insert("source_region".into(), toml::Value::String(r.source_region.clone()));
    pair.insert("target_region".into(), toml::Value::String(r.target_region.clone()));
    pair.insert("trip".into(), toml::Value::Integer(i64::from(r.trip)));

    let mut out = root.clone();
    out.insert("source".into(), toml::Value::Table(new_source));
    out.insert("sink".into(), toml::Value::Table(new_sink));
    out.insert("kafka".into(), toml::Value::Table(new_kafka));
    out.insert("pair".into(), toml::Value::Table(pair));
    Ok(toml::Value::Table(out))
}

fn set_or_remove(table: &mut toml::Table, key: &str, value: Option<&toml::Value>) {
    match value {
        Some(v) => table.insert(key.into(), v.clone()),
        None => table.remove(key),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Role};

    const PAIR: &str = r#"
[source]
uri = "mongodb://a.example:27017/?replicaSet=a"
database = "app"
collections = ["orders"]
instance_id = "a-host-1"
copy_batch_size = 500

[sink]
uri = "mongodb://b.example:27017/?replicaSet=b"
flavor = "documentdb"
group_id = "orders-sink"
state_database = "docrepl_b"

[kafka]
bootstrap_servers = "k:9092"
topic_prefix = "orders"
dead_letter_topic = "orders-dlq"

[pair]
source_region = "eu"
target_region = "us"
"#;

    fn reversal() -> Reversal {
        Reversal { pair: "orders".into(), trip: 1, source_region: "us".into(), target_region: "eu".into(), start_at: bson::Timestamp { time: 1_765_000_000, increment: 7 } }
    }

    fn load(text: &str) -> Config {
        Config::from_toml_str(text, std::path::Path::new("t.toml"), Vec::new(), Role::Both).expect("valid config")
    }

    #[test]
    fn the_reversed_file_swaps_the_clusters_and_names_the_new_direction() {
        let old: toml::Value = toml::from_str(PAIR).unwrap();
        let new = reversed(&old, &reversal()).unwrap();
        let config = load(&toml::to_string(&new).unwrap());
        let (src, sink) = (config.source.as_ref().unwrap(), config.sink.as_ref().unwrap());
        assert_eq!(src.uri, "mongodb://b.example:27017/?replicaSet=b");
        assert_eq!(src.flavor().0, crate::flavor::Flavor::DocumentDb);
        assert_eq!(src.database.as_deref(), Some("app"));
        assert_eq!(src.collections, vec!["orders".to_string()]);
        assert_eq!(src.copy_batch_size, 500, "settings of the source side stay");
        assert!(!src.initial_copy);
        assert_eq!(src.start_at, Some(bson::Timestamp { time: 1_765_000_000, increment: 7 }));
        assert_eq!(src.instance_id, None, "the old side's instance names go");
        assert_eq!(src.state.database, "docrepl_b", "the new source keeps state where the old sink did");
        assert_eq!(sink.uri, "mongodb://a.example:27017/?replicaSet=a");
        assert_eq!(sink.state_database, "docrepl", "the new sink keeps state where the old source did");
        assert_eq!(sink.group_id, "orders-us");
        assert_eq!(config.kafka.topic_prefix, "orders-us");
        assert_eq!(config.kafka.dead_letter_topic(), "orders-us-dead-letters");
        let d = Direction::of(&config);
        assert_eq!((d.pair.as_str(), d.trip), ("orders", 1));
        assert_eq!(d.source_region.as_deref(), Some("us"));
    }

    #[test]
    fn turning_around_twice_gives_the_first_clusters_back_under_new_names() {
        let old: toml::Value = toml::from_str(PAIR).unwrap();
        let once = reversed(&old, &reversal()).unwrap();
        let back = Reversal { trip: 2, source_region: "eu".into(), target_region: "us".into(), ..reversal() };
        let twice = load(&toml::to_string(&reversed(&once, &back).unwrap()).unwrap());
        assert_eq!(twice.source.as_ref().unwrap().uri, "mongodb://a.example:27017/?replicaSet=a");
        assert_eq!(twice.sink.as_ref().unwrap().uri, "mongodb://b.example:27017/?replicaSet=b");
        assert_eq!(twice.sink.as_ref().unwrap().state_database, "docrepl_b");
        assert_eq!(twice.kafka.topic_prefix, "orders-eu");
        assert_eq!(twice.pair.trip, 2);
    }

    #[test]
    fn a_renaming_pair_is_refused_with_the_reason() {
        let text = PAIR.replace("state_database = \"docrepl_b\"", "[sink.namespace_map]\n\"app.orders\" = \"copy.orders\"");
        let e = reversed(&toml::from_str(&text).unwrap(), &reversal()).unwrap_err();
        assert!(e.to_string().contains("sink.namespace_map"), "{e}");
    }

    #[test]
    fn pair_names_must_fit_topic_names() {
        let text = PAIR.replace("source_region = \"eu\"", "source_region = \"eu west\"");
        let e = Config::from_toml_str(&text, std::path::Path::new("t.toml"), Vec::new(), Role::Both).unwrap_err();
        assert!(e.to_string().contains("pair.source_region"), "{e}");
        let same = PAIR.replace("target_region = \"us\"", "target_region = \"eu\"");
        assert!(Config::from_toml_str(&same, std::path::Path::new("t.toml"), Vec::new(), Role::Both).is_err());
    }
}
