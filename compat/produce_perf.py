#!/usr/bin/env python3
"""Small-write produce cost: librdkafka's own `rdkafka_performance` against a fresh
three-node cluster of `keel serve` processes on 127.0.0.1, one RF=3 topic of three
partitions (a leader on each node), 1 KiB records, acks=all. For each scenario it prints

- acknowledged msg/s and MB/s (rdkafka_performance's own final figures);
- per-message latency from produce() to delivery report: avg, p50, p99, p999, max (ms);
- Keel's CPU (the three processes together, % of one core);
- Produce requests the leaders served, records per request, and Keel CPU microseconds
  per acknowledged record.

    compat/produce_perf.py --keel target/release/keel

Scenarios: `-r 10000` with linger.ms=0 (a steady stream of tiny requests), unthrottled
with linger.ms=0, unthrottled with linger.ms=5. rdkafka_performance is built from the
librdkafka source that compat/librdkafka/suite.sh fetches (run that once first, or point
--librdkafka at a built tree).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scale import Cluster, cpu_seconds, wait_until  # noqa: E402

SCENARIOS = [
    ("10k msg/s, linger.ms=0", ["-r", "10000", "-X", "linger.ms=0"], 10),
    ("unthrottled, linger.ms=0", ["-X", "linger.ms=0"], None),
    ("unthrottled, linger.ms=5", ["-X", "linger.ms=5"], None),
]


def produce_requests(http_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith('keel_requests_total{api="Produce"}'):
                return int(float(line.split()[-1]))
    return 0


def rdkafka_performance(tree):
    exe = os.path.join(tree, "examples", "rdkafka_performance")
    if not os.path.exists(exe):
        if not os.path.exists(os.path.join(tree, "src", "librdkafka.a")):
            sys.exit(f"no built librdkafka in {tree}: run compat/librdkafka/suite.sh once")
        subprocess.run(["make", "-C", os.path.join(tree, "examples"), "rdkafka_performance"],
                       check=True, stdout=subprocess.DEVNULL)
    return exe


def run(args, exe, c, label, extra, seconds):
    count = 10000 * seconds if seconds else args.count
    lat = tempfile.mktemp(prefix="keel-lat-")
    req0 = sum(produce_requests(c.base + 200 + n - 1) for n in (1, 2, 3))
    pids = [p.pid for p in c.procs.values()]
    cpu0 = sum(cpu_seconds(p) for p in pids)
    t0 = time.monotonic()
    client = subprocess.Popen(
        [exe, "-P", "-t", "perf", "-b", c.bootstrap(), "-s", "1024", "-X", "acks=all",
         "-c", str(count), "-l", "-A", lat, "-q"] + extra,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = client.communicate(timeout=300)
    wall = time.monotonic() - t0
    cpu1 = sum(cpu_seconds(p) for p in pids)
    req1 = sum(produce_requests(c.base + 200 + n - 1) for n in (1, 2, 3))
    final = [l for l in out.splitlines() if "delivered" in l and "msgs/s" in l]
    m = re.search(r"(\d+) delivered .* in (\d+)ms: (\d+) msgs/s and ([\d.]+) MB/s", final[-1]) if final else None
    with open(lat) as f:
        v = sorted(int(x) for x in f if x.strip())
    os.unlink(lat)
    n = len(v)
    ms = lambda q: round(v[min(n - 1, int(n * q))] / 1000, 1)  # noqa: E731
    delivered = int(m.group(1)) if m else n
    keel_cpu = cpu1 - cpu0
    return {
        "scenario": label,
        "msgs": int(m.group(3)) if m else None,
        "mbs": float(m.group(4)) if m else None,
        "avg": round(sum(v) / n / 1000, 1) if n else None,
        "p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": round(v[-1] / 1000, 1),
        "keel_cpu": round(100 * keel_cpu / wall),
        "requests": req1 - req0,
        "per_request": round(delivered / max(1, req1 - req0), 1),
        "us_per_record": round(1e6 * keel_cpu / max(1, delivered)),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keel", default="target/release/keel")
    ap.add_argument("--librdkafka", default="/tmp/keel-librdkafka-2.12.1")
    ap.add_argument("--base-port", type=int, default=43092)
    ap.add_argument("--count", type=int, default=300000, help="records in an unthrottled run")
    ap.add_argument("--only", type=int, default=None, help="run only scenario N (0-based)")
    args = ap.parse_args()
    exe = rdkafka_performance(args.librdkafka)
    root = tempfile.mkdtemp(prefix="keel-produce-perf-")
    c = Cluster(args.keel, args.base_port, root)
    try:
        for n in (1, 2, 3):
            c.start(n)
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": c.bootstrap()})
        assert wait_until(lambda: len(admin.list_topics(timeout=5).brokers) == 3, 60, 0.2), "no cluster"
        for f in admin.create_topics([NewTopic("perf", 3, 3)], request_timeout=60).values():
            f.result()
        assert wait_until(lambda: all(p.leader >= 0 for p in admin.list_topics("perf", timeout=5)
                                      .topics["perf"].partitions.values()), 60, 0.2), "not led"
        print("| scenario | msg/s | MB/s | latency avg ms | p50 | p99 | p999 | max | Keel CPU % | Produce requests | records/request | Keel CPU us/record |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for i, (label, extra, seconds) in enumerate(SCENARIOS):
            if args.only is not None and args.only != i:
                continue
            r = run(args, exe, c, label, extra, seconds)
            print(f"| {r['scenario']} | {r['msgs']} | {r['mbs']} | {r['avg']} | {r['p50']} | {r['p99']} | "
                  f"{r['p999']} | {r['max']} | {r['keel_cpu']} | {r['requests']} | {r['per_request']} | "
                  f"{r['us_per_record']} |", flush=True)
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
