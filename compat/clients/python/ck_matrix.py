"""The client matrix's scenarios (compat/clients/SCENARIOS.md) with confluent-kafka-python."""

import os
import time
import traceback

from confluent_kafka import Consumer, Producer, TopicPartition, ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

BOOT = os.environ["BOOTSTRAP"]
PREFIX = os.environ.get("PREFIX", "ck")
BASE_TS = 1_700_000_000_000
RESULTS = []


def report(name, status, detail=""):
    print(f"RESULT {name} {status} {detail}".rstrip(), flush=True)


def scenario(fn):
    name = fn.__name__
    try:
        out = fn()
        status, detail = out if isinstance(out, tuple) else ("PASS", "")
        report(name, status, detail)
    except Exception as e:  # noqa: BLE001 - a scenario's error is its result
        traceback.print_exc()
        report(name, "FAIL", repr(e).replace("\n", " ")[:300])


def check(cond, what):
    if not cond:
        raise AssertionError(what)


admin = AdminClient({"bootstrap.servers": BOOT})


def create(topic, partitions):
    for f in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        f.result(30)
    deadline = time.time() + 30
    while time.time() < deadline:
        md = admin.list_topics(topic, timeout=10).topics.get(topic)
        if md and md.error is None and len(md.partitions) == partitions and all(
            p.leader >= 0 for p in md.partitions.values()
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"{topic} never had leaders")


def producer(**extra):
    conf = {"bootstrap.servers": BOOT, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    conf.update(extra)
    return Producer(conf)


def deliver(p, topic, records):
    """records: (partition|None, key, value, headers, timestamp); returns the delivery reports."""
    errors = []
    for part, key, value, headers, ts in records:
        kw = {"key": key, "value": value}
        for name, v in (("partition", part), ("headers", headers), ("timestamp", ts)):
            if v is not None:
                kw[name] = v
        p.produce(topic, on_delivery=lambda err, msg: errors.append(err) if err else None, **kw)
    check(p.flush(30) == 0, "flush left records unsent")
    check(not errors, f"delivery errors: {errors}")


def read(topic, assignments, count, timeout=30):
    c = Consumer({"bootstrap.servers": BOOT, "group.id": f"{PREFIX}-reader", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, o) for p, o in assignments])
    out = []
    deadline = time.time() + timeout
    while len(out) < count and time.time() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        out.append(m)
    c.close()
    return out


def admin_():
    topic = f"{PREFIX}-admin"
    create(topic, 3)
    md = admin.list_topics(topic, timeout=10).topics[topic]
    check(len(md.partitions) == 3, f"{len(md.partitions)} partitions")
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.ms": "3600000"})
    for f in admin.alter_configs([res]).values():
        f.result(30)
    # A changed config reaches every broker soon after it is committed, not at once.
    def described():
        got = list(admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values())[0].result(30)
        return got["retention.ms"].value

    deadline = time.time() + 15
    while described() != "3600000" and time.time() < deadline:
        time.sleep(0.2)
    check(described() == "3600000", f"retention.ms = {described()}")
    check(topic in admin.list_topics(timeout=10).topics, "not listed")
    for f in admin.delete_topics([topic]).values():
        f.result(30)
    deadline = time.time() + 30
    while topic in admin.list_topics(timeout=10).topics:
        check(time.time() < deadline, "still listed after delete")
        time.sleep(0.2)


admin_.__name__ = "admin"


def produce():
    topic = f"{PREFIX}-produce"
    create(topic, 3)
    recs = [
        (None, f"key-{i % 5}".encode(), f"value-{i}".encode(), [("h1", f"a{i}".encode()), ("h2", b"b")], BASE_TS + i)
        for i in range(30)
    ]
    deliver(producer(), topic, recs)
    got = read(topic, [(p, 0) for p in range(3)], 30)
    check(len(got) == 30, f"read {len(got)} of 30")
    key_part = {}
    last_seen = {}
    for m in got:
        i = int(m.value().decode().split("-")[1])
        check(m.key() == f"key-{i % 5}".encode(), f"key of {i}")
        check(m.headers() == [("h1", f"a{i}".encode()), ("h2", b"b")], f"headers of {i}: {m.headers()}")
        check(m.timestamp()[1] == BASE_TS + i, f"timestamp of {i}: {m.timestamp()}")
        check(key_part.setdefault(m.key(), m.partition()) == m.partition(), f"key {m.key()} in two partitions")
        check(last_seen.get(m.key(), -1) < i, f"key {m.key()} out of order")
        last_seen[m.key()] = i


def compression():
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"]:
        topic = f"{PREFIX}-codec-{codec}"
        create(topic, 1)
        values = [f"{codec}-{i}-".encode() * 20 for i in range(10)]
        deliver(producer(**{"compression.type": codec}), topic, [(0, None, v, None, None) for v in values])
        got = read(topic, [(0, 0)], 10)
        check([m.value() for m in got] == values, f"{codec}: read back {len(got)} records, not the 10 sent")


def offsets():
    topic = f"{PREFIX}-offsets"
    create(topic, 1)
    deliver(producer(), topic, [(0, None, f"r{i}".encode(), None, BASE_TS + 1000 * i) for i in range(20)])
    tp = TopicPartition(topic, 0)
    c = Consumer({"bootstrap.servers": BOOT, "group.id": f"{PREFIX}-offsets"})
    low, high = c.get_watermark_offsets(tp, timeout=10, cached=False)
    check((low, high) == (0, 20), f"earliest/latest {low}/{high}")
    found = c.offsets_for_times([TopicPartition(topic, 0, BASE_TS + 7000)], timeout=10)[0]
    check(found.offset == 7, f"offset for timestamp = {found.offset}")
    c.close()
    got = read(topic, [(0, 12)], 8)
    check([m.offset() for m in got] == list(range(12, 20)), f"from 12: {[m.offset() for m in got]}")


def group():
    topic = f"{PREFIX}-group"
    gid = f"{PREFIX}-group"
    create(topic, 4)
    p = producer()

    def member():
        c = Consumer({
            "bootstrap.servers": BOOT, "group.id": gid, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "session.timeout.ms": 10000,
        })
        c.subscribe([topic])
        return c

    a, b = member(), member()
    deadline = time.time() + 60
    while not (a.assignment() and b.assignment()) and time.time() < deadline:
        for c in (a, b):
            check(c.poll(0.2) is None, "a record before any was produced")
    check(a.assignment() and b.assignment(), f"assignments {a.assignment()} / {b.assignment()}")
    deliver(p, topic, [(i % 4, None, f"g{i}".encode(), None, None) for i in range(40)])
    seen = {}
    while len(seen) < 40 and time.time() < deadline:
        for c in (a, b):
            m = c.poll(0.2)
            if m is not None and not m.error():
                seen[m.value()] = c
    check(len(seen) == 40, f"two members read {len(seen)} of 40")
    check(len(a.assignment()) + len(b.assignment()) == 4 and a.assignment() and b.assignment(),
          f"assignments {a.assignment()} / {b.assignment()}")
    for c in (a, b):
        c.commit(asynchronous=False)
    a.close()
    deadline = time.time() + 60
    while len(b.assignment()) < 4 and time.time() < deadline:
        check(b.poll(0.2) is None, "the remaining member re-read a committed record")
    check(len(b.assignment()) == 4, f"remaining member has {len(b.assignment())} partitions")
    deliver(p, topic, [(i % 4, None, f"h{i}".encode(), None, None) for i in range(20)])
    more = []
    while len(more) < 20 and time.time() < deadline:
        m = b.poll(0.2)
        if m is not None and not m.error():
            more.append(m.value())
    check(sorted(more) == sorted(f"h{i}".encode() for i in range(20)), f"after rebalance read {sorted(more)}")
    b.commit(asynchronous=False)
    b.close()
    deliver(p, topic, [(i % 4, None, f"j{i}".encode(), None, None) for i in range(10)])
    c = member()
    last = []
    deadline = time.time() + 60
    while len(last) < 10 and time.time() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            last.append(m.value())
    extra = c.poll(2.0)
    check(sorted(last) == sorted(f"j{i}".encode() for i in range(10)), f"resumed member read {last}")
    check(extra is None or extra.error(), "resumed member read more than the 10 new records")
    c.commit(asynchronous=False)
    c.close()


def groups_admin():
    gid = f"{PREFIX}-group"
    listed = admin.list_consumer_groups().result(30)
    check(gid in [g.group_id for g in listed.valid], "group not listed")
    d = admin.describe_consumer_groups([gid])[gid].result(30)
    check(str(d.state).endswith("EMPTY"), f"state {d.state}")
    offs = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(gid)])[gid].result(30)
    parts = offs.topic_partitions
    check(len(parts) == 4 and sum(tp.offset for tp in parts) == 70, f"committed {[(t.partition, t.offset) for t in parts]}")


for fn in (admin_, produce, compression, offsets, group, groups_admin):
    scenario(fn)
