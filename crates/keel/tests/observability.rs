//! What operators look at: every `keel_*` metric the Grafana dashboard and the Prometheus
//! rules shipped in the Helm chart query is exported by a running `keel serve`, and the
//! health endpoints Kubernetes probes answer as documented.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::Keel;

fn chart_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/helm/keel/files")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `keel_*` metric names a text mentions (PromQL in JSON or YAML).
fn queried(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("keel_") {
        let start = i + at;
        let before_ok = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start + "keel_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_')
        {
            end += 1;
        }
        if before_ok && end > start + "keel_".len() {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Every series name a scrape may carry, from the families' `# TYPE` lines (OpenMetrics:
/// counters' samples end in `_total`, histograms' in `_bucket`, `_sum` and `_count`).
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        out.insert(name.to_string());
        match kind {
            "counter" => {
                out.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{suffix}"));
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn the_dashboard_and_the_alert_rules_query_only_metrics_keel_exports() {
    let dir = tempfile::tempdir().unwrap();
    let keel = Keel::start(dir.path(), &[]);
    let (status, scrape) = keel.http_get("/metrics");
    assert_eq!(status, 200);
    let exported = exported(&scrape);
    assert!(
        exported.len() > 40,
        "a scrape with only {} series names",
        exported.len()
    );

    for file in ["grafana-dashboard.json", "prometheus-rules.yaml"] {
        let text = chart_file(file);
        let wanted = queried(&text);
        assert!(wanted.len() >= 10, "{file} queries only {wanted:?}");
        let missing: Vec<&String> = wanted.iter().filter(|m| !exported.contains(*m)).collect();
        assert!(
            missing.is_empty(),
            "{file} queries metrics Keel does not export: {missing:?}"
        );
        eprintln!("{file}: {} metrics, all exported", wanted.len());
    }
    // The dashboard is JSON Grafana can load: panels with unique ids, each with a query.
    let dash: serde_json::Value = serde_json::from_str(&chart_file("grafana-dashboard.json")).unwrap();
    let panels = dash["panels"].as_array().expect("panels");
    let ids: BTreeSet<i64> = panels.iter().filter_map(|p| p["id"].as_i64()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids repeat");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {} has no query",
            p["title"]
        );
    }
}

#[test]
fn health_endpoints_answer_live_and_ready_and_the_ready_gauge_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let keel = Keel::start(dir.path(), &[]);
    let (status, body) = keel.http_get("/health/live");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"live\""), "{body}");
    // A single node is ready once it reported ready on stdout: its controller leads and
    // every replica the metadata assigns it is open.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = keel.http_get("/health/ready");
        if status == 200 {
            assert!(body.contains("\"ready\""), "{body}");
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("reasons"), "{body}");
        assert!(std::time::Instant::now() < deadline, "not ready: {body}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (status, _) = keel.http_get("/ready");
    assert_eq!(status, 200);
    let (_, scrape) = keel.http_get("/metrics");
    assert!(
        scrape.lines().any(|l| l == "keel_ready 1"),
        "keel_ready is not 1 on a ready node"
    );
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("keel_disk_total_bytes ") && !l.ends_with(" 0") && !l.ends_with(" -1")),
        "the data directory's disk size is not exported"
    );
}
