//! Readiness: a background check that the process can reach its cluster and the broker,
//! feeding `/readyz` and the `connections` of `/status` (which of the two is unreachable,
//! and since when).

use std::time::Duration;

use bson::doc;
use tokio_util::sync::CancellationToken;

use crate::kafka::admin::TopicAdmin;

const EVERY: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(3);

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connectivity {
    /// The side's MongoDB cluster answered a ping.
    pub cluster: bool,
    /// The broker answered a metadata request.
    pub broker: bool,
}

/// Every 2 s: ping the cluster and ask the broker for metadata; report the result.
pub async fn watch(client: mongodb::Client, admin: TopicAdmin, report: impl Fn(Connectivity), shutdown: CancellationToken) {
    loop {
        let mongo_ok = matches!(
            tokio::time::timeout(TIMEOUT, client.database("admin").run_command(doc! {"ping": 1})).await,
            Ok(Ok(_))
        );
        let broker_ok = matches!(tokio::time::timeout(TIMEOUT, admin.reachable()).await, Ok(true));
        report(Connectivity { cluster: mongo_ok, broker: broker_ok });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}
