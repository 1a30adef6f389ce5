//! Connecting to a MongoDB-compatible cluster with bounded waits and clear errors.

use std::time::Duration;

use bson::doc;

use crate::flavor::Flavor;
use crate::redact::redact_uri;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("`{key}` is not a usable connection string ({uri}): {message}")]
    BadUri { key: String, uri: String, message: String },
    #[error("cannot reach the cluster at {uri} (`{key}`) within 10 s: {message}. Check the address, that the server runs, the network path, TLS options and credentials")]
    Unreachable { key: String, uri: String, message: String },
    #[error("the cluster at {uri} (`{key}`) is not a replica set; change streams need one (a single node works: start mongod with --replSet and run replSetInitiate)")]
    NotReplicaSet { key: String, uri: String },
}

/// Parses `uri`, connects and pings, waiting at most about 10 s. On Amazon DocumentDB,
/// which refuses retryable writes, they are turned off whatever the URI says.
pub async fn connect(uri: &str, key: &str, flavor: Flavor) -> Result<mongodb::Client, ConnectError> {
    connect_with_pool(uri, key, flavor, None).await
}

/// Like [`connect`], with a connection pool of `pool` connections at most unless the URI
/// sets `maxPoolSize` (the driver's default is 10).
pub async fn connect_with_pool(uri: &str, key: &str, flavor: Flavor, pool: Option<u32>) -> Result<mongodb::Client, ConnectError> {
    let redacted = redact_uri(uri);
    let mut opts = mongodb::options::ClientOptions::parse(uri).await.map_err(|e| ConnectError::BadUri {
        key: key.into(),
        uri: redacted.clone(),
        message: e.to_string(),
    })?;
    opts.server_selection_timeout.get_or_insert(Duration::from_secs(10));
    opts.connect_timeout.get_or_insert(Duration::from_secs(5));
    opts.app_name.get_or_insert_with(|| "docrepl".into());
    if let Some(pool) = pool {
        opts.max_pool_size.get_or_insert(pool);
    }
    if flavor.is_documentdb() {
        if opts.retry_writes == Some(true) {
            tracing::warn!("`{key}` asks for retryWrites=true, which Amazon DocumentDB does not support: turned off");
        }
        opts.retry_writes = Some(false);
    }
    let client = mongodb::Client::with_options(opts).map_err(|e| ConnectError::BadUri {
        key: key.into(),
        uri: redacted.clone(),
        message: e.to_string(),
    })?;
    client
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .map_err(|e| ConnectError::Unreachable { key: key.into(), uri: redacted, message: e.to_string() })?;
    Ok(client)
}

/// Reads that must see every write before them: the initial copy and the change streams
/// (Amazon DocumentDB 3.6 and 4.0 serve change streams only on the primary, and ask for
/// this read preference on `watch`). A URI's `readPreference` still applies to the rest
/// (verify's and repair's scans).
pub fn primary() -> mongodb::options::SelectionCriteria {
    mongodb::options::SelectionCriteria::ReadPreference(mongodb::options::ReadPreference::Primary)
}

/// The replica set name (`hello.setName`), or an error saying change streams need one.
pub async fn replica_set_name(client: &mongodb::Client, key: &str) -> Result<String, ConnectError> {
    let hello = client.database("admin").run_command(doc! {"hello": 1}).await.map_err(|e| {
        ConnectError::Unreachable { key: key.into(), uri: String::new(), message: e.to_string() }
    })?;
    hello
        .get_str("setName")
        .map(str::to_string)
        .map_err(|_| ConnectError::NotReplicaSet { key: key.into(), uri: String::new() })
}

/// The cluster's current time from a `hello` reply: its `operationTime`, else the gossiped
/// `$clusterTime` (none from a server that is no replica set member).
pub async fn cluster_time(client: &mongodb::Client) -> mongodb::error::Result<Option<bson::Timestamp>> {
    let reply = client.database("admin").run_command(doc! {"hello": 1}).await?;
    Ok(reply
        .get_timestamp("operationTime")
        .ok()
        .or_else(|| reply.get_document("$clusterTime").ok().and_then(|c| c.get_timestamp("clusterTime").ok())))
}

/// A duplicate-key error (11000), however the driver reports it.
pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    match e.kind.as_ref() {
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(we)) => we.code == 11000,
        ErrorKind::Command(ce) => ce.code == 11000,
        _ => e.to_string().contains("E11000"),
    }
}
