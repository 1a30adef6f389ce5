//! Bad configuration at start: each case gives one clear line naming the key and what is
//! expected, and exit code 2, without touching any server; unreachable peers at start give
//! a clear message and a bounded, non-zero exit.

use std::process::Command;

const GOOD: &str = r#"
[source]
uri = "mongodb://127.0.0.1:27117/?replicaSet=rs-source"
database = "app"
collections = ["orders"]

[sink]
uri = "mongodb://127.0.0.1:27217/?replicaSet=rs-target"

[kafka]
bootstrap_servers = "127.0.0.1:19092"
"#;

/// Runs `docrepl <cmd> --config <file with text> --check` and returns (exit code, stderr, stdout).
fn check(cmd: &str, text: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docrepl.toml");
    std::fs::write(&path, text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_docrepl"));
    command.args([cmd, "--config"]).arg(&path).arg("--check");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn good_config_passes_check_and_hides_secrets() {
    let text = GOOD.replace("mongodb://127.0.0.1:27217", "mongodb://writer:topsecret@127.0.0.1:27217");
    let (code, err, out) = check("run", &text, &[("DOCREPL_KAFKA__PROPERTIES__SASL_PASSWORD", "kafkapw")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("config OK"), "{out}");
    assert!(out.contains("writer:***@"), "{out}");
    assert!(!out.contains("topsecret") && !out.contains("kafkapw"), "{out}");
}

#[test]
fn unknown_key_names_the_key() {
    let text = GOOD.replace("[kafka]", "[kafka]\npartitons = 8");
    let (code, err, _) = check("source", &text, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("`kafka`") && err.contains("unknown field `partitons`") && err.contains("partitions"), "{err}");
}

#[test]
fn missing_required_key_names_it() {
    let text = GOOD.replacen("uri = \"mongodb://127.0.0.1:27117", "url = \"mongodb://127.0.0.1:27117", 1);
    let (code, err, _) = check("source", &text, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("`source`") && (err.contains("missing field `uri`") || err.contains("unknown field `url`")), "{err}");
    // Without a database: says both ways to name them.
    let text = GOOD.replace("database = \"app\"\n", "");
    let (code, err, _) = check("source", &text, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("source.database") && err.contains("source.databases = [\"app\", \"billing\"]"), "{err}");
    // Both, or collections without a single database: refused with what to do.
    let text = GOOD.replace("database = \"app\"\n", "databases = [\"app\", \"billing\"]\n");
    let (code, err, _) = check("source", &text, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("source.collections") && err.contains("source.include"), "{err}");
    let text = GOOD.replace("database = \"app\"\n", "database = \"app\"\ndatabases = [\"*\"]\ninclude = [\"nodot\"]\n");
    let (code, err, _) = check("source", &text, &[]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn bad_uri_is_explained() {
    let text = GOOD.replace("mongodb://127.0.0.1:27117", "mongo://127.0.0.1:27117");
    let (code, err, _) = check("source", &text, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("source.uri") && err.contains("expected mongodb://"), "{err}");
}

#[test]
fn impossible_value_from_env_is_rejected() {
    let (code, err, _) = check("sink", GOOD, &[("DOCREPL_KAFKA__PARTITIONS", "0")]);
    assert_eq!(code, 2);
    assert!(err.contains("kafka.partitions") && err.contains("at least 1 (got 0)"), "{err}");
}

#[test]
fn wrong_type_names_the_key() {
    let text = GOOD.replace("[kafka]", "[kafka]\npartitions = \"eight\"");
    let (code, err, _) = check("sink", &text, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("kafka.partitions") && err.contains("expected i32"), "{err}");
}

#[test]
fn missing_file_and_bad_toml() {
    let out = Command::new(env!("CARGO_BIN_EXE_docrepl"))
        .args(["source", "--config", "/nonexistent/docrepl.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file /nonexistent/docrepl.toml"));

    let (code, err, _) = check("source", "[kafka\nbootstrap_servers = 1", &[]);
    assert_eq!(code, 2);
    assert!(err.contains("not valid TOML"), "{err}");
}

#[test]
fn sink_needs_its_section() {
    let text = GOOD.split("[sink]").next().unwrap().to_string() + "[kafka]\nbootstrap_servers = \"127.0.0.1:19092\"\n";
    let (code, err, _) = check("sink", &text, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("[sink] is required"), "{err}");
}

/// Runs `docrepl <cmd> --config <file>` (no --check) and returns (exit code, stderr, seconds).
fn start(cmd: &str, text: &str) -> (i32, String, f64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docrepl.toml");
    std::fs::write(&path, text).unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_docrepl")).args([cmd, "--config"]).arg(&path).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned(), started.elapsed().as_secs_f64())
}

/// An unreachable cluster or broker at start: a clear message naming what and where, a
/// non-zero exit, and no hang (every wait is bounded). Port 1 on loopback refuses.
#[test]
fn unreachable_peers_at_start_fail_with_a_clear_message() {
    let text = GOOD.replace("mongodb://127.0.0.1:27117/?replicaSet=rs-source", "mongodb://127.0.0.1:1/?replicaSet=rs-source")
        + "[http]\nlisten = \"127.0.0.1:0\"\n";
    let (code, err, secs) = start("source", &text);
    assert!(code != 0 && code != 2, "exit {code}: {err}");
    assert!(err.contains("cannot reach the cluster at mongodb://127.0.0.1:1") && err.contains("source.uri"), "{err}");
    assert!(secs < 60.0, "took {secs} s");

    let text = GOOD.replace("mongodb://127.0.0.1:27217/?replicaSet=rs-target", "mongodb://127.0.0.1:1/?replicaSet=rs-target")
        + "[http]\nlisten = \"127.0.0.1:0\"\n";
    let (code, err, _) = start("sink", &text);
    assert!(code != 0 && err.contains("cannot reach the cluster at mongodb://127.0.0.1:1") && err.contains("sink.uri"), "exit {code}: {err}");

    let broker = std::env::var("DOCREPL_TEST_BROKER").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let text = GOOD.replace(&format!("bootstrap_servers = \"127.0.0.1:19092\""), "bootstrap_servers = \"127.0.0.1:1\"")
        .replace("127.0.0.1:19092", &broker)
        + "[http]\nlisten = \"127.0.0.1:0\"\n";
    let (code, err, secs) = start("sink", &text);
    assert!(code != 0 && err.contains("127.0.0.1:1") && err.to_lowercase().contains("broker"), "exit {code}: {err}");
    assert!(secs < 60.0, "took {secs} s");
}

/// The environment of a process with no AWS identity at all: no keys, no profile files,
/// no instance metadata (it would be tried at 169.254.169.254), no container credentials.
fn without_aws_identity(command: &mut Command, home: &std::path::Path) {
    for (key, _) in std::env::vars() {
        if key.starts_with("AWS_") {
            command.env_remove(key);
        }
    }
    command
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", home.join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("no-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true");
}

const MSK_IAM: &str = "[kafka]\nauth = \"msk_iam\"\naws_region = \"us-east-1\"\naws_role_arn = \"arn:aws:iam::123456789012:role/docrepl-source\"";

#[test]
fn msk_iam_is_checked_and_printed() {
    let text = GOOD.replace("[kafka]", MSK_IAM).replace("127.0.0.1:19092", "b-1.orders.abc123.c2.kafka.us-east-1.amazonaws.com:9098");
    let (code, err, out) = check("source", &text, &[("DOCREPL_KAFKA__PROPERTIES__SSL_KEY_PASSWORD", "keypw")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("auth = \"msk_iam\"") && out.contains("aws_region = \"us-east-1\""), "{out}");
    assert!(!out.contains("keypw"), "{out}");

    // The region of the token must be the brokers'.
    let other = text.replace("aws_region = \"us-east-1\"", "aws_region = \"eu-west-1\"");
    let (code, err, _) = check("source", &other, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("kafka.aws_region") && err.contains("\"us-east-1\""), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    for (from, to, key) in [
        ("aws_region = \"us-east-1\"", "aws_region = \"us-east\"", "kafka.aws_region"),
        ("arn:aws:iam::123456789012:role/docrepl-source", "docrepl-source", "kafka.aws_role_arn"),
        ("auth = \"msk_iam\"", "auth = \"properties\"", "kafka.aws_region"),
        ("auth = \"msk_iam\"", "auth = \"msk_iam\"\nproperties = { \"sasl.mechanism\" = \"SCRAM-SHA-512\" }", "sasl.mechanism"),
    ] {
        let (code, err, _) = check("source", &text.replace(from, to), &[]);
        assert_eq!(code, 2, "{to}: {err}");
        assert!(err.contains(key), "{to}: {err}");
    }
}

#[test]
fn msk_serverless_limits_are_checked_before_the_start() {
    let serverless = GOOD.replace("127.0.0.1:19092", "boot-abcd1234.c1.kafka-serverless.eu-west-1.amazonaws.com:9098");
    let (code, err, _) = check("source", &serverless, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("kafka.auth") && err.contains("MSK Serverless"), "{err}");

    let iam = serverless.replace("[kafka]", "[kafka]\nauth = \"msk_iam\"");
    let (code, out, _) = check("source", &iam, &[]);
    assert_eq!(code, 0, "{out}");
    let (code, err, _) = check("source", &iam.replace("[kafka]", "[kafka]\nmax_message_bytes = 8388608"), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("kafka.max_message_bytes") && err.contains("at most 8323072"), "{err}");
    let (code, err, _) = check("source", &iam.replace("[kafka]", "[kafka]\nmax_message_bytes = 8323072"), &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn msk_iam_without_credentials_or_region_stops_the_start() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docrepl.toml");
    let run = |text: &str, env: &[(&str, &str)]| {
        std::fs::write(&path, text).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_docrepl"));
        command.args(["source", "--config"]).arg(&path);
        without_aws_identity(&mut command, home.path());
        command.envs(env.iter().copied());
        let out = command.output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let text = GOOD.replace("[kafka]", "[kafka]\nauth = \"msk_iam\"\naws_region = \"us-east-1\"");
    let (code, err) = run(&text, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no AWS credentials found") && err.contains("AWS_PROFILE"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("docrepl:")).count(), 1, "{err}");

    // Credentials, but no region anywhere: not in the config, the brokers' names, or AWS_REGION.
    let keys = [("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"), ("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")];
    let (code, err) = run(&text.replace("aws_region = \"us-east-1\"", ""), &keys);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("kafka.aws_region is not set"), "{err}");
    assert!(!err.contains("not-a-real-secret"), "{err}");
}

#[test]
fn a_password_file_that_cannot_be_read_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-secret");
    let text = GOOD.replacen("uri = \"mongodb://127.0.0.1:27117", "uri = \"mongodb://docrepl@127.0.0.1:27117", 1).replacen(
        "database = \"app\"",
        &format!("password_file = {:?}\ndatabase = \"app\"", missing.display().to_string()),
        1,
    );
    // --check names where the password comes from without reading it.
    let (code, err, out) = check("source", &text, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("password_file = "), "{out}");
    let (code, err, secs) = start("source", &text);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("source.password_file") && err.contains("cannot read"), "{err}");
    assert!(secs < 10.0, "took {secs} s");
}
