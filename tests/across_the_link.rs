//! The pipeline across an emulated WAN link (see `docrepl::link`), with the broker and a
//! mongod reached through it end to end, in both placements of the broker:
//!
//! - A, broker in the target region: the source produces across the link. Its bootstrap
//!   address is the link's near end; the link leads to a listener of the broker that
//!   advertises the link's near end in its metadata (`DOCREPL_TEST_BROKER_LINKS`, set up by
//!   `scripts/services.sh`), so every broker connection the source makes crosses the link,
//!   while the sink reads the broker's plain listener directly.
//! - B, broker in the source region: the sink consumes across the link the same way, and
//!   writes a target reached through a second link (`directConnection=true`: the member is
//!   known by the link's address only).
//!
//! Both end with `verify` equal, and bytes counted on every link.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Document};
use docrepl::link::{Link, Shape, Shapes};

use common::Setup;

/// 2 x 25 ms: a 50 ms round trip, the nearest region pairs.
fn wan() -> Shapes {
    let shape = Shape { delay: Duration::from_millis(25), jitter: Duration::ZERO, rate_bits: Some(200_000_000) };
    Shapes { up: shape, down: shape }
}

fn addr(uri: &str) -> SocketAddr {
    let host = uri.trim_start_matches("mongodb://").split(['/', '?']).next().unwrap();
    host.parse().unwrap()
}

/// The broker's listeners for clients across a link: (listen, advertised) port pairs, from
/// `DOCREPL_TEST_BROKER_LINKS` ("LISTEN>ADVERTISED ..."; the defaults of scripts/lib.sh).
fn broker_link_ports() -> Vec<(u16, u16)> {
    let pairs = std::env::var("DOCREPL_TEST_BROKER_LINKS").unwrap_or_else(|_| "19095>19094 19097>19096".into());
    pairs
        .split_whitespace()
        .map(|pair| {
            let (listen, advertised) = pair.split_once('>').expect("LISTEN>ADVERTISED");
            (listen.parse().expect("a port"), advertised.parse().expect("a port"))
        })
        .collect()
}

/// A link to the broker's listener number `which`: the link's near end is the address that
/// listener advertises, so a client that bootstraps there keeps crossing the link.
async fn kafka_across_the_link(which: usize) -> Arc<Link> {
    let (listen, advertised) = broker_link_ports()[which];
    Link::start(format!("127.0.0.1:{advertised}").parse().unwrap(), format!("127.0.0.1:{listen}").parse().unwrap(), wan())
        .await
        .unwrap_or_else(|e| panic!("the link on 127.0.0.1:{advertised} (to the broker's listener on {listen}): {e}"))
}

async fn load(setup: &Setup) {
    let coll = common::mongo(&common::source_uri()).await.database(&setup.db).collection::<Document>("c");
    coll.insert_many((0..2000).map(|i| doc! {"_id": i, "v": 0, "pad": "x".repeat(100)})).await.unwrap();
}

async fn changes(setup: &Setup) {
    let coll = common::mongo(&common::source_uri()).await.database(&setup.db).collection::<Document>("c");
    coll.update_many(doc! {"_id": {"$lt": 500}}, doc! {"$inc": {"v": 1}}).await.unwrap();
    coll.delete_many(doc! {"_id": {"$gte": 1900}}).await.unwrap();
    coll.insert_many((2000..2500).map(|i| doc! {"_id": i, "v": 2})).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_replicates_across_the_link_with_the_broker_on_either_side() {
    // A: the source produces across the link.
    let mut a = Setup::new("wana");
    a.source_extra = "collections = [\"c\"]".into();
    load(&a).await;
    let link_a = kafka_across_the_link(0).await;
    let source_cfg = {
        let text = std::fs::read_to_string(a.config()).unwrap();
        let text = text.replacen(&format!("bootstrap_servers = {:?}", common::broker()), &format!("bootstrap_servers = \"{}\"", link_a.local_addr), 1);
        let path = a.dir.path().join("source-across.toml");
        std::fs::write(&path, text).unwrap();
        path
    };
    let src_a = a.spawn_with("source", &source_cfg, &[]);
    let sink_a = a.spawn("sink", &[]);

    // B: the sink consumes across one link and writes the target across another.
    let mut b = Setup::new("wanb");
    b.source_extra = "collections = [\"c\"]".into();
    load(&b).await;
    let link_b = kafka_across_the_link(1).await;
    let target_link = Link::start("127.0.0.1:0".parse().unwrap(), addr(&common::target_uri()), wan()).await.unwrap();
    let sink_cfg = {
        let text = std::fs::read_to_string(b.config()).unwrap();
        let text = text.replacen(&format!("bootstrap_servers = {:?}", common::broker()), &format!("bootstrap_servers = \"{}\"", link_b.local_addr), 1);
        let text = text.replace(&common::target_uri(), &format!("mongodb://{}/?directConnection=true", target_link.local_addr));
        let path = b.dir.path().join("sink-across.toml");
        std::fs::write(&path, text).unwrap();
        path
    };
    let src_b = b.spawn("source", &[]);
    let sink_b = b.spawn_with("sink", &sink_cfg, &[]);

    changes(&a).await;
    changes(&b).await;
    for (name, setup, logs) in [("A (broker in the target region)", &a, [&src_a, &sink_a]), ("B (broker in the source region)", &b, [&src_b, &sink_b])] {
        let (code, out) = common::verify(&setup.config(), 120);
        assert_eq!(code, Some(0), "placement {name}: the target differs:\n{out}\nsource:\n{}\nsink:\n{}", logs[0].log_text(), logs[1].log_text());
    }
    // The documents crossed each link in its heavy direction (the other carries
    // acknowledgements and requests).
    for (what, link, documents_up) in [("A's Kafka link", &link_a, true), ("B's Kafka link", &link_b, false), ("B's target link", &target_link, true)] {
        let stats = link.stats();
        let (heavy, light) = if documents_up { (stats.bytes_up, stats.bytes_down) } else { (stats.bytes_down, stats.bytes_up) };
        assert!(heavy > 20_000 && light > 0, "{what} carried {stats:?}");
    }
}
