//! The `keel` command-line tools against a real broker, metrics and health endpoints, and
//! a clean SIGTERM shutdown that keeps every acknowledged record.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::Keel;

fn keel(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// topic create/list/describe/delete, produce from stdin with keys, consume from an offset
/// and from a timestamp, all over the Kafka protocol.
#[test]
fn command_line_tools() {
    let dir = tempfile::tempdir().unwrap();
    let k = Keel::start(dir.path(), &[]);
    let b = k.kafka.as_str();
    let (ok, out, err) = keel(
        &[
            "topic",
            "create",
            "orders",
            "-p",
            "3",
            "-c",
            "retention.ms=60000",
            "-b",
            b,
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(out.contains("3 partitions"), "{out}");
    let (ok, _, _) = keel(&["topic", "create", "orders", "-b", b], None);
    assert!(!ok, "creating an existing topic succeeded");

    let lines: String = (0..300).map(|i| format!("user{}:event-{i}\n", i % 7)).collect();
    let (ok, _, err) = keel(&["produce", "orders", "-k", ":", "-b", b], Some(&lines));
    assert!(ok, "{err}");
    assert!(err.contains("produced 300 records"), "{err}");

    let (ok, out, _) = keel(&["consume", "orders", "-b", b, "--verbose"], None);
    assert!(ok);
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 300);
    // Same key, same partition; order of a key's events preserved.
    let mut by_key: std::collections::HashMap<&str, (&str, i64)> = Default::default();
    for r in &rows {
        let (part, key, value) = (r[0], r[3], r[4]);
        let i: i64 = value.strip_prefix("event-").unwrap().parse().unwrap();
        if let Some((p, last)) = by_key.insert(key, (part, i)) {
            assert_eq!(p, part, "key {key} in two partitions");
            assert!(i > last, "key {key} out of order");
        }
    }
    assert_eq!(by_key.len(), 7);

    let (ok, out, _) = keel(
        &[
            "consume",
            "orders",
            "-p",
            "0",
            "-o",
            "2",
            "-n",
            "1",
            "--verbose",
            "-b",
            b,
        ],
        None,
    );
    assert!(ok);
    assert!(out.starts_with("0\t2\t"), "{out}");

    let (ok, out, _) = keel(&["topic", "describe", "orders", "-b", b], None);
    assert!(ok);
    assert!(out.contains("retention.ms=60000 (set on topic)"), "{out}");
    let ends: i64 = out
        .lines()
        .filter(|l| l.chars().next().map(|c| c.is_ascii_digit()).unwrap_or(false))
        .map(|l| l.split('\t').nth(3).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(ends, 300, "log end offsets add up to the records produced:\n{out}");

    let (ok, out, _) = keel(&["topic", "list", "-b", b], None);
    assert!(ok && out.contains("orders\t3 partitions"), "{out}");
    let (ok, _, _) = keel(&["topic", "delete", "orders", "-b", b], None);
    assert!(ok);
    let (_, out, _) = keel(&["topic", "list", "-b", b], None);
    assert!(!out.contains("orders"), "{out}");
}

/// SIGTERM finishes in-flight work and exits 0; a restart serves every record; metrics
/// count requests, records and fsyncs; health reports ok.
#[test]
fn sigterm_is_clean_and_metrics_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut k = Keel::start(dir.path(), &[]);
    let b = k.kafka.clone();
    let lines: String = (0..1000).map(|i| format!("line-{i}\n")).collect();
    let (ok, _, err) = keel(&["produce", "t", "-b", &b], Some(&lines));
    assert!(ok, "{err}");

    let (status, metrics) = k.http_get("/metrics");
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
    };
    assert_eq!(value("keel_produced_records_total"), 1000.0);
    assert!(value("keel_fsync_duration_seconds_count") >= 1.0);
    assert!(value("keel_requests_total{api=\"Produce\"}") >= 2.0);
    assert!(value("keel_log_size_bytes{topic=\"t\",partition=\"0\"}") > 1000.0);
    // The topic's partition plus the internal __consumer_offsets and __transaction_state
    // partitions.
    assert_eq!(value("keel_partitions"), 3.0);
    let (status, health) = k.http_get("/health");
    assert_eq!(status, 200);
    assert!(health.contains("\"status\":\"ok\""), "{health}");

    assert_eq!(k.terminate(), Some(0), "SIGTERM did not exit 0");
    k.restart();
    let (ok, out, _) = keel(&["consume", "t", "-b", &k.kafka], None);
    assert!(ok);
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), 1000);
    assert_eq!(got[999], "line-999");
}
