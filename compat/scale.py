#!/usr/bin/env python3
"""Keel's cost against its partition count: for each count, a fresh three-node cluster of
`keel serve` processes on 127.0.0.1, one RF=3 topic of that many partitions, then

- create: seconds from CreateTopics until every partition has a leader;
- idle CPU: the three processes' CPU time over a quiet window, as % of one core;
- RSS per replica: the growth of the three processes' resident memory since before the
  topic, divided by the replicas (3 x partitions);
- failover: a node leading about a third of the partitions is killed with kill -9; for
  each partition it led, the time until a live node leads it (median and max), as a
  surviving node's Metadata tells;
- rebalance: the killed node restarts; seconds until it leads a quarter of the
  partitions again;
- Metadata s, cluster status s: one Metadata request for the topic (librdkafka), and
  `keel cluster status`, once every partition is led;
- fds per node: open file descriptors of the busiest node.

    compat/scale.py --keel target/release/keel --partitions 100,1000,3000,10000

Prints a Markdown table row per count (and the raw figures as JSON with --json). Needs
confluent-kafka (compat/setup.sh installs it in /tmp/keel-compat-venv).
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

from confluent_kafka.admin import AdminClient, NewTopic

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Cluster:
    def __init__(self, keel, base_port, root):
        self.keel, self.base, self.root = keel, base_port, root
        self.procs = {}
        self.peers = ",".join(f"{n}@127.0.0.1:{base_port + 100 + n - 1}" for n in (1, 2, 3))

    def start(self, n):
        log = open(os.path.join(self.root, f"node-{n}.log"), "ab")
        self.procs[n] = subprocess.Popen(
            [
                self.keel, "serve", "--node-id", str(n),
                "--data-dir", os.path.join(self.root, f"node-{n}"),
                "--kafka-listen", f"127.0.0.1:{self.base + n - 1}",
                "--raft-listen", f"127.0.0.1:{self.base + 100 + n - 1}",
                "--http-listen", f"127.0.0.1:{self.base + 200 + n - 1}",
                "--peers", self.peers,
            ],
            stdout=subprocess.DEVNULL, stderr=log,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn"),
                 "KEEL_CLUSTER_SECRET": "scale measurement cluster secret"},
        )

    def bootstrap(self, nodes=(1, 2, 3)):
        return ",".join(f"127.0.0.1:{self.base + n - 1}" for n in nodes)

    def kill(self, n):
        self.procs[n].send_signal(signal.SIGKILL)
        self.procs[n].wait()

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


def leaders(admin, topic):
    try:
        md = admin.list_topics(topic, timeout=5)
    except Exception:
        return {}
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return {}
    return {p: t.partitions[p].leader for p in t.partitions}


def wait_until(cond, timeout_s, every_s=0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(every_s)
    return None


def measure(keel, partitions, base_port, idle_s, settle_s):
    root = tempfile.mkdtemp(prefix=f"keel-scale-{partitions}-")
    c = Cluster(keel, base_port, root)
    out = {"partitions": partitions}
    try:
        for n in (1, 2, 3):
            c.start(n)
        admin = AdminClient({"bootstrap.servers": c.bootstrap()})
        ok = wait_until(lambda: len(admin.list_topics(timeout=5).brokers) == 3, 60, 0.2)
        assert ok, "cluster did not start"
        time.sleep(settle_s)
        pids = [p.pid for p in c.procs.values()]
        rss_before = sum(rss_kib(p) for p in pids)
        t0 = time.monotonic()
        for f in admin.create_topics([NewTopic("scale", partitions, 3)], request_timeout=120).values():
            f.result()
        led = wait_until(
            lambda: (lambda l: len(l) == partitions and all(v >= 0 for v in l.values()))(leaders(admin, "scale")),
            300, 0.5)
        out["create_s"] = round(time.monotonic() - t0, 1) if led else None
        time.sleep(settle_s)
        # What a client and an operator pay for the whole topic's metadata.
        t_md = time.monotonic()
        leaders(admin, "scale")
        out["metadata_s"] = round(time.monotonic() - t_md, 2)
        t_st = time.monotonic()
        status = subprocess.run([keel, "cluster", "status", "-b", c.bootstrap()],
                                capture_output=True, timeout=120)
        out["status_s"] = round(time.monotonic() - t_st, 2) if status.returncode == 0 else None
        out["fds_per_node"] = max(len(os.listdir(f"/proc/{p}/fd")) for p in pids)
        cpu0 = sum(cpu_seconds(p) for p in pids)
        w0 = time.monotonic()
        time.sleep(idle_s)
        cpu1 = sum(cpu_seconds(p) for p in pids)
        out["idle_cpu_pct"] = round(100 * (cpu1 - cpu0) / (time.monotonic() - w0), 1)
        rss_after = sum(rss_kib(p) for p in pids)
        out["rss_total_mib"] = round(rss_after / 1024, 1)
        out["rss_per_replica_kib"] = round((rss_after - rss_before) / (3 * partitions), 1)
        # Failover: kill the node leading the most partitions (about a third).
        before = leaders(admin, "scale")
        counts = {n: sum(1 for v in before.values() if v == n) for n in (1, 2, 3)}
        victim = max(counts, key=counts.get)
        out["victim_led"] = counts[victim]
        survivors = [n for n in (1, 2, 3) if n != victim]
        sadmin = AdminClient({"bootstrap.servers": c.bootstrap(survivors)})
        leaders(sadmin, "scale")
        pending = {p for p, l in before.items() if l == victim}
        t_kill = time.monotonic()
        c.kill(victim)
        times = []
        deadline = t_kill + 60
        while pending and time.monotonic() < deadline:
            now_l = leaders(sadmin, "scale")
            now = time.monotonic() - t_kill
            for p in list(pending):
                if now_l.get(p, -1) in survivors:
                    times.append(now)
                    pending.discard(p)
            time.sleep(0.05)
        out["failover_median_s"] = round(statistics.median(times), 2) if times else None
        out["failover_max_s"] = round(max(times), 2) if times else None
        out["failover_unled"] = len(pending)
        # Rebalance: the killed node comes back and takes its share of leaders again.
        t_back = time.monotonic()
        c.start(victim)
        back = wait_until(
            lambda: sum(1 for v in leaders(admin, "scale").values() if v == victim) >= partitions // 4,
            180, 0.5)
        out["rebalance_s"] = round(time.monotonic() - t_back, 1) if back else None
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keel", default="target/release/keel")
    ap.add_argument("--partitions", default="100,1000,3000,10000")
    ap.add_argument("--base-port", type=int, default=41092)
    ap.add_argument("--idle-s", type=float, default=20)
    ap.add_argument("--settle-s", type=float, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print("| partitions | create s | idle CPU % of a core | RSS per replica KiB | RSS total MiB | failover median s | max s | not re-led | rebalance s | Metadata s | cluster status s | fds per node |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in [int(x) for x in args.partitions.split(",")]:
        r = measure(args.keel, n, args.base_port, args.idle_s, args.settle_s)
        print(f"| {n} | {r.get('create_s')} | {r.get('idle_cpu_pct')} | {r.get('rss_per_replica_kib')} | "
              f"{r.get('rss_total_mib')} | {r.get('failover_median_s')} | {r.get('failover_max_s')} | "
              f"{r.get('failover_unled')} of {r.get('victim_led')} | {r.get('rebalance_s')} | "
              f"{r.get('metadata_s')} | {r.get('status_s')} | {r.get('fds_per_node')} |", flush=True)
        if args.json:
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
