//! The cutover's one change to the target: unique indexes made unique and TTL indexes
//! (and a clustered collection's expiry) given their `expireAfterSeconds`, as the source
//! has them (see `metadata::rule` for why they wait). In place through `collMod` where
//! the target can (MongoDB 6.0+ converts an index to unique after `prepareUnique`), else
//! (Amazon DocumentDB's `collMod` changes validation rules only, or an older server
//! refused it) the index is built again in its final form under the same name.

use bson::{doc, Document};

use crate::event::Namespace;
use crate::flavor::Flavor;
use crate::metadata::plan::Finalise;
use crate::metadata::CollectionMetadata;

/// Carries out `step` on `target` (whose source metadata is `source`). `Err(why)`: the
/// target refused it (duplicates under a unique index, an unsupported option).
pub async fn apply(client: &mongodb::Client, flavor: Flavor, target: &Namespace, source: &CollectionMetadata, step: &Finalise) -> Result<(), String> {
    let db = client.database(&target.db);
    let coll = target.coll.as_str();
    if flavor.is_documentdb() && !matches!(step, Finalise::CollectionExpiry { .. }) {
        let index = index_of(step);
        let Some(spec) = source.index(index) else { return Err(format!("{target}: index {index} is not in the source's metadata")) };
        return rebuild(&db, coll, spec).await.map_err(|e| format!("{target}: index {index} could not be rebuilt in its final form: {e}"));
    }
    let in_place = match step {
        Finalise::MakeUnique { index } => {
            let prepared = db.run_command(doc! {"collMod": coll, "index": {"name": index, "prepareUnique": true}}).await;
            match prepared {
                Ok(_) => db.run_command(doc! {"collMod": coll, "index": {"name": index, "unique": true}}).await.map(drop),
                Err(e) => Err(e),
            }
        }
        Finalise::IndexExpiry { index, seconds } => db.run_command(doc! {"collMod": coll, "index": {"name": index, "expireAfterSeconds": seconds.clone()}}).await.map(drop),
        Finalise::CollectionExpiry { seconds } => return db.run_command(doc! {"collMod": coll, "expireAfterSeconds": seconds.clone()}).await.map(drop).map_err(|e| format!("{target}: the collection's expireAfterSeconds: {e}")),
    };
    let e = match in_place {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    // Duplicates are duplicates however the index is built: say so.
    if is_duplicate(&e) {
        return Err(format!("{target}: index {} cannot be made unique: the target holds documents with the same key ({e}); the source must not (verify compares the documents)", index_of(step)));
    }
    let index = index_of(step);
    let Some(spec) = source.index(index) else { return Err(format!("{target}: index {index} is not in the source's metadata")) };
    rebuild(&db, coll, spec).await.map_err(|rebuilt| format!("{target}: index {index} could not be made final in place ({e}) nor rebuilt ({rebuilt})"))
}

fn index_of(step: &Finalise) -> &str {
    match step {
        Finalise::MakeUnique { index } | Finalise::IndexExpiry { index, .. } => index,
        Finalise::CollectionExpiry { .. } => "",
    }
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    let text = e.to_string();
    matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 11000 || c.code == 359) || text.contains("duplicate key") || text.contains("violations")
}

/// Drops the index and builds it in the source's exact form; if that build fails, the
/// replicating form is built again so the target keeps the index for its queries.
async fn rebuild(db: &mongodb::Database, coll: &str, spec: &Document) -> Result<(), String> {
    let name = crate::metadata::index_name(spec);
    db.run_command(doc! {"dropIndexes": coll, "index": name}).await.map_err(|e| e.to_string())?;
    match db.run_command(doc! {"createIndexes": coll, "indexes": [spec.clone()]}).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let back = crate::metadata::rule::replicating_index(spec);
            let _ = db.run_command(doc! {"createIndexes": coll, "indexes": [back]}).await;
            Err(e.to_string())
        }
    }
}
