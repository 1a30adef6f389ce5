//! Compatibility: a source at feature compatibility version 5.0 (what DocumentDB's
//! 5.0-compatible API and older MongoDB deployments speak), read with `retryWrites=false`
//! as DocumentDB requires, replicates inserts, updates, replaces and deletes through the
//! initial copy and the change stream until the target is equal; and `source.ddl =
//! "replicate"` empties the target collection when its source collection is dropped.

mod common;

use std::time::Duration;

use bson::{doc, Document};

use common::{OwnMongod, Setup};

#[tokio::test]
async fn a_source_at_fcv_5_0_without_retryable_writes_replicates() {
    let source = OwnMongod::start(27917).await;
    let admin = common::mongo(&source.uri()).await;
    admin.database("admin").run_command(doc! {"setFeatureCompatibilityVersion": "5.0"}).await.expect("set FCV 5.0");
    let fcv = admin.database("admin").run_command(doc! {"getParameter": 1, "featureCompatibilityVersion": 1}).await.unwrap();
    assert_eq!(fcv.get_document("featureCompatibilityVersion").unwrap().get_str("version").unwrap(), "5.0");

    let mut setup = Setup::new("fcv");
    setup.source_extra = "collections = [\"c\"]".into();
    let uri = format!("{}&retryWrites=false", source.uri());
    let text = std::fs::read_to_string(setup.config()).unwrap().replace(&common::source_uri(), &uri);
    let config = setup.dir.path().join("fcv50.toml");
    std::fs::write(&config, text).unwrap();

    let coll = admin.database(&setup.db).collection::<Document>("c");
    coll.insert_many((0..500).map(|i| doc! {"_id": i, "v": 0, "tags": ["a", "b"]})).await.unwrap();
    let run = setup.spawn_with("run", &config, &[]);
    // Changes during and after the copy.
    for i in 0..200 {
        coll.update_one(doc! {"_id": i}, doc! {"$set": {"v": 1}, "$push": {"tags": "c"}}).await.unwrap();
    }
    coll.replace_one(doc! {"_id": 300}, doc! {"replaced": true}).await.unwrap();
    coll.delete_many(doc! {"_id": {"$gte": 400}}).await.unwrap();
    coll.insert_many((1000..1100).map(|i| doc! {"_id": i})).await.unwrap();

    let (code, out) = common::verify(&config, 120);
    assert_eq!(code, Some(0), "target differs from the FCV 5.0 source:\n{out}\n{}", run.log_text());
}

#[tokio::test]
async fn replicated_ddl_empties_the_target_of_a_dropped_collection() {
    let mut setup = Setup::new("ddlrep");
    setup.source_extra = "collections = [\"c\"]\nddl = \"replicate\"".into();
    let source = common::mongo(&common::source_uri()).await;
    let coll = source.database(&setup.db).collection::<Document>("c");
    coll.insert_many((0..300).map(|i| doc! {"_id": i})).await.unwrap();
    let run = setup.spawn("run", &[]);
    let target = common::mongo(&common::target_uri()).await.database(&setup.db).collection::<Document>("c");
    common::eventually(Duration::from_secs(60), "the copy", || async { target.count_documents(doc! {}).await.unwrap_or(0) == 300 }).await;

    coll.drop().await.unwrap();
    common::eventually(Duration::from_secs(60), "the target emptied after the drop", || async {
        target.count_documents(doc! {}).await.unwrap_or(1) == 0
    })
    .await;
    // A re-created collection replicates again.
    coll.insert_many((0..10).map(|i| doc! {"_id": i, "again": true})).await.unwrap();
    common::eventually(Duration::from_secs(60), "the re-created collection", || async {
        target.count_documents(doc! {"again": true}).await.unwrap_or(0) == 10
    })
    .await;
    assert!(run.log_text().contains("clear markers delivered"), "{}", run.log_text());
}
