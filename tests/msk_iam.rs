//! `kafka.auth = "msk_iam"` against AWS's own code, since there is no MSK here:
//! - docrepl's token and the one AWS's Java signer (`aws-msk-iam-auth`'s
//!   `IAMOAuthBearerLoginCallbackHandler`) makes for the same credentials, region and
//!   second carry the same signed request and signature;
//! - the pipeline through an Apache Kafka whose OAUTHBEARER listener checks every token
//!   as MSK does, by recomputing its SigV4 signature with the AWS SDK for Java
//!   (tests/msk_iam/SigV4TokenValidator.java), with credentials that expire every 15 s
//!   (a `credential_process` that hands out a new key each time) and sessions that must
//!   re-authenticate before their token dies: nothing lost, nothing sent twice;
//! - a token for the wrong region is refused, and the start stops with one line, exit 2.
//!
//! The Java programs are compiled here against the jars scripts/setup.sh caches
//! (`DOCREPL_MSK_IAM_LIBS`, `DOCREPL_KAFKA_LIBS`).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use bson::{doc, Document};
use common::kafka_cluster::KafkaCluster;
use common::Setup;

const KEYSTORE_PASSWORD: &str = "keystore-pw";
const REGION: &str = "us-east-1";
/// The principal the validator gives every accepted token (a super user of the broker).
const PRINCIPAL: &str = "docrepl-iam";

fn cached(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| format!("{}/.cache/docrepl/{default}", std::env::var("HOME").unwrap_or_default()))
}

/// The class path of the Java side: the compiled programs, AWS's signer and SDK, Kafka.
struct Java {
    _classes: tempfile::TempDir,
    classpath: String,
}

fn compile_java() -> Java {
    let msk = cached("DOCREPL_MSK_IAM_LIBS", "aws-msk-iam-auth-2.4.0/libs");
    let kafka = cached("DOCREPL_KAFKA_LIBS", "kafka-4.1.1/libs");
    assert!(Path::new(&msk).join("aws-msk-iam-auth-2.4.0.jar").exists(), "AWS's MSK IAM signer is not in {msk}: run scripts/setup.sh");
    let classes = tempfile::tempdir().unwrap();
    let sources: Vec<PathBuf> = ["AwsSignerToken.java", "SigV4TokenValidator.java", "ServerlessTopicPolicy.java"]
        .iter()
        .map(|f| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/msk_iam").join(f))
        .collect();
    let out = Command::new("javac")
        .arg("-d")
        .arg(classes.path())
        .arg("-cp")
        .arg(format!("{msk}/*:{kafka}/*"))
        .args(&sources)
        .output()
        .expect("javac (Java 17)");
    assert!(out.status.success(), "javac: {}", String::from_utf8_lossy(&out.stderr));
    let classpath = format!("{}:{msk}/*", classes.path().display());
    Java { classpath: format!("{classpath}:{kafka}/*"), _classes: classes }
}

fn token_params(token: &str) -> (url::Url, HashMap<String, String>) {
    let url = String::from_utf8(base64::prelude::BASE64_URL_SAFE_NO_PAD.decode(token).expect("base64url")).unwrap();
    let url = url::Url::parse(&url).expect("a URL");
    let params = url.query_pairs().into_owned().collect();
    (url, params)
}

#[test]
fn docrepl_signs_what_aws_java_signer_signs() {
    let java = compile_java();
    let (key, secret, session) = ("AKIDEXAMPLEDOCREPL", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "FwoGZXIvYXdzEXAMPLE//token+=");
    let java_token = || {
        let out = Command::new("java")
            .arg("-cp")
            .arg(&java.classpath)
            .arg(format!("-Daws.accessKeyId={key}"))
            .arg(format!("-Daws.secretAccessKey={secret}"))
            .arg(format!("-Daws.sessionToken={session}"))
            .arg(format!("-Daws.region={REGION}"))
            .arg("AwsSignerToken")
            .env_remove("AWS_PROFILE")
            .output()
            .expect("java");
        assert!(out.status.success(), "AwsSignerToken: {}", String::from_utf8_lossy(&out.stderr));
        let theirs = String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or_default().to_string();
        token_params(&theirs)
    };
    // AWS's Java signer now and then signs `X-Amz-Expires=899` (seen once, in the full
    // suite of 2026-12-07: its expiry lands a fraction of a second short of 900 s after
    // the second it puts in X-Amz-Date). MSK takes that too, but a signature over another
    // query cannot be compared: asked again, it signs the 900 docrepl always signs.
    let (their_url, their_params) = (0..5).map(|_| java_token()).find(|(_, p)| p["X-Amz-Expires"] == "900").expect("AWS's Java signer never signed X-Amz-Expires=900 in five runs");

    // Signed at the second the Java signer signed.
    let date = &their_params["X-Amz-Date"];
    let rfc3339 = format!("{}-{}-{}T{}:{}:{}Z", &date[0..4], &date[4..6], &date[6..8], &date[9..11], &date[11..13], &date[13..15]);
    let signed_at = humantime::parse_rfc3339(&rfc3339).unwrap_or_else(|e| panic!("X-Amz-Date {date:?}: {e}"));
    let credentials = aws_credential_types::Credentials::new(key, secret, Some(session.into()), None, "test");
    let ours = docrepl::kafka::msk_iam::token::sign(REGION, &credentials, signed_at, "docrepl/test").unwrap();
    let (our_url, our_params) = token_params(&ours.value);

    assert_eq!(our_url.host_str(), their_url.host_str());
    assert_eq!(our_url.scheme(), their_url.scheme());
    let signed = |p: &HashMap<String, String>| p.iter().filter(|(k, _)| k.as_str() != "User-Agent").map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>();
    assert_eq!(signed(&our_params), signed(&their_params), "docrepl's token differs from AWS's signer's");
    assert!(their_params["User-Agent"].starts_with("aws-msk-iam-auth/"), "{their_params:?}");
    assert_eq!(ours.expires_at, signed_at + Duration::from_secs(900));
}

/// What the validator and the credentials live in.
struct IamBroker {
    cluster: KafkaCluster,
    _certs: tempfile::TempDir,
    files: tempfile::TempDir,
    ca: PathBuf,
    _java: Java,
}

impl IamBroker {
    fn start(base_port: u16) -> IamBroker {
        let java = compile_java();
        let certs = tempfile::tempdir().unwrap();
        let (ca, _) = common::make_certificates(certs.path());
        common::broker_keystore(certs.path(), KEYSTORE_PASSWORD);
        let files = tempfile::tempdir().unwrap();
        std::fs::write(files.path().join("keys"), "").unwrap();
        let jaas = format!(
            "region=\"{REGION}\" keys=\"{}\" log=\"{}\"",
            files.path().join("keys").display(),
            files.path().join("validations").display()
        );
        let tls_dir = certs.path().to_string_lossy().into_owned();
        let super_user = format!("User:{PRINCIPAL}");
        let cluster = KafkaCluster::start_with(
            base_port,
            1,
            &[
                ("DOCREPL_KAFKA_TLS_DIR", &tls_dir),
                ("DOCREPL_KAFKA_KEYSTORE_PASSWORD", KEYSTORE_PASSWORD),
                ("DOCREPL_KAFKA_IAM_JAAS", &jaas),
                ("DOCREPL_KAFKA_IAM_VALIDATOR", "SigV4TokenValidator"),
                ("DOCREPL_KAFKA_EXTRA_CLASSPATH", &java.classpath),
                ("DOCREPL_KAFKA_IAM_SUPER_USERS", &super_user),
                // Sessions live as long as their token (at most this): with 15 s
                // credentials every connection re-authenticates a few times a minute.
                ("DOCREPL_KAFKA_IAM_REAUTH_MS", "60000"),
                ("DOCREPL_KAFKA_CREATE_TOPIC_POLICY", "ServerlessTopicPolicy"),
            ],
        );
        IamBroker { cluster, _certs: certs, files, ca, _java: java }
    }

    fn iam_port(&self) -> u16 {
        self.cluster.port(1) + 7
    }

    /// An AWS config whose default profile's `credential_process` hands out a new key,
    /// valid `lifetime_s`, at every call, and tells the validator about it.
    fn rotating_credentials(&self, lifetime_s: u64) -> Vec<(String, String)> {
        let script = self.files.path().join("credentials.py");
        std::fs::write(
            &script,
            r#"import json, os, secrets, sys, time
keys, lifetime = sys.argv[1], int(sys.argv[2])
expires = time.time() + lifetime
key = "ASIA" + secrets.token_hex(8).upper()
secret, session = secrets.token_urlsafe(30), "IQoJb3JpZ2luX2Vj" + secrets.token_urlsafe(40)
with open(keys, "a") as f:
    f.write(f"{key} {secret} {session} {int(expires * 1000)} docrepl-iam\n")
print(json.dumps({"Version": 1, "AccessKeyId": key, "SecretAccessKey": secret, "SessionToken": session,
                  "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))}))
"#,
        )
        .unwrap();
        let config = self.files.path().join("aws-config");
        std::fs::write(&config, format!("[default]\ncredential_process = python3 {} {} {lifetime_s}\n", script.display(), self.files.path().join("keys").display())).unwrap();
        vec![
            ("AWS_CONFIG_FILE".into(), config.display().to_string()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), self.files.path().join("no-credentials").display().to_string()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("AWS_PROFILE".into(), "default".into()),
        ]
    }

    fn validations(&self) -> String {
        std::fs::read_to_string(self.files.path().join("validations")).unwrap_or_default()
    }

    fn setup(&self, name: &str, region: &str) -> Setup {
        let mut setup = Setup::new(name);
        setup.bootstrap = format!("127.0.0.1:{}", self.iam_port());
        setup.source_extra = "collections = [\"c\"]".into();
        setup.kafka_extra = format!("auth = \"msk_iam\"\naws_region = {region:?}\n[kafka.properties]\n\"ssl.ca.location\" = {:?}", self.ca.display().to_string());
        setup.env = self.rotating_credentials(15);
        setup
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_through_sigv4_checked_tokens_as_credentials_expire() {
    let broker = IamBroker::start(19700);
    let setup = broker.setup("mskiam", REGION);
    let coll = common::mongo(&common::source_uri()).await.database(&setup.db).collection::<Document>("c");
    coll.insert_one(doc! {"_id": -1, "v": 0}).await.unwrap();
    let source = setup.spawn("source", &[]);
    let sink = setup.spawn("sink", &[]);
    common::eventually(Duration::from_secs(90), "the source streaming", || {
        let source = &source;
        async move { source.log_text().contains("streaming changes") }
    })
    .await;

    // 45 s of changes: three generations of 15 s credentials, each connection
    // re-authenticating with a token signed by the next.
    let mut changes = 0;
    let started = std::time::Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(45) {
        coll.insert_one(doc! {"_id": round, "v": 0}).await.unwrap();
        coll.update_one(doc! {"_id": round / 2}, doc! {"$inc": {"v": 1}}).await.unwrap();
        changes += 2;
        round += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    coll.delete_one(doc! {"_id": 0}).await.unwrap();
    changes += 1;

    let (code, out) = common::verify(&setup.config(), 120);
    assert_eq!(code, Some(0), "through the IAM listener:\n{out}\n{}\n{}\n{}", source.log_text(), sink.log_text(), broker.validations());

    // Every change on the topic once (the copied document, then the stream, and the
    // tombstone after the delete): a connection that failed to re-authenticate would have
    // failed a delivery and made the reader send again from its last checkpoint.
    use rdkafka::Message;
    let expected = changes + 1 + 1;
    let topic = setup.topic("c");
    let bootstrap = broker.cluster.bootstrap();
    common::consume_from(&bootstrap, &topic, Duration::from_secs(60), |m| m.len() >= expected).await;
    let messages = common::consume_from(&bootstrap, &topic, Duration::from_secs(5), |m| m.len() > expected).await;
    assert_eq!(messages.len(), expected, "events on {topic}");
    let events: std::collections::HashSet<&[u8]> = messages.iter().filter_map(|m| m.payload()).collect();
    assert_eq!(events.len(), expected - 1, "every event once, one tombstone");

    let validations = broker.validations();
    let keys: std::collections::HashSet<&str> = validations.lines().filter_map(|l| l.split_whitespace().nth(2).filter(|_| l.contains(" accepted "))).collect();
    assert!(keys.len() >= 4, "tokens of at least four credentials were checked and accepted:\n{validations}");
    let accepted = validations.lines().filter(|l| l.contains(" accepted ")).count();
    eprintln!("{expected} events once each; {accepted} tokens of {} credentials accepted, none refused", keys.len());
    let auth_lines = |log: String| log.lines().filter(|l| l.contains("uthenticat") || l.contains("OAUTHBEARER") || l.contains("token")).take(20).collect::<Vec<_>>().join("\n");
    assert!(!validations.contains("refused"), "{validations}\nsource:\n{}\nsink:\n{}", auth_lines(source.log_text()), auth_lines(sink.log_text()));
    for log in [source.log_text(), sink.log_text()] {
        // Not even an access key id (the AWS SDK logs them at info).
        assert!(!log.contains("SecretAccessKey") && !log.contains("IQoJb3JpZ2luX2Vj") && !log.contains(" ASIA") && !log.contains("\"ASIA"), "a credential was logged:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_the_cluster_say_what_to_change() {
    let broker = IamBroker::start(19720);

    // A token signed for another region than the cluster's.
    let setup = broker.setup("mskregion", "eu-west-1");
    let (code, log) = setup.run_to_exit("sink");
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("refused docrepl's MSK IAM token") && log.contains("kafka.aws_region (eu-west-1)"), "{log}");
    let validations = broker.validations();
    assert!(validations.contains("refused: token for https://kafka.eu-west-1.amazonaws.com"), "{validations}");

    // Topic settings the cluster's policy refuses (MSK Serverless: max.message.bytes at
    // most 8 MiB), which --check cannot see on a cluster not named as Serverless.
    let mut setup = broker.setup("msklimit", REGION);
    setup.kafka_extra = setup.kafka_extra.replacen("auth = ", "max_message_bytes = 9000000\nauth = ", 1);
    let (code, log) = setup.run_to_exit("source");
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {log}");
    assert!(log.contains("refused the topic's settings (max.message.bytes=9065536)") && log.contains("set kafka.max_message_bytes within it"), "{log}");
}
