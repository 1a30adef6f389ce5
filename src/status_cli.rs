//! `docrepl status --url URL`: fetches a running service's `/status` and prints it as a
//! table for people at a terminal.

use anyhow::Context;
use serde_json::Value;

/// Fetches `<url>/status` (with a bearer token when given) and renders it.
pub fn run(url: &str, token: Option<&str>) -> anyhow::Result<String> {
    let endpoint = format!("{}/status", url.trim_end_matches('/'));
    let mut request = ureq::get(&endpoint);
    if let Some(t) = token {
        request = request.header("Authorization", &format!("Bearer {t}"));
    }
    let body = request
        .call()
        .with_context(|| format!("cannot read {endpoint}: is the service running, and is the URL its http.listen?"))?
        .body_mut()
        .read_to_string()
        .context("cannot read the response")?;
    let status: Value = serde_json::from_str(&body).context("the response is not docrepl's /status JSON")?;
    Ok(render(&status))
}

fn num(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.fract() != 0.0 => format!("{f:.1}"),
            _ => n.to_string(),
        },
        Some(Value::String(s)) => s.clone(),
        _ => "-".into(),
    }
}

/// The report as aligned text.
pub fn render(status: &Value) -> String {
    let mut out = format!(
        "docrepl {} — role {}, {}, up {} s, dead letters {}\n",
        num(status, "version"),
        num(status, "role"),
        if status["ready"].as_bool() == Some(true) { "ready" } else { "NOT READY" },
        num(status, "uptime_seconds"),
        num(status, "dead_letters"),
    );
    if let Some(colls) = status["collections"].as_object().filter(|c| !c.is_empty()) {
        out.push_str(&format!(
            "\n{:<32} {:<10} {:>12} {:>10} {:>9} {:>14}\n",
            "COLLECTION", "STATE", "PUBLISHED", "COPIED", "LAG s", "TOKEN AGE s"
        ));
        for (name, c) in colls {
            out.push_str(&format!(
                "{:<32} {:<10} {:>12} {:>10} {:>9} {:>14}\n",
                name,
                num(c, "state"),
                num(c, "events_published"),
                num(c, "copied"),
                num(c, "lag_seconds"),
                num(c, "resume_token_age_seconds"),
            ));
        }
    }
    if let Some(parts) = status["partitions"].as_object().filter(|p| !p.is_empty()) {
        out.push_str(&format!(
            "\n{:<40} {:>12} {:>10} {:>8} {:>12} {:>10}\n",
            "PARTITION", "COMMITTED", "LAG", "BATCH", "WRITTEN", "DOCS/s"
        ));
        for (name, p) in parts {
            out.push_str(&format!(
                "{:<40} {:>12} {:>10} {:>8} {:>12} {:>10}\n",
                name,
                num(p, "committed_offset"),
                num(p, "consumer_lag"),
                num(p, "last_batch_size"),
                num(p, "docs_written"),
                num(p, "docs_per_second"),
            ));
        }
    }
    if let Some(errors) = status["recent_errors"].as_array().filter(|e| !e.is_empty()) {
        out.push_str("\nrecent errors:\n");
        for e in errors {
            out.push_str(&format!("  {}\n", e.as_str().unwrap_or_default()));
        }
    }
    out
}
