//! Log output through `tracing`: human-readable on a terminal, JSON lines when configured.

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::config::ConfigError;

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json` (one JSON object per line).
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `docrepl=debug,rdkafka=warn`; `RUST_LOG` wins.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: default_level() }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        EnvFilter::try_new(&self.level).map_err(|e| {
            ConfigError::invalid("log.level", format!("not a log filter ({e}); try `info` or `docrepl=debug`"))
        })?;
        Ok(())
    }
}

/// Installs the global subscriber. Safe to call more than once (later calls are ignored).
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The AWS SDK logs each credential it loads at info, access key id included: only its
    // warnings and errors, whatever the level asked (kafka.auth = "msk_iam").
    let filter = ["aws_config=warn", "aws_runtime=warn", "aws_smithy_runtime=warn", "aws_sdk_sts=warn"]
        .iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, |f, d| f.add_directive(d));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
