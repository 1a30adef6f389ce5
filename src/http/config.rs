//! The `[http]` section.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the status listener; loopback by default.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// When set, `/status` and `/metrics` require `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer_token: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: default_listen(), bearer_token: None }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen.parse::<SocketAddr>().map_err(|_| {
            ConfigError::invalid("http.listen", format!("expected ip:port such as 127.0.0.1:8080 (got {:?})", self.listen))
        })?;
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.listen.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}
