//! docrepl against Apache Kafka secured as production clusters are: SASL/SCRAM-SHA-512
//! over TLS, Kafka's own StandardAuthorizer, and a principal that holds only the ACLs
//! docrepl needs (the README lists them). The pipeline replicates through it; a wrong
//! password, a missing ACL and an untrusted certificate each stop the start with one line
//! that says which, exit 2, and no log line carries the password.

mod common;

use std::path::Path;
use std::process::Command;

use bson::{doc, Document};
use common::kafka_cluster::KafkaCluster;
use common::Setup;

const PASSWORD: &str = "s3cret-Scram-pw";
const KEYSTORE_PASSWORD: &str = "keystore-pw";

/// A second CA that signed nothing the broker has.
fn stranger_ca(dir: &Path) -> std::path::PathBuf {
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=another CA"])
        .current_dir(&other)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    other.join("ca.pem")
}

/// The ACLs docrepl needs, for `user`, on the topics under `prefix` and the groups under
/// `group` (left out when `with_group` is false: the missing-ACL case).
fn grant(cluster: &KafkaCluster, user: &str, prefix: &str, group: &str, with_group: bool) {
    let principal = format!("User:{user}");
    cluster.tool(
        "org.apache.kafka.tools.AclCommand",
        &["--add", "--allow-principal", &principal, "--resource-pattern-type", "prefixed", "--topic", prefix,
          "--operation", "Create", "--operation", "Describe", "--operation", "DescribeConfigs", "--operation", "Write", "--operation", "Read"],
    );
    if with_group {
        cluster.tool(
            "org.apache.kafka.tools.AclCommand",
            &["--add", "--allow-principal", &principal, "--resource-pattern-type", "prefixed", "--group", group, "--operation", "Read", "--operation", "Describe"],
        );
    }
}

fn secure_setup(name: &str, cluster: &KafkaCluster, user: &str, password: &str, ca: &Path) -> Setup {
    let mut setup = Setup::new(name);
    setup.bootstrap = format!("127.0.0.1:{}", cluster.secure_port(1));
    setup.source_extra = "collections = [\"c\"]".into();
    setup.kafka_extra = format!(
        "[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = {user:?}\n\"sasl.password\" = {password:?}\n\"ssl.ca.location\" = {:?}",
        ca.display().to_string()
    );
    setup
}

fn assert_no_secret(what: &str, log: &str) {
    assert!(!log.contains(PASSWORD) && !log.contains(KEYSTORE_PASSWORD), "{what} logged a password:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_over_tls_with_only_the_needed_acls_and_each_refusal_said() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, _) = common::make_certificates(certs.path());
    common::broker_keystore(certs.path(), KEYSTORE_PASSWORD);
    let tls_dir = certs.path().to_string_lossy().into_owned();
    let users = format!("docrepl:{PASSWORD} partial:{PASSWORD}");
    let cluster = KafkaCluster::start_with(
        19600,
        1,
        &[("DOCREPL_KAFKA_TLS_DIR", &tls_dir), ("DOCREPL_KAFKA_KEYSTORE_PASSWORD", KEYSTORE_PASSWORD), ("DOCREPL_KAFKA_SCRAM_USERS", &users)],
    );

    // The pipeline, as user docrepl holding only the ACLs the README lists.
    let setup = secure_setup("scram", &cluster, "docrepl", PASSWORD, &ca);
    grant(&cluster, "docrepl", &setup.prefix, &setup.group, true);
    let source_db = common::mongo(&common::source_uri()).await.database(&setup.db);
    let coll = source_db.collection::<Document>("c");
    coll.insert_many((0..500).map(|i| doc! {"_id": i, "v": 0})).await.unwrap();
    let source = setup.spawn("source", &[]);
    let sink = setup.spawn("sink", &[]);
    coll.update_many(doc! {"_id": {"$lt": 100}}, doc! {"$inc": {"v": 1}}).await.unwrap();
    coll.delete_many(doc! {"_id": {"$gte": 450}}).await.unwrap();
    let (code, out) = common::verify(&setup.config(), 120);
    assert_eq!(code, Some(0), "over SASL_SSL:\n{out}\n{}\n{}", source.log_text(), sink.log_text());
    for (what, log) in [("the source", source.log_text()), ("the sink", sink.log_text()), ("verify", out)] {
        assert_no_secret(what, &log);
    }

    // A wrong password.
    let wrong = secure_setup("scramwrong", &cluster, "docrepl", "not-the-password", &ca);
    let (code, log) = wrong.run_to_exit("sink");
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("refused the SASL credentials of user \"docrepl\""), "{log}");
    assert!(!log.contains("not-the-password"), "the wrong password was logged:\n{log}");

    // A missing ACL: user partial may use the topics but not the consumer group.
    let partial = secure_setup("scrampartial", &cluster, "partial", PASSWORD, &ca);
    grant(&cluster, "partial", &partial.prefix, &partial.group, false);
    let (code, log) = partial.run_to_exit("sink");
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("ACLs do not allow") && log.contains("Group authorization failed"), "{log}");
    assert_no_secret("the sink without its group ACL", &log);

    // A broker certificate signed by a CA docrepl was not told to trust.
    let stranger = stranger_ca(certs.path());
    let untrusting = secure_setup("scramca", &cluster, "docrepl", PASSWORD, &stranger);
    let (code, log) = untrusting.run_to_exit("source");
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("TLS certificate is not trusted") && log.contains("ssl.ca.location"), "{log}");
    assert_no_secret("the source with another CA", &log);
}
