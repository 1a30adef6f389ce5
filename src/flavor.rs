//! Which kind of server a cluster is: MongoDB or Amazon DocumentDB. They speak the same
//! protocol but accept different commands (DocumentDB's change streams take only
//! `$match`, `$project`, `$redact`, `$addFields` and `$replaceRoot`, it has no
//! `$bsonSize`, `$$REMOVE` or `startAfter`, no retryable writes, and answers some
//! failures with other codes), so the source and the sink choose what they send by it.
//!
//! `auto` (the default) decides from the cluster's host names: Amazon DocumentDB
//! endpoints end in `.docdb.amazonaws.com` (`.docdb.amazonaws.com.cn` in China,
//! `.docdb-elastic.amazonaws.com` for elastic clusters), the same rule the MongoDB drivers
//! use to tell they are not talking to MongoDB. A cluster reached under another name (an
//! SSH tunnel, a private DNS alias) needs `flavor = "documentdb"` set explicitly. Pure:
//! no I/O, so the rule is unit-tested.

use serde::Deserialize;

/// The configured choice (`source.flavor`, `sink.flavor`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FlavorSetting {
    #[default]
    Auto,
    Mongodb,
    Documentdb,
}

/// What the server is taken to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    MongoDb,
    DocumentDb,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::MongoDb => "mongodb",
            Flavor::DocumentDb => "documentdb",
        }
    }

    pub fn is_documentdb(self) -> bool {
        self == Flavor::DocumentDb
    }
}

/// Host-name suffixes of Amazon DocumentDB endpoints.
const DOCUMENTDB_SUFFIXES: [&str; 3] = [".docdb.amazonaws.com", ".docdb.amazonaws.com.cn", ".docdb-elastic.amazonaws.com"];

/// The flavour and why it was chosen (logged and shown in `/status`).
pub fn resolve(setting: FlavorSetting, uri: &str) -> (Flavor, &'static str) {
    match setting {
        FlavorSetting::Mongodb => (Flavor::MongoDb, "configured"),
        FlavorSetting::Documentdb => (Flavor::DocumentDb, "configured"),
        FlavorSetting::Auto if hosts(uri).iter().any(|h| is_documentdb_host(h)) => {
            (Flavor::DocumentDb, "detected: an Amazon DocumentDB host name")
        }
        FlavorSetting::Auto => (Flavor::MongoDb, "detected: no Amazon DocumentDB host name"),
    }
}

/// True when `uri` names an Amazon DocumentDB elastic cluster, which has no change
/// streams at all (it can still be a target).
pub fn is_elastic_cluster(uri: &str) -> bool {
    hosts(uri).iter().any(|h| h.ends_with(".docdb-elastic.amazonaws.com"))
}

fn is_documentdb_host(host: &str) -> bool {
    DOCUMENTDB_SUFFIXES.iter().any(|s| host.ends_with(s))
}

/// The host names of a `mongodb://` or `mongodb+srv://` connection string, without
/// credentials and ports, in lower case and without a trailing dot.
fn hosts(uri: &str) -> Vec<String> {
    let rest = uri.split_once("://").map(|(_, r)| r).unwrap_or(uri);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hosts = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    hosts
        .split(',')
        .map(|h| {
            // `[::1]:27017`, `host:27017`, `host`
            let name = match h.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or(""),
                None => h.split(':').next().unwrap_or(""),
            };
            name.trim_end_matches('.').to_ascii_lowercase()
        })
        .filter(|h| !h.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documentdb_endpoints_are_recognised() {
        let uri = "mongodb://user:p%40ss@prod.cluster-c1ab2cd3efgh.us-east-1.docdb.amazonaws.com:27017/?tls=true&retryWrites=false";
        assert_eq!(resolve(FlavorSetting::Auto, uri).0, Flavor::DocumentDb);
        let elastic = "mongodb+srv://u:p@app-123456789012.us-west-2.docdb-elastic.amazonaws.com/?tls=true";
        assert_eq!(resolve(FlavorSetting::Auto, elastic).0, Flavor::DocumentDb);
        assert!(is_elastic_cluster(elastic) && !is_elastic_cluster(uri));
        let china = "mongodb://a.cluster-x.cn-north-1.docdb.amazonaws.com.cn:27017,b.cluster-x.cn-north-1.docdb.amazonaws.com.cn:27017/";
        assert_eq!(resolve(FlavorSetting::Auto, china).0, Flavor::DocumentDb);
    }

    #[test]
    fn other_hosts_are_mongodb_unless_configured() {
        for uri in [
            "mongodb://127.0.0.1:27117/?replicaSet=rs-source",
            "mongodb://[::1]:27017,localhost/db",
            "mongodb+srv://cluster0.abcde.mongodb.net/",
            // A look-alike that only contains the suffix somewhere else.
            "mongodb://docdb.amazonaws.com.example.org:27017/?authSource=x.docdb.amazonaws.com",
            "mongodb://u:pw@host.docdb.amazonaws.com.evil:1/",
        ] {
            assert_eq!(resolve(FlavorSetting::Auto, uri).0, Flavor::MongoDb, "{uri}");
        }
        assert_eq!(resolve(FlavorSetting::Documentdb, "mongodb://127.0.0.1:1/").0, Flavor::DocumentDb);
        assert_eq!(resolve(FlavorSetting::Mongodb, "mongodb://x.docdb.amazonaws.com/").0, Flavor::MongoDb);
    }

    #[test]
    fn credentials_with_at_signs_do_not_hide_the_host() {
        assert_eq!(hosts("mongodb://a@b:c@h1:1,h2/x?y=z"), vec!["h1", "h2"]);
    }
}
