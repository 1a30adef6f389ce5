//! Many collections in one database: every collection's reader streams, its lease holds,
//! and a write to any of them reaches the target. With one connection pool for 60 change
//! streams and their leases, waiting `getMore`s made renewals late: leases were lost over
//! and over ("lease not renewed in time") and writes took seconds. Leases and checkpoints
//! now have a pool of their own, and the streams one connection each.

mod common;

use std::time::Duration;

use bson::{doc, Document};

use common::Setup;

const COLLECTIONS: usize = 60;

#[tokio::test]
async fn sixty_collections_stream_with_their_leases_held() {
    let setup = Setup::new("many");
    let config = std::fs::read_to_string(setup.config()).unwrap().replace("partitions = 8", "partitions = 1");
    let path = setup.dir.path().join("many.toml");
    std::fs::write(&path, config).unwrap();
    let source = common::mongo(&common::source_uri()).await;
    let db = source.database(&setup.db);
    for i in 0..COLLECTIONS {
        db.collection::<Document>(&format!("c{i:02}")).insert_one(doc! {"_id": "copied"}).await.unwrap();
    }
    let mut run = setup.spawn_with("run", &path, &[]);
    let target = common::mongo(&common::target_uri()).await;
    let tdb = target.database(&setup.db);
    let count_all = |id: &'static str| {
        let tdb = tdb.clone();
        async move {
            let mut n = 0;
            for i in 0..COLLECTIONS {
                n += tdb.collection::<Document>(&format!("c{i:02}")).count_documents(doc! {"_id": id}).await.unwrap_or(0);
            }
            n as usize
        }
    };
    common::eventually(Duration::from_secs(120), "every collection copied", || async { count_all("copied").await == COLLECTIONS }).await;
    for i in 0..COLLECTIONS {
        db.collection::<Document>(&format!("c{i:02}")).insert_one(doc! {"_id": "streamed"}).await.unwrap();
    }
    common::eventually(Duration::from_secs(120), "every collection's streamed insert", || async { count_all("streamed").await == COLLECTIONS }).await;
    let log = run.log_text();
    assert!(!log.contains("lease not renewed in time"), "leases were lost:\n{}", log.lines().filter(|l| l.contains("lease not renewed")).take(5).collect::<Vec<_>>().join("\n"));
    assert_eq!(run.terminate(Duration::from_secs(20)), Some(0));
}
