//! The pipeline across an emulated WAN link (see `docrepl::link`), with the broker and a
//! mongod reached through it end to end, in both placements of the broker:
//!
//! - A, broker in the target region: the source produces across the link. Its bootstrap
//!   address is the link's near end; the link leads to a Kafka-protocol proxy (nisshi's
//!   `proxy`) that advertises the link's near end in its metadata, so every broker
//!   connection the source makes crosses the link, while the sink reads the broker directly.
//! - B, broker in the source region: the sink consumes across the link the same way, and
//!   writes a target reached through a second link (`directConnection=true`: the member is
//!   known by the link's address only).
//!
//! Both end with `verify` equal, and bytes counted on every link.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
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

/// A Kafka-protocol proxy process, stopped when dropped (a failing test too).
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Kafka-protocol proxy on `listen` that forwards to the test broker and advertises
/// `advertised` (the link's near end) to its clients.
fn kafka_proxy(listen: u16, advertised: SocketAddr) -> Proxy {
    let bin = std::env::var("DOCREPL_NISSHI_BIN").expect("DOCREPL_NISSHI_BIN (set by scripts/test.sh)");
    let child = Command::new(bin)
        .args(["proxy", "--listener-url", &format!("tcp://127.0.0.1:{listen}"), "--advertised-listener-url", &format!("tcp://{advertised}")])
        .args(["--origin-url", &format!("tcp://{}", common::broker())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the Kafka proxy");
    Proxy(child)
}

/// A free loopback port (the proxy binds it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A link to a Kafka proxy, and the proxy: the link's near end is the broker address a
/// client across it uses.
async fn kafka_across_the_link() -> (Arc<Link>, Proxy) {
    let proxy_port = free_port();
    let link = Link::start("127.0.0.1:0".parse().unwrap(), format!("127.0.0.1:{proxy_port}").parse().unwrap(), wan()).await.unwrap();
    let proxy = kafka_proxy(proxy_port, link.local_addr);
    // A client started before the proxy listens would find no broker at all.
    common::eventually(Duration::from_secs(30), "the Kafka proxy to listen", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", proxy_port)).await.is_ok()
    })
    .await;
    (link, proxy)
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
    let (link_a, _proxy_a) = kafka_across_the_link().await;
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
    let (link_b, _proxy_b) = kafka_across_the_link().await;
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
