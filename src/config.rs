//! The one configuration file: loading (TOML), environment overrides, validation and
//! redacted printing.
//!
//! Every key can be overridden by an environment variable named
//! `DOCREPL_<SECTION>__<KEY>` (upper case, `__` between the levels), e.g.
//! `DOCREPL_SOURCE__URI`, `DOCREPL_KAFKA__PARTITIONS=16`,
//! `DOCREPL_SOURCE__COLLECTIONS='["orders","users"]'`. The value is read as a TOML value
//! when it parses as one (numbers, booleans, arrays) and as a string otherwise. Keys of the
//! free-form `kafka.properties` map use `_` for `.`: `DOCREPL_KAFKA__PROPERTIES__SASL_PASSWORD`
//! sets `sasl.password`. Variables without `__` (the scripts' `DOCREPL_CACHE`, ...) are not
//! configuration.
//!
//! Each section's struct lives next to the code that uses it (`source::SourceConfig`,
//! `sink::SinkConfig`, `kafka::KafkaConfig`, ...); this module only assembles them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::http::HttpConfig;
use crate::kafka::KafkaConfig;
use crate::logging::LogConfig;
use crate::redact::redact_uri;
use crate::sink::SinkConfig;
use crate::source::SourceConfig;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "DOCREPL_";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The source side (`docrepl source`): which cluster and collections to read.
    #[serde(default)]
    pub source: Option<SourceConfig>,
    /// The sink side (`docrepl sink`): which target cluster to write to.
    #[serde(default)]
    pub sink: Option<SinkConfig>,
    /// The Kafka cluster between the two sides.
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// `[pair]`: the pair's name, regions and trip (see `direction`).
    #[serde(default)]
    pub pair: crate::direction::PairConfig,
}

/// What is wrong with a configuration. Every variant names the key (as a dotted path) or
/// the file, and says what is expected, so the message alone tells the operator the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), message: message.into() }
    }
}

/// Which service is about to run: decides which sections are required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source,
    Sink,
    /// `docrepl run`: both sides in one process.
    Both,
    /// Tools (`loadgen`, `verify`) that only need what they are given.
    Tool,
}

impl Config {
    /// Reads `path`, applies the `DOCREPL_*__*` environment overrides from the process
    /// environment, and validates the result for `role`.
    pub fn load(path: &Path, role: Role) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml_str(&text, path, std::env::vars(), role)
    }

    /// Puts the passwords of `password_file` / `password_env` into the source's and the
    /// sink's URIs (see `crate::secrets`). Not part of `load`: `--check` runs where the
    /// secrets are not mounted.
    pub fn add_passwords(
        &mut self,
        read_file: impl Fn(&Path) -> std::io::Result<String> + Copy,
        read_env: impl Fn(&str) -> Option<String> + Copy,
    ) -> Result<(), ConfigError> {
        use crate::secrets::{with_password, PasswordFrom};
        if let Some(s) = &mut self.source {
            let from = PasswordFrom { section: "source", file: s.password_file.as_ref(), env: s.password_env.as_deref() };
            s.uri = with_password(&s.uri, from, read_file, read_env)?;
        }
        if let Some(s) = &mut self.sink {
            let from = PasswordFrom { section: "sink", file: s.password_file.as_ref(), env: s.password_env.as_deref() };
            s.uri = with_password(&s.uri, from, read_file, read_env)?;
        }
        Ok(())
    }

    /// The pure part of [`Config::load`]: text + environment → validated config.
    pub fn from_toml_str(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
        role: Role,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        apply_env_overrides(&mut value, env)?;
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().to_string();
            ConfigError::Invalid { key: if key == "." { "(top level)".into() } else { key }, message }
        })?;
        config.validate(role)?;
        Ok(config)
    }

    /// Checks the values serde cannot: required sections for the role, URIs, ranges.
    pub fn validate(&self, role: Role) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.http.validate()?;
        self.log.validate()?;
        self.pair.validate()?;
        let need_source = matches!(role, Role::Source | Role::Both);
        let need_sink = matches!(role, Role::Sink | Role::Both);
        match &self.source {
            Some(source) => source.validate()?,
            None if need_source => {
                return Err(ConfigError::invalid(
                    "source",
                    "section [source] is required here: add it with at least `uri` and `database`",
                ))
            }
            None => {}
        }
        match &self.sink {
            Some(sink) => sink.validate()?,
            None if need_sink => {
                return Err(ConfigError::invalid(
                    "sink",
                    "section [sink] is required here: add it with at least `uri`",
                ))
            }
            None => {}
        }
        Ok(())
    }

    /// The configuration as TOML with every secret masked: safe for logs and `/status`.
    pub fn redacted_toml(&self) -> String {
        let mut lines = Vec::new();
        if let Some(s) = &self.source {
            lines.push("[source]".to_string());
            lines.push(format!("uri = {:?}", redact_uri(&s.uri)));
            lines.extend(password_lines(s.password_file.as_ref(), s.password_env.as_deref()));
            if let Some(db) = &s.database {
                lines.push(format!("database = {db:?}"));
            } else {
                lines.push(format!("databases = {:?}", s.databases));
            }
            lines.push(format!("collections = {:?}", s.collections));
        }
        if let Some(s) = &self.sink {
            lines.push("[sink]".to_string());
            lines.push(format!("uri = {:?}", redact_uri(&s.uri)));
            lines.extend(password_lines(s.password_file.as_ref(), s.password_env.as_deref()));
            lines.push(format!("group_id = {:?}", s.group_id));
        }
        lines.push("[kafka]".to_string());
        lines.push(format!("bootstrap_servers = {:?}", self.kafka.bootstrap_servers));
        lines.push(format!("topic_prefix = {:?}", self.kafka.topic_prefix));
        lines.push(format!("partitions = {}", self.kafka.partitions));
        if self.kafka.auth == crate::kafka::KafkaAuth::MskIam {
            // No secret here: credentials come from the AWS chain, never from this file.
            lines.push("auth = \"msk_iam\"".to_string());
            let region = self.kafka.aws_region.clone().or_else(|| crate::kafka::msk_iam::token::region_of_brokers(&self.kafka.bootstrap_servers).ok().flatten());
            lines.push(region.map_or("# aws_region: from the AWS default region chain".to_string(), |r| format!("aws_region = {r:?}")));
            if let Some(arn) = &self.kafka.aws_role_arn {
                lines.push(format!("aws_role_arn = {arn:?}"));
            }
        }
        for (k, v) in crate::redact::redact_properties(&self.kafka.properties) {
            lines.push(format!("properties.{k:?} = {v:?}"));
        }
        lines.push("[http]".to_string());
        lines.push(format!("listen = {:?}", self.http.listen));
        lines.join("\n")
    }
}

/// Where a password comes from (never the password).
fn password_lines(file: Option<&PathBuf>, env: Option<&str>) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(file) = file {
        lines.push(format!("password_file = {:?}", file.display().to_string()));
    }
    if let Some(env) = env {
        lines.push(format!("password_env = {env:?}"));
    }
    lines
}

/// Applies `DOCREPL_<SECTION>__<KEY>` variables on top of the parsed file.
fn apply_env_overrides(
    root: &mut toml::Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    // Sorted, so that the result does not depend on the environment's order.
    let vars: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k[ENV_PREFIX.len()..].contains("__"))
        .collect();
    for (var, raw) in vars {
        let path = env_var_to_path(&var);
        let value = parse_env_value(&raw);
        let mut node = &mut *root;
        for (i, part) in path.iter().enumerate() {
            let table = node.as_table_mut().ok_or_else(|| ConfigError::Env {
                var: var.clone(),
                message: format!("`{}` is not a table in the config", path[..i].join(".")),
            })?;
            if i + 1 == path.len() {
                table.insert(part.clone(), value.clone());
                break;
            }
            node = table
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
        }
    }
    Ok(())
}

/// `DOCREPL_KAFKA__PROPERTIES__SASL_PASSWORD` → `["kafka", "properties", "sasl.password"]`.
fn env_var_to_path(var: &str) -> Vec<String> {
    let parts: Vec<String> =
        var[ENV_PREFIX.len()..].split("__").map(|p| p.to_ascii_lowercase()).collect();
    let is_property_map = parts.len() == 3 && parts[0] == "kafka" && parts[1] == "properties";
    parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| if is_property_map && i == 2 { p.replace('_', ".") } else { p })
        .collect()
}

fn parse_env_value(raw: &str) -> toml::Value {
    #[derive(Deserialize)]
    struct Probe {
        v: toml::Value,
    }
    match toml::from_str::<Probe>(&format!("v = {raw}")) {
        Ok(p) => p.v,
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// A setting that is text to its user but may be written as a number or boolean: TOML
/// (and the environment overrides, read as TOML values) give those their own types, so
/// `w = 1` and `DOCREPL_SINK__WRITE_CONCERN=1` arrive as integers.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Scalar {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    pub(crate) fn into_text(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Integer(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// `deserialize_with` for a text setting that may be written as a number (see `Scalar`).
pub(crate) fn scalar_as_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Scalar::deserialize(d).map(Scalar::into_text)
}

/// Checks a MongoDB connection string well enough to give a clear message at start
/// (the driver's own parse runs later and catches the rest).
pub fn validate_mongo_uri(key: &str, uri: &str) -> Result<(), ConfigError> {
    if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
        return Err(ConfigError::invalid(
            key,
            format!(
                "`{}` is not a MongoDB connection string: expected mongodb://host:port/... or mongodb+srv://...",
                redact_uri(uri)
            ),
        ));
    }
    let rest = uri.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let hosts = rest.split(['/', '?']).next().unwrap_or_default();
    let hosts = hosts.rsplit_once('@').map(|(_, h)| h).unwrap_or(hosts);
    if hosts.is_empty() {
        return Err(ConfigError::invalid(key, "the connection string names no host"));
    }
    Ok(())
}

/// `min <= value` or a clear error naming the key.
pub fn require_at_least<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    min: T,
) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::invalid(key, format!("must be at least {min} (got {value})")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [source]
        uri = "mongodb://127.0.0.1:27117/?replicaSet=rs-source"
        database = "app"
        [sink]
        uri = "mongodb://127.0.0.1:27217/?replicaSet=rs-target"
        [kafka]
        bootstrap_servers = "127.0.0.1:19092"
    "#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml_str(text, Path::new("test.toml"), env, Role::Both)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.kafka.partitions, 8);
        assert_eq!(c.kafka.topic_prefix, "docrepl");
        assert!(c.source.unwrap().collections.is_empty());
    }

    #[test]
    fn start_at_is_a_cluster_time_and_only_without_a_copy() {
        let with = |line: &str| MINIMAL.replace("database = \"app\"", &format!("database = \"app\"\n{line}"));
        let c = load(&with("initial_copy = false\nstart_at = \"1765000000.7\""), &[]).unwrap();
        assert_eq!(c.source.unwrap().start_at, Some(bson::Timestamp { time: 1_765_000_000, increment: 7 }));
        let e = load(&with("start_at = \"1765000000.7\""), &[]).unwrap_err().to_string();
        assert!(e.contains("source.start_at") && e.contains("initial_copy = false"), "{e}");
        let e = load(&with("initial_copy = false\nstart_at = \"yesterday\""), &[]).unwrap_err().to_string();
        assert!(e.contains("source.start_at") && e.contains("<seconds>.<increment>"), "{e}");
    }

    #[test]
    fn env_overrides_numbers_lists_and_properties() {
        let c = load(
            MINIMAL,
            &[
                ("DOCREPL_KAFKA__PARTITIONS", "16"),
                ("DOCREPL_SOURCE__COLLECTIONS", r#"["a", "b"]"#),
                ("DOCREPL_KAFKA__PROPERTIES__SASL_PASSWORD", "hunter2"),
                ("DOCREPL_CACHE", "/not/config"),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.partitions, 16);
        assert_eq!(c.source.as_ref().unwrap().collections, vec!["a", "b"]);
        assert_eq!(c.kafka.properties.get("sasl.password").map(String::as_str), Some("hunter2"));
        assert!(!c.redacted_toml().contains("hunter2"));
    }

    #[test]
    fn kafka_properties_take_numbers_and_booleans_as_text() {
        let text = format!("{MINIMAL}\n[kafka.properties]\n\"linger.ms\" = 5\n\"enable.ssl.certificate.verification\" = false\n");
        let c = load(&text, &[("DOCREPL_KAFKA__PROPERTIES__FETCH_WAIT_MAX_MS", "100")]).unwrap();
        let p = &c.kafka.properties;
        assert_eq!(p.get("linger.ms").map(String::as_str), Some("5"));
        assert_eq!(p.get("enable.ssl.certificate.verification").map(String::as_str), Some("false"));
        assert_eq!(p.get("fetch.wait.max.ms").map(String::as_str), Some("100"));
    }

    #[test]
    fn write_concern_takes_a_number_of_nodes() {
        let sink = |c: Config| c.sink.unwrap().write_concern;
        assert_eq!(sink(load(MINIMAL, &[("DOCREPL_SINK__WRITE_CONCERN", "1")]).unwrap()), "1");
        assert_eq!(sink(load(MINIMAL, &[]).unwrap()), "majority");
        let err = load(MINIMAL, &[("DOCREPL_SINK__WRITE_CONCERN", "most")]).unwrap_err().to_string();
        assert!(err.contains("sink.write_concern"), "{err}");
    }

    #[test]
    fn write_concern_zero_is_refused() {
        for zero in ["0", "00"] {
            let err = load(MINIMAL, &[("DOCREPL_SINK__WRITE_CONCERN", zero)]).unwrap_err().to_string();
            assert!(err.contains("sink.write_concern") && err.contains("acknowledges nothing"), "{err}");
        }
    }

    #[test]
    fn replication_factor_defaults_to_the_brokers() {
        assert_eq!(load(MINIMAL, &[]).unwrap().kafka.replication_factor, -1);
        assert_eq!(load(MINIMAL, &[("DOCREPL_KAFKA__REPLICATION_FACTOR", "3")]).unwrap().kafka.replication_factor, 3);
        let err = load(MINIMAL, &[("DOCREPL_KAFKA__REPLICATION_FACTOR", "0")]).unwrap_err().to_string();
        assert!(err.contains("kafka.replication_factor"), "{err}");
    }

    #[test]
    fn flavors_are_named_values() {
        let c = load(MINIMAL, &[("DOCREPL_SOURCE__FLAVOR", "documentdb")]).unwrap();
        assert_eq!(c.source.unwrap().flavor().0, crate::flavor::Flavor::DocumentDb);
        let err = load(MINIMAL, &[("DOCREPL_SINK__FLAVOR", "docdb")]).unwrap_err().to_string();
        assert!(err.contains("sink.flavor") && err.contains("documentdb"), "{err}");
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let text = MINIMAL.replace("database = \"app\"", "database = \"app\"\nurl = \"x\"");
        let err = load(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("`source`") && err.contains("unknown field `url`"), "{err}");
    }

    #[test]
    fn zero_partitions_is_rejected() {
        let err = load(MINIMAL, &[("DOCREPL_KAFKA__PARTITIONS", "0")]).unwrap_err().to_string();
        assert!(err.contains("kafka.partitions") && err.contains("at least 1"), "{err}");
    }

    #[test]
    fn bad_uri_is_rejected_and_redacted() {
        let err = load(MINIMAL, &[("DOCREPL_SINK__URI", "http://u:secretpw@host")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("sink.uri") && !err.contains("secretpw"), "{err}");
    }

    #[test]
    fn missing_section_for_role() {
        let text = "[kafka]\nbootstrap_servers = \"127.0.0.1:19092\"\n";
        let err = Config::from_toml_str(text, Path::new("t"), Vec::new(), Role::Source)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[source] is required"), "{err}");
    }
}
