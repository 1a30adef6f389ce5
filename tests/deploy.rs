//! What `deploy/` ships is usable as shipped: every docrepl config (the TOML files and the
//! ones inside Kubernetes ConfigMaps, with their Secrets' environment overrides) passes
//! `--check`; the Kubernetes YAML parses and wires probes, scrape annotations, config and
//! secrets; the systemd units are hardened and pass `systemd-analyze verify`; the
//! dashboard and the alert rules name only documented metrics, which `/metrics` serves.
//! And the deployment shapes it documents work: one source fanned out by two sink groups
//! into two target clusters, one of them reached over TLS with a self-signed CA.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bson::{doc, Document};
use yaml_rust2::{Yaml, YamlLoader};

use common::{http_get, status_addr, OwnMongod, Setup};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn files_under(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read deploy dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path, ext));
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The docrepl command a config is for: `run` with both sides, else the side it has.
fn role_of(text: &str) -> &'static str {
    let table: toml::Table = toml::from_str(text).expect("deploy config is TOML");
    match (table.contains_key("source"), table.contains_key("sink")) {
        (true, true) => "run",
        (true, false) => "source",
        (false, true) => "sink",
        (false, false) => panic!("a config with neither [source] nor [sink]"),
    }
}

/// `docrepl <role> --config <path> --check` with `env` set; panics with the output on failure.
fn check(path: &Path, role: &str, env: &BTreeMap<String, String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_docrepl"))
        .args([role, "--config"])
        .arg(path)
        .arg("--check")
        .env_clear()
        .envs(env)
        .output()
        .expect("run docrepl");
    assert!(
        out.status.success(),
        "{} does not pass `docrepl {role} --check` (env {:?}):\n{}{}",
        path.display(),
        env.keys().collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The example Secrets' passwords are CHANGE-ME: masked wherever they appear.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("CHANGE-ME"), "--check printed a secret from the environment");
}

fn yaml_docs(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).expect("read yaml");
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

/// The Kubernetes objects under deploy/kubernetes, by `kind/name`.
fn kubernetes_objects() -> BTreeMap<String, Yaml> {
    let mut objects = BTreeMap::new();
    for path in files_under(&deploy_dir().join("kubernetes"), "yaml") {
        for doc in yaml_docs(&path) {
            let kind = doc["kind"].as_str().unwrap_or_else(|| panic!("{}: an object without kind", path.display()));
            let name = doc["metadata"]["name"].as_str().unwrap_or_else(|| panic!("{}: {kind} without a name", path.display()));
            assert!(doc["apiVersion"].as_str().is_some(), "{kind}/{name} has no apiVersion");
            objects.insert(format!("{kind}/{name}"), doc);
        }
    }
    objects
}

fn string_map(y: &Yaml) -> BTreeMap<String, String> {
    y.as_hash()
        .map(|h| h.iter().filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

#[test]
fn every_config_file_in_deploy_passes_check() {
    let configs = files_under(&deploy_dir(), "toml");
    assert!(configs.len() >= 4, "expected the local and region-pair configs, found {configs:?}");
    for path in configs {
        let role = role_of(&std::fs::read_to_string(&path).unwrap());
        check(&path, role, &BTreeMap::new());
    }
}

#[test]
fn kubernetes_manifests_parse_and_wire_probes_config_and_secrets() {
    let objects = kubernetes_objects();
    let dir = tempfile::tempdir().unwrap();
    for role in ["source", "sink"] {
        let deployment = &objects.get(&format!("Deployment/docrepl-{role}")).unwrap_or_else(|| panic!("no Deployment for the {role}"));
        assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(2), "{role}: two replicas (standby / group member)");
        let pod = &deployment["spec"]["template"];
        assert_eq!(pod["metadata"]["annotations"]["prometheus.io/scrape"].as_str(), Some("true"));
        let container = &pod["spec"]["containers"][0];
        assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
        assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
        let args: Vec<&str> = container["args"].as_vec().unwrap().iter().filter_map(Yaml::as_str).collect();
        assert_eq!(args[0], role);
        let service = &objects[&format!("Service/docrepl-{role}")];
        assert_eq!(service["metadata"]["annotations"]["prometheus.io/path"].as_str(), Some("/metrics"));

        // The config the pod reads: the ConfigMap's file at the path in args.
        let volumes = pod["spec"]["volumes"].as_vec().unwrap();
        let config_volume = volumes.iter().find(|v| v["name"].as_str() == Some("config")).expect("config volume");
        let map_name = config_volume["configMap"]["name"].as_str().unwrap();
        let mount = container["volumeMounts"].as_vec().unwrap().iter().find(|m| m["name"].as_str() == Some("config")).unwrap();
        let file = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
        let key = file.strip_prefix(&format!("{}/", mount["mountPath"].as_str().unwrap())).expect("--config inside the config mount");
        let text = objects[&format!("ConfigMap/{map_name}")]["data"][key].as_str().expect("the config file in the ConfigMap");
        assert_eq!(role_of(text), role);

        // ... with the environment the pod gets: its Secret and its own variables.
        let mut env = BTreeMap::new();
        for from in container["envFrom"].as_vec().unwrap() {
            let secret = from["secretRef"]["name"].as_str().unwrap();
            let secret = objects.get(&format!("Secret/{secret}")).unwrap_or_else(|| panic!("{role} refers to a Secret {secret} that deploy/ does not define"));
            env.extend(string_map(&secret["stringData"]));
        }
        for var in container["env"].as_vec().into_iter().flatten() {
            env.insert(var["name"].as_str().unwrap().to_string(), format!("{role}-pod-0"));
        }
        let path = dir.path().join(format!("{role}.toml"));
        std::fs::write(&path, text).unwrap();
        check(&path, role, &env);
    }
}

#[test]
fn systemd_units_are_hardened_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    for role in ["source", "sink"] {
        let path = deploy_dir().join(format!("systemd/docrepl-{role}.service"));
        let unit = std::fs::read_to_string(&path).unwrap();
        for line in ["Restart=always", "User=docrepl", "NoNewPrivileges=yes", "ProtectSystem=strict", "ReadOnlyPaths=/etc/docrepl"] {
            assert!(unit.lines().any(|l| l.trim() == line), "{}: missing {line}", path.display());
        }
        assert!(unit.contains(&format!("ExecStart=/usr/local/bin/docrepl {role} --config /etc/docrepl/{role}.toml")));
        // systemd-analyze checks the unit's syntax and that its programs exist: point it at
        // the docrepl binary this test built.
        let local = dir.path().join(format!("docrepl-{role}.service"));
        std::fs::write(&local, unit.replace("/usr/local/bin/docrepl", env!("CARGO_BIN_EXE_docrepl"))).unwrap();
        match Command::new("systemd-analyze").arg("verify").arg(&local).output() {
            Ok(out) => assert!(
                out.status.success() && out.stderr.is_empty(),
                "systemd-analyze verify {}:\n{}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("systemd-analyze not available ({e}): unit syntax not verified"),
        }
    }
}

/// Metric names in a PromQL expression (histogram series mapped to their histogram).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("docrepl_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        if base.len() > "docrepl_".len() {
            names.push(base.to_string());
        }
        rest = &tail[end..];
    }
    names
}

fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(deploy_dir().join("grafana/docrepl.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    panels.iter().flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default()).filter_map(|t| t["expr"].as_str().map(String::from)).collect()
}

#[test]
fn dashboard_and_alerts_name_only_documented_metrics() {
    let exprs = dashboard_exprs();
    let shown: Vec<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for name in &shown {
        assert!(docrepl::metrics::ALL.contains(&name.as_str()), "the dashboard queries {name}, which docrepl does not export");
    }
    for name in docrepl::metrics::ALL {
        assert!(shown.iter().any(|s| s == name), "the dashboard does not show {name}");
    }

    let rules = yaml_docs(&deploy_dir().join("prometheus/alerts.yml"));
    let mut alerts = Vec::new();
    for group in rules[0]["groups"].as_vec().expect("rule groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let alert = rule["alert"].as_str().expect("alert name");
            let expr = rule["expr"].as_str().expect("expr");
            for name in metric_names(expr) {
                assert!(docrepl::metrics::ALL.contains(&name.as_str()), "alert {alert} uses {name}, which docrepl does not export");
            }
            let runbook = rule["annotations"]["runbook"].as_str().expect("runbook annotation");
            let anchor = runbook.split('#').nth(1).expect("a runbook section");
            let book = std::fs::read_to_string(deploy_dir().join("runbook.md")).unwrap().to_lowercase();
            assert!(book.contains(&format!("### {anchor}")) || book.contains(&format!("({anchor}")), "alert {alert}: no runbook section {anchor}");
            alerts.push(alert.to_string());
        }
    }
    for needed in ["ResumeTokenNearRetention", "ReplicationLagHigh", "ConsumerLagGrowing", "DeadLettersIncreasing", "ReaderDown", "WorkerStalled"] {
        assert!(alerts.iter().any(|a| a.contains(needed)), "no alert for {needed}");
    }
}

/// One source, two sink groups (two regions), two target clusters: both end equal to the
/// source. The second target requires TLS with a self-signed CA; its sink (and verify)
/// reach it through `tlsCAFile`, and a client without TLS is refused.
#[tokio::test]
async fn two_sink_groups_fan_out_to_two_targets_one_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, server_pem) = common::make_certificates(certs.path());
    let tls = format!("tls=true&tlsCAFile={}", ca.display());
    let tls_args = vec![
        "--tlsMode".to_string(),
        "requireTLS".into(),
        "--tlsCertificateKeyFile".into(),
        server_pem.display().to_string(),
        "--tlsCAFile".into(),
        ca.display().to_string(),
        "--tlsAllowConnectionsWithoutCertificates".into(),
    ];
    let region_c = OwnMongod::start_with(27617, tls_args, &tls).await;

    // Without TLS the server does not answer.
    let mut plain = mongodb::options::ClientOptions::parse(format!("mongodb://127.0.0.1:{}/?directConnection=true", region_c.port)).await.unwrap();
    plain.server_selection_timeout = Some(Duration::from_secs(3));
    let refused = mongodb::Client::with_options(plain).unwrap().database("admin").run_command(doc! {"ping": 1}).await;
    assert!(refused.is_err(), "the TLS-only mongod answered a plain connection");

    let mut setup = Setup::new("fanout");
    setup.source_extra = "collections = [\"orders\"]".into();
    let source_db = common::mongo(&common::source_uri()).await.database(&setup.db);
    let orders = source_db.collection::<Document>("orders");
    orders.insert_many((0..300).map(|i| doc! {"_id": i, "v": 0, "region": "a"})).await.unwrap();

    let region_b_config = setup.config();
    let region_c_config = {
        let text = std::fs::read_to_string(setup.config_with_target(&region_c.uri())).unwrap();
        let text = text.replace(&format!("group_id = {:?}", setup.group), &format!("group_id = {:?}", format!("{}-c", setup.group)));
        let path = setup.dir.path().join("region-c.toml");
        std::fs::write(&path, text).unwrap();
        path
    };
    let source = setup.spawn("source", &[]);
    let sink_b = setup.spawn_with("sink", &region_b_config, &[]);
    let sink_c = setup.spawn_with("sink", &region_c_config, &[]);

    // Changes while both groups read: updates, deletes, new documents.
    for i in 0..100 {
        orders.update_one(doc! {"_id": i}, doc! {"$inc": {"v": 1}}).await.unwrap();
    }
    orders.delete_many(doc! {"_id": {"$gte": 250}}).await.unwrap();
    orders.insert_many((300..400).map(|i| doc! {"_id": i, "v": 1})).await.unwrap();

    for (region, config) in [("B", &region_b_config), ("C (TLS)", &region_c_config)] {
        let (code, out) = common::verify(config, 90);
        assert_eq!(code, Some(0), "region {region} is not equal to the source:\n{out}\nsink B:\n{}\nsink C:\n{}", sink_b.log_text(), sink_c.log_text());
    }
    let client_c = common::mongo(&region_c.uri()).await;
    assert_eq!(client_c.database(&setup.db).collection::<Document>("orders").count_documents(doc! {}).await.unwrap(), 350);

    // What the dashboard shows is what the processes serve (consumer lag is sampled
    // every 5 s, hence the wait).
    let wanted = [
        docrepl::metrics::SOURCE_EVENTS_PUBLISHED,
        docrepl::metrics::SOURCE_TOKEN_AGE_SECONDS,
        docrepl::metrics::SOURCE_HISTORY_WINDOW_SECONDS,
        docrepl::metrics::SOURCE_READER_ACTIVE,
        docrepl::metrics::SINK_DOCS_WRITTEN,
        docrepl::metrics::SINK_BATCH_SIZE,
        docrepl::metrics::SINK_WRITE_SECONDS,
        docrepl::metrics::SINK_LAG_SECONDS,
        docrepl::metrics::SINK_CONSUMER_LAG,
    ];
    let addrs = [status_addr(&source).await, status_addr(&sink_b).await];
    let mut missing = Vec::new();
    for _ in 0..30 {
        let mut served = String::new();
        for addr in &addrs {
            served += &http_get(addr, "/metrics", None).await.1;
        }
        missing = wanted.iter().filter(|name| !served.contains(*name)).collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(missing.is_empty(), "on the dashboard but not served by /metrics: {missing:?}");
}
