#!/usr/bin/env python3
"""Apache Kafka and Keel side by side on this machine: a three-node cluster of each, run in
turn on 127.0.0.1 (never both at once), the same topics (RF=3, acks=all) and the same
clients. Systems:

- `kafka`: Apache Kafka 4.x in KRaft mode (each node broker and controller), from its
  Maven artifacts (compat/peers/kafka.sh builds the classpath), at its defaults:
  acknowledged writes are in the followers' page cache, not on disk.
- `kafka-flush`: the same with `log.flush.interval.messages=1` (topics' `flush.messages=1`):
  every write fsynced before it is acknowledged, Keel's default.
- `keel`: three `keel serve` processes (release build), defaults (fsync before ack).

Both Kafkas get `min.insync.replicas=2`; acks=all then waits for every in-sync replica
(three while all are up), where Keel waits for a Raft majority (two of three).

Figures, per system:

- `kafka-producer-perf-test` (Kafka 4.x's Java producer, its defaults: linger.ms=5):
  msg/s, MB/s and latency avg/p50/p99/p999 as the tool prints them (per record, send to
  acknowledgement), for 1 KiB and 100 B records, unthrottled and at a fixed rate.
- `rdkafka_performance` (librdkafka 2.12.1): msg/s and per-record latency percentiles
  (produce() to delivery report) for the same shapes.
- End-to-end latency: Kafka's `EndToEndLatency` tool (produce one 1 KiB record, acks=all,
  wait until a consumer has it, repeat): avg, p50, p99, p999.
- Failover after kill -9 of the leader of a one-partition topic, as two clients see it:
  a confluent-kafka producer (librdkafka, defaults, acks=all) writing 500 records/s
  (longest time between two acknowledgements, and whether any write failed) and
  `kafka-producer-perf-test` at 500 records/s (its max latency).
- Server CPU: the three server processes' CPU time per scenario, as % of one core.

    /tmp/keel-compat-venv/bin/python compat/bench/side_by_side.py --keel target/release/keel

It prints one table per client and the ratios Keel/Kafka; `--json FILE` keeps every
figure. rdkafka_performance comes from the librdkafka tree compat/librdkafka/suite.sh
fetches and builds.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from scale import Cluster, cpu_seconds, wait_until  # noqa: E402
from produce_perf import rdkafka_performance  # noqa: E402

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

SHAPES = [  # (label, record bytes, records, records/s or -1 for unthrottled)
    ("1 KiB, unthrottled", 1024, 60_000, -1),
    ("1 KiB, 2,000/s", 1024, 20_000, 2000),
    ("100 B, unthrottled", 100, 200_000, -1),
    ("100 B, 5,000/s", 100, 50_000, 5000),
]


def free_port():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from free_ports import free_port as below_ephemeral
    return below_ephemeral()


def kafka_classpath():
    out = subprocess.run(["bash", os.path.join(ROOT, "compat", "peers", "kafka.sh"), "classpath"],
                         capture_output=True, text=True, check=True, timeout=900)
    return out.stdout.strip()


class KafkaCluster:
    """Three Apache Kafka nodes in KRaft mode, each broker and controller."""

    def __init__(self, cp, root, flush):
        self.cp, self.root, self.flush = cp, root, flush
        self.ports = {n: free_port() for n in (1, 2, 3)}
        self.cports = {n: free_port() for n in (1, 2, 3)}
        self.procs = {}

    def java(self, n):
        log4j = os.path.join(self.root, "log4j2.properties")
        return ["java", "-Xms512m", "-Xmx1g", f"-Dlog4j2.configurationFile={log4j}", "-cp", self.cp]

    def props(self, n):
        return os.path.join(self.root, f"kafka-{n}.properties")

    def start_all(self):
        with open(os.path.join(self.root, "log4j2.properties"), "w") as f:
            f.write("rootLogger.level=WARN\nrootLogger.appenderRef.stdout.ref=STDOUT\n"
                    "appender.stdout.type=Console\nappender.stdout.name=STDOUT\n"
                    "appender.stdout.layout.type=PatternLayout\nappender.stdout.layout.pattern=[%d] %p %m (%c)%n\n")
        voters = ",".join(f"{n}@127.0.0.1:{self.cports[n]}" for n in (1, 2, 3))
        cluster_id = subprocess.run(self.java(1) + ["kafka.tools.StorageTool", "random-uuid"],
                                    capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        for n in (1, 2, 3):
            with open(self.props(n), "w") as f:
                f.write(f"""process.roles=broker,controller
node.id={n}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{self.ports[n]},CONTROLLER://127.0.0.1:{self.cports[n]}
advertised.listeners=PLAINTEXT://127.0.0.1:{self.ports[n]}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={self.root}/kafka-{n}/logs
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
min.insync.replicas=2
group.initial.rebalance.delay.ms=0
""" + ("log.flush.interval.messages=1\n" if self.flush else ""))
            subprocess.run(self.java(n) + ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", self.props(n)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for n in (1, 2, 3):
            self.start(n)

    def start(self, n):
        log = open(os.path.join(self.root, f"kafka-{n}.log"), "ab")
        self.procs[n] = subprocess.Popen(self.java(n) + ["kafka.Kafka", self.props(n)], stdout=log, stderr=log)

    def bootstrap(self):
        return ",".join(f"127.0.0.1:{self.ports[n]}" for n in (1, 2, 3))

    def node_of_port(self, port):
        return next(n for n, p in self.ports.items() if p == port)

    def kill(self, n):
        self.procs[n].send_signal(signal.SIGKILL)
        self.procs[n].wait()

    def pids(self):
        return [p.pid for p in self.procs.values() if p.poll() is None]

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


class KeelCluster(Cluster):
    """Three `keel serve` processes (compat/scale.py's cluster)."""

    def start_all(self):
        for n in (1, 2, 3):
            self.start(n)

    def pids(self):
        return [p.pid for p in self.procs.values() if p.poll() is None]


def cpu(pids):
    total = 0.0
    for p in pids:
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


def settle(admin, topics):
    """Waits until every partition of `topics` has a leader and three in-sync replicas."""
    def ok():
        try:
            md = admin.list_topics(timeout=5)
        except Exception:
            return False
        for t in topics:
            tm = md.topics.get(t)
            if tm is None or tm.error is not None or not tm.partitions:
                return False
            if any(p.leader < 0 or len(p.isrs) < 3 for p in tm.partitions.values()):
                return False
        return True
    assert wait_until(ok, 120, 0.5), f"topics {topics} not settled"


def perf_test(cp, bootstrap, topic, size, records, rate, pids):
    cpu0, t0 = cpu(pids), time.monotonic()
    out = subprocess.run(
        ["java", "-Xmx512m", "-cp", cp, "org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
         "--num-records", str(records), "--record-size", str(size), "--throughput", str(rate),
         "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all"],
        capture_output=True, text=True, timeout=900).stdout
    wall = time.monotonic() - t0
    m = re.findall(r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, "
                   r"([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99.9th", out)
    if not m:
        return {"error": out[-500:]}
    r = m[-1]
    return {"msgs": float(r[1]), "mbs": float(r[2]), "avg": float(r[3]), "max": float(r[4]),
            "p50": int(r[5]), "p99": int(r[7]), "p999": int(r[8]),
            "server_cpu": round(100 * (cpu(pids) - cpu0) / wall)}


def rdkafka_perf(exe, bootstrap, topic, size, records, rate, pids):
    lat = tempfile.mktemp(prefix="side-by-side-lat-")
    args = [exe, "-P", "-t", topic, "-b", bootstrap, "-s", str(size), "-X", "acks=all",
            "-c", str(records), "-l", "-A", lat, "-q"]
    if rate > 0:
        args += ["-r", str(rate)]
    cpu0, t0 = cpu(pids), time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, timeout=900).stdout
    wall = time.monotonic() - t0
    final = [ln for ln in out.splitlines() if "delivered" in ln and "msgs/s" in ln]
    m = re.search(r"(\d+) delivered .* in (\d+)ms: (\d+) msgs/s and ([\d.]+) MB/s", final[-1]) if final else None
    try:
        with open(lat) as f:
            v = sorted(int(x) for x in f if x.strip())
        os.unlink(lat)
    except OSError:
        v = []
    if not m or not v:
        return {"error": out[-500:]}
    n = len(v)
    q = lambda x: round(v[min(n - 1, int(n * x))] / 1000, 1)  # noqa: E731
    return {"msgs": int(m.group(3)), "mbs": float(m.group(4)), "avg": round(sum(v) / n / 1000, 1),
            "p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": round(v[-1] / 1000, 1),
            "server_cpu": round(100 * (cpu(pids) - cpu0) / wall)}


def end_to_end(cp, bootstrap, topic, records):
    tool = ["java", "-Xmx512m", "-cp", cp, "org.apache.kafka.tools.EndToEndLatency"]
    # Kafka 4.1 (KIP-1147) gave the tool named arguments; earlier ones take positions.
    named = ["--bootstrap-server", bootstrap, "--topic", topic, "--num-records", str(records),
             "--producer-acks", "all", "--record-size", "1024"]
    positional = [bootstrap, topic, str(records), "all", "1024"]
    text = ""
    for args in (named, positional):
        out = subprocess.run(tool + args, capture_output=True, text=True, timeout=900)
        text = out.stdout + out.stderr
        if "Avg latency" in text:
            break
    avg = re.search(r"Avg latency: ([\d.]+) ms", text)
    pct = re.search(r"Percentiles: 50th = (\d+), 99th = (\d+), 99.9th = (\d+)", text)
    if not (avg and pct):
        return {"error": text[-500:]}
    return {"avg": float(avg.group(1)), "p50": int(pct.group(1)), "p99": int(pct.group(2)),
            "p999": int(pct.group(3))}


def leader_node(admin, topic, node_of_port):
    md = admin.list_topics(topic, timeout=5)
    leader = md.topics[topic].partitions[0].leader
    broker = md.brokers[leader]
    return node_of_port(broker.port)


def failover(cluster, cp, bootstrap, node_of_port):
    """Kills the leader of `fo` (one partition) 5 s into 20 s of two producers writing to it
    at 500 records/s each."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    acks, errors = [], []
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all"})

    def on_delivery(err, _msg):
        (errors if err else acks).append(time.monotonic())

    java = subprocess.Popen(
        ["java", "-Xmx512m", "-cp", cp, "org.apache.kafka.tools.ProducerPerformance", "--topic", "fo",
         "--num-records", "10000", "--record-size", "1024", "--throughput", "500",
         "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = leader_node(admin, "fo", node_of_port)
    start = time.monotonic()
    killed_at = None
    i = 0
    while time.monotonic() - start < 20:
        if killed_at is None and time.monotonic() - start >= 5:
            cluster.kill(victim)
            killed_at = time.monotonic()
        p.produce("fo", value=b"x" * 1024, key=str(i).encode(), on_delivery=on_delivery)
        i += 1
        p.poll(0)
        time.sleep(0.002)
    p.flush(120)
    java_out, _ = java.communicate(timeout=300)
    m = re.findall(r"([\d.]+) ms avg latency, ([\d.]+) ms max latency", java_out)
    gaps = [b - a for a, b in zip(acks, acks[1:])]
    return {
        "killed_node": victim,
        "rdkafka_longest_gap_s": round(max(gaps), 2) if gaps else None,
        "rdkafka_failed": len(errors),
        "rdkafka_acked": len(acks),
        "java_max_latency_s": round(float(m[-1][1]) / 1000, 2) if m else None,
    }


def run_system(name, args, cp, exe):
    root = tempfile.mkdtemp(prefix=f"side-by-side-{name}-")
    if name == "keel":
        cluster = KeelCluster(args.keel, args.base_port, root)
        node_of_port = lambda port: port - args.base_port + 1  # noqa: E731
    else:
        cluster = KafkaCluster(cp, root, flush=(name == "kafka-flush"))
        node_of_port = None
    out = {"system": name}
    try:
        cluster.start_all()
        if node_of_port is None:
            node_of_port = cluster.node_of_port
        bs = cluster.bootstrap()
        admin = AdminClient({"bootstrap.servers": bs})
        def three_brokers():
            try:
                return len(admin.list_topics(timeout=5).brokers) == 3
            except Exception:
                return False

        assert wait_until(three_brokers, 120, 0.5), "no cluster"
        topics = ["p1k", "p100", "r1k", "r100", "e2e", "fo"]
        parts = {"e2e": 1, "fo": 1}
        fs = admin.create_topics([NewTopic(t, parts.get(t, 3), 3) for t in topics], request_timeout=120)
        for f in fs.values():
            f.result()
        settle(admin, topics)
        pids = cluster.pids()
        clients = [  # (key, topic prefix, run)
            ("perf_test", "p", lambda *a: perf_test(cp, bs, *a, pids)),
            ("rdkafka", "r", lambda *a: rdkafka_perf(exe, bs, *a, pids)),
        ]
        for key, prefix, run in clients:
            out[key] = {}
            for label, size, records, rate in SHAPES:
                topic = prefix + ("1k" if size == 1024 else "100")
                r = run(topic, size, records, rate)
                out[key][label] = r
                print(f"{name} {key} {label}: {r}", flush=True)
        out["e2e"] = end_to_end(cp, bs, "e2e", args.e2e_records)
        print(f"{name} end-to-end: {out['e2e']}", flush=True)
        out["failover"] = failover(cluster, cp, bs, node_of_port)
        print(f"{name} failover: {out['failover']}", flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return out


def fmt(x):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.1f}" if x < 1000 else f"{x:,.0f}"
    return f"{x:,}"


def report(results):
    names = [r["system"] for r in results]
    for client in ("perf_test", "rdkafka"):
        title = "kafka-producer-perf-test (Java)" if client == "perf_test" else "rdkafka_performance (librdkafka)"
        print(f"\n### {title}, acks=all\n")
        print("| records | system | msg/s | MB/s | avg ms | p50 | p99 | p999 | server CPU % |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, *_ in SHAPES:
            for r in results:
                x = r.get(client, {}).get(label, {})
                print(f"| {label} | {r['system']} | {fmt(x.get('msgs'))} | {fmt(x.get('mbs'))} | {fmt(x.get('avg'))} | "
                      f"{fmt(x.get('p50'))} | {fmt(x.get('p99'))} | {fmt(x.get('p999'))} | {fmt(x.get('server_cpu'))} |")
    print("\n### End-to-end latency (EndToEndLatency, 1 KiB, acks=all), ms\n")
    print("| system | avg | p50 | p99 | p999 |\n|---|---|---|---|---|")
    for r in results:
        e = r.get("e2e", {})
        print(f"| {r['system']} | {fmt(e.get('avg'))} | {fmt(e.get('p50'))} | {fmt(e.get('p99'))} | {fmt(e.get('p999'))} |")
    print("\n### Failover after kill -9 of the leader, as each client sees it\n")
    print("| system | confluent-kafka: longest gap between acks, s | failed writes | kafka-producer-perf-test: max latency, s |")
    print("|---|---|---|---|")
    for r in results:
        f = r.get("failover", {})
        print(f"| {r['system']} | {fmt(f.get('rdkafka_longest_gap_s'))} | {fmt(f.get('rdkafka_failed'))} | "
              f"{fmt(f.get('java_max_latency_s'))} |")
    if "keel" in names:
        keel = next(r for r in results if r["system"] == "keel")
        print("\n### Ratios Keel / Kafka (msg/s: above 1 is Keel faster; p99: below 1 is Keel faster)\n")
        print("| client | records | against | msg/s ratio | p99 ratio |\n|---|---|---|---|---|")
        for client in ("perf_test", "rdkafka"):
            for label, *_ in SHAPES:
                for r in results:
                    if r["system"] == "keel":
                        continue
                    k, o = keel.get(client, {}).get(label, {}), r.get(client, {}).get(label, {})
                    ratio = lambda a, b: round(a / b, 2) if a and b else None  # noqa: E731
                    print(f"| {client} | {label} | {r['system']} | {fmt(ratio(k.get('msgs'), o.get('msgs')))} | "
                          f"{fmt(ratio(k.get('p99'), o.get('p99')))} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keel", default=os.path.join(ROOT, "target", "release", "keel"))
    ap.add_argument("--librdkafka", default="/tmp/keel-librdkafka-2.12.1")
    ap.add_argument("--systems", default="kafka,kafka-flush,keel")
    ap.add_argument("--base-port", type=int, default=47092)
    ap.add_argument("--e2e-records", type=int, default=2000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cp = kafka_classpath()
    exe = rdkafka_performance(args.librdkafka)
    results = [run_system(name, args, cp, exe) for name in args.systems.split(",")]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    report(results)


if __name__ == "__main__":
    main()
