//! How far back the source's change history reaches, so the resume-token age can be
//! judged against it (`/status`, `docrepl_source_history_window_seconds`, the alert
//! "token age approaching the retention window"). MongoDB: the age of the oldest oplog
//! entry. DocumentDB does not expose its change-stream log, so there the window comes
//! from `source.history_retention_hours` (set it to the cluster's
//! `change_stream_log_retention_duration`); the configured value also wins on MongoDB.

use std::time::Duration;

use bson::{doc, Document};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::flavor::Flavor;
use crate::metrics as m;
use crate::status::StatusBoard;

/// How often the window is measured: it moves slowly.
const INTERVAL: Duration = Duration::from_secs(30);

/// DocumentDB's default `change_stream_log_retention_duration`.
const DOCUMENTDB_DEFAULT_HOURS: f64 = 3.0;

/// Seconds of history the source keeps, if known.
pub async fn window_seconds(client: &mongodb::Client, flavor: Flavor, configured_hours: Option<f64>) -> Option<f64> {
    if let Some(h) = configured_hours {
        return Some(h * 3600.0);
    }
    if flavor.is_documentdb() {
        return Some(DOCUMENTDB_DEFAULT_HOURS * 3600.0);
    }
    let oldest = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .sort(doc! {"$natural": 1})
        .projection(doc! {"ts": 1, "_id": 0})
        .await;
    match oldest {
        Ok(Some(entry)) => entry.get_timestamp("ts").ok().map(|ts| m::seconds_since(ts.time)),
        Ok(None) => None,
        Err(e) => {
            debug!("cannot read the oldest oplog entry (set source.history_retention_hours): {e}");
            None
        }
    }
}

/// Measures the window every `INTERVAL` until shutdown.
pub async fn watch(client: mongodb::Client, flavor: Flavor, configured_hours: Option<f64>, board: StatusBoard, shutdown: CancellationToken) {
    if flavor.is_documentdb() && configured_hours.is_none() {
        warn!("source.history_retention_hours is not set: taking DocumentDB's default change stream retention of {DOCUMENTDB_DEFAULT_HOURS} hours; set it to the cluster's change_stream_log_retention_duration");
    }
    loop {
        let window = window_seconds(&client, flavor, configured_hours).await;
        if let Some(w) = window {
            metrics::gauge!(m::SOURCE_HISTORY_WINDOW_SECONDS).set(w);
        }
        board.set_history_window(window);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}
