"""The client matrix's scenarios (compat/clients/SCENARIOS.md) with kafka-python (3.x)."""

import os
import threading
import time
import traceback

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

BOOT = os.environ["BOOTSTRAP"].split(",")
PREFIX = os.environ.get("PREFIX", "kp")
BASE_TS = 1_700_000_000_000


def scenario(name, fn):
    try:
        fn()
        print(f"RESULT {name} PASS", flush=True)
    except Exception as e:  # noqa: BLE001 - a scenario's error is its result
        traceback.print_exc()
        print(f"RESULT {name} FAIL {repr(e).replace(chr(10), ' ')[:300]}", flush=True)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def until(seconds, fn):
    deadline = time.time() + seconds
    while True:
        if fn():
            return True
        if time.time() > deadline:
            return False
        time.sleep(0.2)


admin = KafkaAdminClient(bootstrap_servers=BOOT)


def partitions_of(topic):
    for t in admin.describe_topics([topic]):
        if t["name"] == topic and not t.get("error_code"):
            return t["partitions"]
    return []


def create(topic, partitions):
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    check(until(30, lambda: len(partitions_of(topic)) == partitions
                and all(p["leader_id"] >= 0 for p in partitions_of(topic))), f"{topic} never had leaders")


def producer(codec=None):
    return KafkaProducer(bootstrap_servers=BOOT, acks="all", enable_idempotence=True,
                         compression_type=codec, linger_ms=5)


def send(p, topic, records):
    """records: dicts of send() keyword arguments."""
    futures = [p.send(topic, **r) for r in records]
    p.flush(30)
    for f in futures:
        f.get(timeout=30)


def read(topic, start, count):
    c = KafkaConsumer(bootstrap_servers=BOOT, group_id=None, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in start]
    c.assign(tps)
    for tp in tps:
        c.seek(tp, start[tp.partition])
    out = []
    deadline = time.time() + 30
    while len(out) < count and time.time() < deadline:
        for recs in c.poll(timeout_ms=300).values():
            out.extend(recs)
    c.close()
    return out


def admin_scenario():
    topic = f"{PREFIX}-admin"
    create(topic, 3)
    check(len(partitions_of(topic)) == 3, f"{len(partitions_of(topic))} partitions")
    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": "3600000"})])
    # A changed config reaches every broker soon after it is committed, not at once.
    def described():
        got = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
        return got["topic"][topic]["retention.ms"]["value"]

    until(15, lambda: described() == "3600000")
    check(described() == "3600000", f"retention.ms = {described()}")
    check(topic in admin.list_topics(), "not listed")
    admin.delete_topics([topic])
    check(until(30, lambda: topic not in admin.list_topics()), "still listed after delete")


def produce():
    topic = f"{PREFIX}-produce"
    create(topic, 3)
    p = producer()
    send(p, topic, [dict(key=f"key-{i % 5}".encode(), value=f"value-{i}".encode(),
                         headers=[("h1", f"a{i}".encode()), ("h2", b"b")], timestamp_ms=BASE_TS + i)
                    for i in range(30)])
    p.close()
    got = read(topic, {0: 0, 1: 0, 2: 0}, 30)
    check(len(got) == 30, f"read {len(got)} of 30")
    key_part, last = {}, {}
    for m in got:
        i = int(m.value.decode().split("-")[1])
        check(m.key == f"key-{i % 5}".encode(), f"key of {i}")
        check(list(m.headers) == [("h1", f"a{i}".encode()), ("h2", b"b")], f"headers of {i}: {m.headers}")
        check(m.timestamp == BASE_TS + i, f"timestamp of {i}: {m.timestamp}")
        check(key_part.setdefault(m.key, m.partition) == m.partition, f"key {m.key} in two partitions")
        check(last.get(m.key, -1) < i, f"key {m.key} out of order")
        last[m.key] = i


def compression():
    for codec in [None, "gzip", "snappy", "lz4", "zstd"]:
        name = codec or "none"
        topic = f"{PREFIX}-codec-{name}"
        create(topic, 1)
        values = [f"{name}-{i}-".encode() * 20 for i in range(10)]
        p = producer(codec)
        send(p, topic, [dict(value=v, partition=0) for v in values])
        p.close()
        got = read(topic, {0: 0}, 10)
        check([m.value for m in got] == values, f"{name}: read back {len(got)} records, not the 10 sent")


def offsets():
    topic = f"{PREFIX}-offsets"
    create(topic, 1)
    p = producer()
    send(p, topic, [dict(value=f"r{i}".encode(), partition=0, timestamp_ms=BASE_TS + 1000 * i) for i in range(20)])
    p.close()
    tp = TopicPartition(topic, 0)
    c = KafkaConsumer(bootstrap_servers=BOOT, group_id=None)
    low, high = c.beginning_offsets([tp])[tp], c.end_offsets([tp])[tp]
    check((low, high) == (0, 20), f"earliest/latest {low}/{high}")
    found = c.offsets_for_times({tp: BASE_TS + 7000})[tp]
    check(found is not None and found.offset == 7, f"offset for timestamp = {found}")
    c.close()
    got = read(topic, {0: 12}, 8)
    check([m.offset for m in got] == list(range(12, 20)), f"from 12: {[m.offset for m in got]}")


class Member(threading.Thread):
    """A group member polling in its own thread (as an application's consumer would), that
    commits synchronously after every poll that returned records."""

    def __init__(self, topic, gid):
        super().__init__(daemon=True)
        self.c = KafkaConsumer(topic, bootstrap_servers=BOOT, group_id=gid, enable_auto_commit=False,
                               auto_offset_reset="earliest", session_timeout_ms=10000, heartbeat_interval_ms=1000)
        self.lock = threading.Lock()
        self.seen = set()
        self.owned = 0
        self.stop = threading.Event()
        self.error = None
        self.start()

    def run(self):
        try:
            while not self.stop.is_set():
                got = self.c.poll(timeout_ms=200)
                with self.lock:
                    for recs in got.values():
                        self.seen.update(r.value.decode() for r in recs)
                    self.owned = len(self.c.assignment())
                if got:
                    self.c.commit()
        except Exception as e:  # noqa: BLE001 - reported by close()
            self.error = e
        finally:
            self.c.close()

    def state(self):
        with self.lock:
            return self.owned, set(self.seen)

    def close(self):
        self.stop.set()
        self.join(30)
        if self.error:
            raise self.error


def names(tag, n):
    return {f"{tag}{i}" for i in range(n)}


def group():
    topic = gid = f"{PREFIX}-group"
    create(topic, 4)
    p = producer()
    a, b = Member(topic, gid), Member(topic, gid)
    check(until(60, lambda: a.state()[0] > 0 and b.state()[0] > 0 and a.state()[0] + b.state()[0] == 4),
          f"assignments {a.state()[0]} / {b.state()[0]}")
    check(not a.state()[1] and not b.state()[1], "a record before any was produced")
    send(p, topic, [dict(value=f"g{i}".encode(), partition=i % 4) for i in range(40)])
    until(60, lambda: len(a.state()[1] | b.state()[1]) >= 40)
    seen = a.state()[1] | b.state()[1]
    check(seen == names("g", 40), f"two members read {len(seen)} of 40")
    a.close()
    until(60, lambda: b.state()[0] == 4)
    check(b.state()[0] == 4, f"remaining member has {b.state()[0]} partitions")
    check(b.state()[1] == names("g", 40) & b.state()[1], "the remaining member read something new")
    with b.lock:
        b.seen.clear()
    send(p, topic, [dict(value=f"h{i}".encode(), partition=i % 4) for i in range(20)])
    until(60, lambda: names("h", 20) <= b.state()[1])
    more = b.state()[1]
    check(more == names("h", 20), f"after rebalance read {sorted(more)}")
    b.close()
    send(p, topic, [dict(value=f"j{i}".encode(), partition=i % 4) for i in range(10)])
    c = Member(topic, gid)
    until(60, lambda: len(c.state()[1]) >= 10)
    time.sleep(2)  # a window in which a re-read of older records would show
    c.close()
    check(c.state()[1] == names("j", 10), f"resumed member read {sorted(c.state()[1])}")
    p.close()


def groups_admin():
    gid = f"{PREFIX}-group"
    listed = admin.list_groups()
    ids = [g["group_id"] for g in listed]
    check(gid in ids, f"group not listed in {ids}")
    d = admin.describe_groups([gid])[gid]
    check(d["group_state"] == "Empty" and d["protocol_type"] == "consumer", f"described {d}")
    offs = admin.list_group_offsets({gid: None})[gid]
    check(len(offs) == 4 and sum(o.offset for o in offs.values()) == 70, f"committed {offs}")


for name, fn in [("admin", admin_scenario), ("produce", produce), ("compression", compression),
                 ("offsets", offsets), ("group", group), ("groups_admin", groups_admin)]:
    scenario(name, fn)
