//! Reading a cluster's metadata: `listCollections` (every namespace's kind and options
//! in one command) and `listIndexes` (per collection), both commands Amazon DocumentDB
//! answers too. The source reads its own; `verify` and `cutover` read both sides.

use bson::{doc, Document};
use futures::TryStreamExt;

use super::{CollectionMetadata, Kind};

/// MongoDB's NamespaceNotFound: the collection went away between the two commands.
const NAMESPACE_NOT_FOUND: i32 = 26;

/// The metadata of `db`'s namespaces (`only`: that one, if it exists), with every
/// collection's indexes when `with_indexes`. `system.*` namespaces are left out.
pub async fn read_database(client: &mongodb::Client, db: &str, only: Option<&str>, with_indexes: bool) -> mongodb::error::Result<Vec<CollectionMetadata>> {
    let database = client.database(db);
    let mut command = doc! {"listCollections": 1};
    if let Some(name) = only {
        command.insert("filter", doc! {"name": name});
    }
    let entries: Vec<Document> = database.run_cursor_command(command).await?.try_collect().await?;
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let name = entry.get_str("name").unwrap_or_default().to_string();
        if name.is_empty() || name.starts_with("system.") {
            continue;
        }
        let indexes = match Kind::parse(entry.get_str("type").unwrap_or("collection")) {
            Kind::Collection if with_indexes => match indexes(&database, &name).await {
                Ok(list) => Some(list),
                Err(e) if is_namespace_not_found(&e) => continue,
                Err(e) => return Err(e),
            },
            // A view has no indexes of its own: "none" is its whole state.
            Kind::View => Some(Vec::new()),
            _ => None,
        };
        if let Ok(meta) = CollectionMetadata::from_listing(db, &entry, indexes) {
            out.push(meta);
        }
    }
    Ok(out)
}

/// One namespace's metadata; `None` when it does not exist.
pub async fn read_one(client: &mongodb::Client, db: &str, coll: &str, with_indexes: bool) -> mongodb::error::Result<Option<CollectionMetadata>> {
    Ok(read_database(client, db, Some(coll), with_indexes).await?.into_iter().next())
}

async fn indexes(database: &mongodb::Database, coll: &str) -> mongodb::error::Result<Vec<Document>> {
    database.run_cursor_command(doc! {"listIndexes": coll}).await?.try_collect().await
}

pub fn is_namespace_not_found(e: &mongodb::error::Error) -> bool {
    matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == NAMESPACE_NOT_FOUND)
}
