//! Which way a pair runs: the `[pair]` section and the names of a direction (`config`),
//! the lock that keeps the two directions from running at once (`lock`), and `docrepl
//! reverse`, which turns a pair around after a cutover (`reverse`).

pub mod config;
pub mod lock;
pub mod reverse;

pub use config::{Direction, PairConfig};
pub use lock::{Here, Lock};

/// The name a service of this config goes by in leases and lock holders.
pub fn instance_name(config: &crate::config::Config) -> String {
    config
        .source
        .as_ref()
        .and_then(|s| s.instance_id.clone())
        .unwrap_or_else(|| format!("{}-{}", hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "host".into()), std::process::id()))
}
