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

/// One section: a row per entry of `rows` (a JSON object), its name first, then the
/// `(header, field, width)` columns. Nothing when there are no rows.
fn table(out: &mut String, rows: &Value, name: (&str, usize), columns: &[(&str, &str, usize)]) {
    let Some(rows) = rows.as_object().filter(|r| !r.is_empty()) else { return };
    out.push_str(&format!("\n{:<w$}", name.0, w = name.1));
    for (header, _, width) in columns {
        out.push_str(&format!(" {header:>width$}"));
    }
    out.push('\n');
    for (row_name, row) in rows {
        out.push_str(&format!("{row_name:<w$}", w = name.1));
        for (_, field, width) in columns {
            out.push_str(&format!(" {:>width$}", num(row, field)));
        }
        out.push('\n');
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
    if let Some(flavors) = status["flavors"].as_object().filter(|f| !f.is_empty()) {
        let sides: Vec<String> = flavors.iter().map(|(side, f)| format!("{side} {}", f.as_str().unwrap_or("?"))).collect();
        out.push_str(&format!("clusters: {}\n", sides.join(", ")));
    }
    if let Some(p) = status["change_stream_pipeline"].as_str() {
        out.push_str(&format!("change-stream pipeline: {p}\n"));
    }
    if status["history_window_seconds"].is_number() {
        out.push_str(&format!("source change history kept: {} s (compare TOKEN AGE)\n", num(status, "history_window_seconds")));
    }
    table(
        &mut out,
        &status["collections"],
        ("COLLECTION", 32),
        &[("STATE", "state", 10), ("PUBLISHED", "events_published", 12), ("COPIED", "copied", 10), ("LAG s", "lag_seconds", 9), ("TOKEN AGE s", "resume_token_age_seconds", 14)],
    );
    table(
        &mut out,
        &status["partitions"],
        ("PARTITION", 40),
        &[("COMMITTED", "committed_offset", 12), ("LAG", "consumer_lag", 10), ("BATCH", "last_batch_size", 8), ("WRITTEN", "docs_written", 12), ("DOCS/s", "docs_per_second", 10)],
    );
    table(
        &mut out,
        &status["topics"],
        ("TOPIC", 40),
        &[("PARTITIONS", "partitions_held", 11), ("RECOVERY POINT", "recovery_point", 26), ("BEHIND s", "recovery_point_age_seconds", 10)],
    );
    if let Some(errors) = status["recent_errors"].as_array().filter(|e| !e.is_empty()) {
        out.push_str("\nrecent errors:\n");
        for e in errors {
            out.push_str(&format!("  {}\n", e.as_str().unwrap_or_default()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_collections_and_partitions() {
        let status = serde_json::json!({
            "version": "0.1.0", "role": "source+sink", "ready": true, "uptime_seconds": 5, "dead_letters": 0,
            "collections": {"app.orders": {"state": "streaming", "events_published": 42, "copied": 10, "lag_seconds": 0.0, "resume_token_age_seconds": 1.5}},
            "partitions": {"docrepl.app.orders/0": {"committed_offset": 42, "consumer_lag": 0, "last_batch_size": 7, "docs_written": 42, "docs_per_second": 12.5}},
            "topics": {"docrepl.app.orders": {"partitions_held": 1, "recovery_point": "2026-11-21T02:00:00.000Z", "recovery_point_age_seconds": 0.5}},
            "recent_errors": [],
        });
        let text = render(&status);
        assert!(text.contains("role source+sink, ready"), "{text}");
        assert!(text.contains("COLLECTION") && text.contains("app.orders") && text.contains("streaming"), "{text}");
        assert!(text.contains("PARTITION") && text.contains("docrepl.app.orders/0") && text.contains("12.5"), "{text}");
        assert!(text.contains("RECOVERY POINT") && text.contains("2026-11-21T02:00:00.000Z"), "{text}");
    }
}
