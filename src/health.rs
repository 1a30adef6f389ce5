//! Readiness: a background check that the process can reach its cluster and the broker,
//! feeding `/readyz`.

use std::time::Duration;

use bson::doc;
use tokio_util::sync::CancellationToken;

use crate::kafka::admin::TopicAdmin;

const EVERY: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(3);

/// Every 2 s: ping the cluster and ask the broker for metadata; report the result.
pub async fn watch(client: mongodb::Client, admin: TopicAdmin, report: impl Fn(bool), shutdown: CancellationToken) {
    loop {
        let mongo_ok = matches!(
            tokio::time::timeout(TIMEOUT, client.database("admin").run_command(doc! {"ping": 1})).await,
            Ok(Ok(_))
        );
        let broker_ok = matches!(tokio::time::timeout(TIMEOUT, admin.reachable()).await, Ok(true));
        report(mongo_ok && broker_ok);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}
