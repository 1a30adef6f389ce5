//! Field names that look like Extended JSON (`$`-prefixed, allowed since MongoDB 5.0) and
//! dotted field names: documents holding them arrive on the target byte-identical (field
//! order and types), on the copy path and the stream path, for inserts, replacements and
//! updates. `{"$date": 5}` used to come back as a date, `{"$regex": …, "$options": …}` as
//! a regex, `{"$oid": "not-hex"}` was dead-lettered, and a top-level `$` field failed
//! every replacement.

mod common;

use std::time::Duration;

use bson::{doc, Document};

use common::Setup;

fn tricky(id: i32) -> Document {
    doc! {
        "_id": id,
        "q": {"$regex": "^a", "$options": "i"},
        "d": {"$date": 5},
        "n": {"$numberLong": "5"},
        "b": {"$binary": "AAE=", "$type": "00"},
        "o": {"$oid": "not-hex"},
        "dotted.name": {"a.b": 1, "$x.y": [{"$numberInt": "x"}]},
        "$top": {"$set": 1},
        "plain": 1,
    }
}

#[tokio::test]
async fn dollar_and_dotted_field_names_arrive_byte_identical() {
    let setup = Setup::new("dollars");
    let source = common::mongo(&common::source_uri()).await;
    let coll = source.database(&setup.db).collection::<Document>("c");
    coll.insert_many([tricky(1), tricky(2)]).await.unwrap();
    let mut run = setup.spawn("run", &[]);
    let target = common::mongo(&common::target_uri()).await;
    let copied = target.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(60), "the copied documents", || async { copied.count_documents(doc! {}).await.unwrap_or(0) == 2 }).await;

    // The stream: an insert, a replacement, an update of a plain field of a document
    // with such names, and an update that sets a `$` field ($setField in a pipeline).
    coll.insert_one(tricky(3)).await.unwrap();
    let mut replaced = tricky(1);
    replaced.insert("plain", 2);
    replaced.insert("$more", doc! {"$numberDecimal": "1"});
    // (A replacement document cannot carry a top-level `$` field; a pipeline can.)
    coll.update_one(doc! {"_id": 1}, vec![doc! {"$replaceWith": {"$literal": replaced}}]).await.unwrap();
    coll.update_one(doc! {"_id": 2}, doc! {"$set": {"plain": 3}}).await.unwrap();
    coll.update_one(doc! {"_id": 3}, vec![doc! {"$replaceWith": {"$setField": {"field": {"$literal": "$new"}, "input": "$$ROOT", "value": {"$literal": {"$date": 7}}}}}]).await.unwrap();
    coll.insert_one(doc! {"_id": 4}).await.unwrap();
    common::eventually(Duration::from_secs(60), "the stream's changes", || async {
        copied.count_documents(doc! {"_id": 4}).await.unwrap_or(0) == 1
            && copied.count_documents(doc! {"plain": 3}).await.unwrap_or(0) == 1
            && copied.count_documents(doc! {"plain": 2}).await.unwrap_or(0) == 1
    })
    .await;
    // The last update may be in another partition than _id 4.
    common::eventually(Duration::from_secs(30), "the target equal to the source", || async {
        common::documents(&source, &setup.db, "c").await == common::documents(&target, &setup.db, "c").await
    })
    .await;
    let log = run.log_text();
    assert!(!log.contains("dead-letter"), "{log}");
    assert_eq!(run.terminate(Duration::from_secs(15)), Some(0));
}
