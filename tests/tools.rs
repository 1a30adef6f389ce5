//! `docrepl loadgen` and `docrepl verify` against the real replica sets.

mod common;

use std::process::Command;

use bson::{doc, Document};

use common::Setup;

fn docrepl(setup: &Setup, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_docrepl"))
        .args(args)
        .arg("--config")
        .arg(setup.config())
        .output()
        .expect("run docrepl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn loadgen_inserts_and_refuses_a_non_empty_collection() {
    let setup = Setup::new("lg");
    let (code, out, err) = docrepl(&setup, &["loadgen", "-n", "5000", "--collection", "c", "--shape", "types", "--batch", "500"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("5000 docs"), "{out}");
    let client = common::mongo(&common::source_uri()).await;
    assert_eq!(client.database(&setup.db).collection::<Document>("c").count_documents(doc! {}).await.unwrap(), 5000);

    let (code, _, err) = docrepl(&setup, &["loadgen", "-n", "10", "--collection", "c"]);
    assert_eq!(code, 1);
    assert!(err.contains("already has") && err.contains("--append"), "{err}");

    let (code, _, err) = docrepl(&setup, &["loadgen", "-n", "10", "--collection", "c", "--append"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(client.database(&setup.db).collection::<Document>("c").count_documents(doc! {}).await.unwrap(), 5010);

    let (code, _, err) = docrepl(&setup, &["loadgen", "-n", "100", "--collection", "m", "--mix", "50:30:10:10", "--hot", "20"]);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn verify_finds_a_changed_a_missing_and_an_extra_document() {
    let setup = Setup::new("vf");
    let source = common::mongo(&common::source_uri()).await;
    let target = common::mongo(&common::target_uri()).await;
    let docs: Vec<Document> = (0..1000).map(|i| doc! {"_id": i, "v": i, "s": "x"}).collect();
    let a = source.database(&setup.db).collection::<Document>("c");
    let b = target.database(&setup.db).collection::<Document>("c");
    a.insert_many(docs.clone()).await.unwrap();
    b.insert_many(docs).await.unwrap();

    let (code, out, err) = docrepl(&setup, &["verify", "--collection", "c"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("EQUAL"), "{out}");

    b.update_one(doc! {"_id": 10}, doc! {"$set": {"v": "changed"}}).await.unwrap();
    b.delete_one(doc! {"_id": 20}).await.unwrap();
    b.insert_one(doc! {"_id": "extra"}).await.unwrap();
    // Same value, other type: a difference too.
    b.update_one(doc! {"_id": 30}, doc! {"$set": {"v": 30i64}}).await.unwrap();
    let (code, out, _) = docrepl(&setup, &["verify", "--collection", "c"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("missing 1, extra 1, differing 2"), "{out}");
    assert!(out.contains("missing in target: 20") && out.contains("extra in target: \"extra\"") && out.contains("differing: 10, 30"), "{out}");
}
