//! The HTTP listener every process runs: `/status`, `/metrics`, `/healthz`, `/readyz`.

mod config;

pub use config::HttpConfig;
