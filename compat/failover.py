#!/usr/bin/env python3
"""Failover time as a client sees it: against a running `keel dev --nodes 3` cluster, a
confluent-kafka producer with default settings (acks=all) writes one message at a time to
an RF=3 topic; the leader of its partition is killed with kill -9; the time from the kill
to the first acknowledged write is measured. The killed node is restarted (with its own
command line) between rounds.

    compat/failover.py --base-port 39092 --rounds 5 [--busy]

--busy keeps writes in flight when the leader dies (a producer under load); without it the
producer writes one message at a time and is idle at the kill. RDK_DEBUG=msg,topic passes
librdkafka's debug contexts to the producer. Prints one line per round and the median.
"""
import argparse
import os
import threading
import signal
import statistics
import subprocess
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic


def leader_of(admin, topic):
    md = admin.list_topics(topic, timeout=5)
    t = md.topics.get(topic)
    if t is None or t.error is not None or 0 not in t.partitions:
        return -1
    return t.partitions[0].leader


def pid_of(node):
    out = subprocess.run(["pgrep", "-f", f"keel serve --node-id {node} "], capture_output=True, text=True)
    pids = out.stdout.split()
    return int(pids[0]) if pids else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-port", type=int, default=39092)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--topic", default="failover")
    ap.add_argument(
        "--busy",
        action="store_true",
        help="keep a write in flight at every moment (as a busy producer does) instead of one at a time",
    )
    args = ap.parse_args()
    bootstrap = ",".join(f"127.0.0.1:{args.base_port + i}" for i in range(3))
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(args.topic, 1, 3)])
    for f in fs.values():
        try:
            f.result()
        except Exception as e:  # already exists
            print(f"create: {e}")
    gaps = []
    for r in range(args.rounds):
        # Wait for a leader, and let the producer warm up against it.
        deadline = time.time() + 30
        while leader_of(admin, args.topic) < 0:
            if time.time() > deadline:
                raise SystemExit("no leader")
            time.sleep(0.2)
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, **({"debug": os.environ["RDK_DEBUG"]} if os.environ.get("RDK_DEBUG") else {})})
        acked = []

        def on_delivery(err, msg):
            if err is None:
                acked.append(time.monotonic())

        for i in range(50):
            p.produce(args.topic, f"warm-{r}-{i}".encode(), partition=0, on_delivery=on_delivery)
            p.flush(10)
        leader = leader_of(admin, args.topic)
        pid = pid_of(leader)
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:-1]
        acked.clear()
        elected = []

        def watch():
            # A separate client polls Metadata for the new leader.
            watcher = AdminClient({"bootstrap.servers": bootstrap})
            while time.monotonic() - killed < 30:
                now = leader_of(watcher, args.topic)
                if now >= 0 and now != leader:
                    elected.append(time.monotonic())
                    return
                time.sleep(0.02)

        if args.busy:
            # Writes keep flowing: some are in flight when the leader dies. Only writes sent
            # after the kill count.
            def on_busy(err, msg):
                if err is None and msg.value().startswith(b"after"):
                    acked.append(time.monotonic())

            for i in range(20):
                p.produce(args.topic, f"busy-{r}-{i}".encode(), partition=0, on_delivery=on_busy)
            p.poll(0)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        t = threading.Thread(target=watch)
        t.start()
        i = 0
        while not acked and time.monotonic() - killed < 60:
            if args.busy:
                p.produce(args.topic, f"after-{r}-{i}".encode(), partition=0, on_delivery=on_busy)
                i += 1
                p.poll(0.001)
                continue
            p.produce(args.topic, f"after-{r}-{i}".encode(), partition=0, on_delivery=on_delivery)
            i += 1
            p.flush(30)
        p.flush(30)
        t.join()
        gap = acked[0] - killed
        gaps.append(gap)
        seen = f"{(elected[0] - killed) * 1000:.0f} ms" if elected else "not seen"
        print(f"round {r + 1}: leader {leader} killed; new leader in Metadata after {seen}; "
              f"first acknowledged write {gap * 1000:.0f} ms later")
        subprocess.Popen(cmdline, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Let it rejoin and the preferred replica reclaim leadership before the next round.
        time.sleep(8)
    print(f"median {statistics.median(gaps) * 1000:.0f} ms over {len(gaps)} rounds")


if __name__ == "__main__":
    main()
