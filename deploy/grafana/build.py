#!/usr/bin/env python3
"""Writes deploy/helm/keel/files/grafana-dashboard.json, Keel's Grafana dashboard, from the panel list below:
one place to change a query. Run it after editing (`--check` only compares); CI checks
that the file is current and that every metric the
dashboard and the alert rules query is exported by a running Keel
(crates/keel/tests/observability.rs)."""
import json
import os

# (title, unit, [(query, legend)], width)
ROWS = [
    ("Cluster", [
        ("Nodes ready", "short", [("sum(keel_ready)", "ready nodes")], 6, "stat"),
        ("Peers seen alive", "short", [("min by (node) (keel_peer_up)", "node {{node}}")], 6, "stat"),
        ("Leaderless partitions", "short", [("max(keel_leaderless_partitions)", "leaderless")], 6, "stat"),
        ("Under-replicated partitions", "short", [("sum(keel_under_replicated_partitions)", "under-replicated")], 6, "stat"),
    ]),
    ("Throughput", [
        ("Produced records/s", "ops", [("sum by (instance) (rate(keel_produced_records_total[1m]))", "{{instance}}")], 8, "timeseries"),
        ("Produced bytes/s", "Bps", [("sum by (instance) (rate(keel_produced_bytes_total[1m]))", "{{instance}}")], 8, "timeseries"),
        ("Fetched bytes/s", "Bps", [("sum by (instance) (rate(keel_fetched_bytes_total[1m]))", "{{instance}}")], 8, "timeseries"),
        ("Requests/s by API", "reqps", [("sum by (api) (rate(keel_requests_total[1m]))", "{{api}}")], 12, "timeseries"),
        ("Request errors/s by API and code", "reqps", [("sum by (api, code) (rate(keel_request_errors_total[1m]))", "{{api}} {{code}}")], 12, "timeseries"),
    ]),
    ("Latency", [
        ("Request latency p50 / p99 / p999 (Produce, Fetch)", "s", [
            ("histogram_quantile(0.5, sum by (le, api) (rate(keel_request_duration_seconds_bucket{api=~\"Produce|Fetch\"}[5m])))", "p50 {{api}}"),
            ("histogram_quantile(0.99, sum by (le, api) (rate(keel_request_duration_seconds_bucket{api=~\"Produce|Fetch\"}[5m])))", "p99 {{api}}"),
            ("histogram_quantile(0.999, sum by (le, api) (rate(keel_request_duration_seconds_bucket{api=~\"Produce|Fetch\"}[5m])))", "p999 {{api}}"),
        ], 12, "timeseries"),
        ("fsync latency p50 / p99", "s", [
            ("histogram_quantile(0.5, sum by (le, instance) (rate(keel_fsync_duration_seconds_bucket[5m])))", "p50 {{instance}}"),
            ("histogram_quantile(0.99, sum by (le, instance) (rate(keel_fsync_duration_seconds_bucket[5m])))", "p99 {{instance}}"),
        ], 12, "timeseries"),
    ]),
    ("Replication", [
        ("Leader changes/s", "ops", [("sum by (instance) (rate(keel_leader_changes_total[5m]))", "{{instance}}")], 8, "timeseries"),
        ("Raft commit lag (entries, worst replica per topic)", "short", [("max by (topic) (keel_replica_lag_entries)", "{{topic}}")], 8, "timeseries"),
        ("Time partitions went without a leader p99", "s", [("histogram_quantile(0.99, sum by (le) (rate(keel_leaderless_duration_seconds_bucket[15m])))", "p99")], 8, "timeseries"),
        ("Partition moves", "short", [
            ("max(keel_partition_moves_in_progress)", "in progress"),
            ("sum(increase(keel_partition_moves_completed_total[5m]))", "completed (5m)"),
            ("sum(increase(keel_self_healing_moves_total[5m]))", "self-healing (5m)"),
            ("sum(increase(keel_replica_balance_moves_total[5m]))", "balancing (5m)"),
        ], 8, "timeseries"),
        ("Leadership handovers", "short", [("sum by (outcome) (increase(keel_leadership_handovers_total[5m]))", "{{outcome}}")], 8, "timeseries"),
        ("Poisoned partitions", "short", [("sum by (instance) (keel_poisoned_partitions)", "{{instance}}")], 8, "timeseries"),
    ]),
    ("Consumers", [
        ("Consumer lag by group and topic", "short", [("sum by (group, topic) (keel_consumer_lag)", "{{group}} {{topic}}")], 16, "timeseries"),
        ("Group members", "short", [("sum by (group) (keel_group_members)", "{{group}}")], 8, "timeseries"),
    ]),
    ("Storage", [
        ("Disk available", "percentunit", [("keel_disk_available_bytes / keel_disk_total_bytes", "{{instance}}")], 8, "timeseries"),
        ("Log size by node", "bytes", [("sum by (instance) (keel_log_size_bytes)", "{{instance}}")], 8, "timeseries"),
        ("Log size by topic", "bytes", [("sum by (topic) (keel_log_size_bytes)", "{{topic}}")], 8, "timeseries"),
    ]),
    ("Connections and security", [
        ("Connections", "short", [("sum by (instance) (keel_connections)", "{{instance}}")], 8, "timeseries"),
        ("Refused connections and malformed requests/s", "ops", [
            ("sum(rate(keel_connections_refused_total[5m]))", "refused"),
            ("sum(rate(keel_malformed_requests_total[5m]))", "malformed"),
        ], 8, "timeseries"),
        ("Authentication failures and denials/s", "ops", [
            ("sum(rate(keel_sasl_authentication_failures_total[5m]))", "SASL failures"),
            ("sum(rate(keel_authorization_denials_total[5m]))", "ACL denials"),
            ("sum(rate(keel_tls_handshake_failures_total[5m]))", "TLS handshake failures"),
        ], 8, "timeseries"),
    ]),
]


def panel(pid, title, unit, targets, x, y, w, kind):
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 4 if kind == "stat" else 8, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": q, "legendFormat": legend,
             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
            for i, (q, legend) in enumerate(targets)
        ],
    }
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    return p


def build():
    panels, pid, y = [], 1, 0
    for row, items in ROWS:
        panels.append({"id": pid, "type": "row", "title": row, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y, x, height = pid + 1, y + 1, 0, 0
        for title, unit, targets, w, kind in items:
            if x + w > 24:
                x, y = 0, y + height
                height = 0
            p = panel(pid, title, unit, targets, x, y, w, kind)
            panels.append(p)
            pid, x, height = pid + 1, x + w, max(height, p["gridPos"]["h"])
        y += height
    return {
        "uid": "keel-overview",
        "title": "Keel",
        "description": "Keel cluster overview: throughput, latency, replication, consumers, storage, security.",
        "tags": ["keel", "kafka"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "type": "datasource", "query": "prometheus",
            "label": "Prometheus", "current": {}, "hide": 0,
        }]},
        "panels": panels,
    }


if __name__ == "__main__":
    import sys
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "helm", "keel", "files", "grafana-dashboard.json")
    text = json.dumps(build(), indent=2) + "\n"
    if "--check" in sys.argv:
        with open(out) as f:
            if f.read() != text:
                sys.exit(f"{out} is not what deploy/grafana/build.py writes: run it")
        print(f"{out} is current")
    else:
        with open(out, "w") as f:
            f.write(text)
        print(f"wrote {out}")
