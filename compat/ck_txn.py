#!/usr/bin/env python3
"""Kafka transactions through confluent-kafka (librdkafka 2.x) against a running Keel.

1. Consume-transform-produce: a read_committed consumer in a group feeds a transactional
   producer that writes each input record transformed and commits the consumer's offsets
   with send_offsets_to_transaction; every third transaction is aborted and its input
   re-read from the committed offsets.
   Checks: a read_committed reader of the output sees every input record exactly once and
   no record of an aborted transaction; a read_uncommitted reader sees the aborted records
   too (they are in the log, hidden by the markers); the group's committed offsets are the
   input's end.
2. Zombie fencing: a second producer with the same transactional.id fences the first; the
   first's open transaction is aborted (no read_committed reader sees it) and its commit
   fails as fenced.
3. Timeout: a transaction left open past transaction.timeout.ms is aborted by the
   coordinator; the last stable offset moves past it and its records stay hidden.
"""
import os, sys, time, uuid
from confluent_kafka import Producer, Consumer, TopicPartition, KafkaException, KafkaError
from confluent_kafka.admin import AdminClient, NewTopic

BOOTSTRAP = os.environ.get("BOOTSTRAP", "127.0.0.1:9092")
N = int(os.environ.get("N", "300"))
RUN = uuid.uuid4().hex[:8]
IN, OUT = f"txn-in-{RUN}", f"txn-out-{RUN}"
DEADLINE = time.time() + float(os.environ.get("TIMEOUT_S", "150"))
passed = 0


def fail(msg):
    print("FAIL:", msg)
    print(f"{passed} passed, 1 failed")
    sys.exit(1)


def ok(msg):
    global passed
    passed += 1
    print("ok:", msg)


def create(topics):
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    fs = admin.create_topics([NewTopic(t, num_partitions=3, replication_factor=1) for t in topics])
    for f in fs.values():
        f.result(timeout=30)


def read_all(topic, isolation, expect_at_least, quiet_s=3.0):
    """Every record of `topic` from the start, as (partition, offset, key, value)."""
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"reader-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False, "isolation.level": isolation,
                  "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, p, 0) for p in range(3)])
    out, last = [], time.time()
    while time.time() < DEADLINE:
        m = c.poll(0.2)
        if m is None:
            if len(out) >= expect_at_least and time.time() - last > quiet_s:
                break
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                continue
            fail(f"read {topic}: {m.error()}")
        out.append((m.partition(), m.offset(), m.key(), m.value()))
        last = time.time()
    c.close()
    return out


def consume_transform_produce():
    p = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all"})
    for i in range(N):
        p.produce(IN, key=f"k{i}".encode(), value=f"v{i}".encode(), partition=i % 3)
    if p.flush(30):
        fail("input not delivered")
    group = f"ctp-{RUN}"
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group, "enable.auto.commit": False,
                  "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
    c.subscribe([IN])
    tp = Producer({"bootstrap.servers": BOOTSTRAP, "transactional.id": f"ctp-{RUN}",
                   "linger.ms": 5})
    tp.init_transactions(30)
    done, txns, aborted_records = set(), 0, 0
    while len(done) < N and time.time() < DEADLINE:
        msgs = c.consume(50, 1.0)
        msgs = [m for m in msgs if not m.error()]
        if not msgs:
            continue
        tp.begin_transaction()
        for m in msgs:
            tp.produce(OUT, key=m.key(), value=m.value().upper(), partition=m.partition())
        tp.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata(), 30)
        txns += 1
        if txns % 3 == 0:
            # Delivered first, so that the aborted records are in the log.
            if tp.flush(30):
                fail("records of a transaction to abort not delivered")
            tp.abort_transaction(30)
            aborted_records += len(msgs)
            # Re-read the aborted input from the committed offsets.
            for t in c.committed(c.assignment(), 30):
                c.seek(TopicPartition(t.topic, t.partition, t.offset if t.offset >= 0 else 0))
        else:
            tp.commit_transaction(30)
            done.update(m.key() for m in msgs)
    if len(done) != N:
        fail(f"consume-transform-produce processed {len(done)} of {N}")
    committed = c.committed([TopicPartition(IN, p) for p in range(3)], 30)
    c.close()
    ends = {p: N // 3 + (1 if p < N % 3 else 0) for p in range(3)}
    got = {t.partition: t.offset for t in committed}
    if got != ends:
        fail(f"committed offsets {got}, input ends {ends}")
    ok(f"{txns} transactions ({aborted_records} records aborted and redone); committed offsets at the input's end")
    seen = read_all(OUT, "read_committed", N)
    keys = [k for (_, _, k, _) in seen]
    if sorted(keys) != sorted(f"k{i}".encode() for i in range(N)):
        dup = len(keys) - len(set(keys))
        fail(f"read_committed saw {len(keys)} records ({dup} duplicates) for {N} inputs")
    if any(v != f"V{k.decode()[1:]}".encode() for (_, _, k, v) in seen):
        fail("a transformed value is wrong")
    ok(f"read_committed reader saw each of {N} outputs exactly once")
    raw = read_all(OUT, "read_uncommitted", N + aborted_records)
    if len(raw) != N + aborted_records:
        fail(f"read_uncommitted saw {len(raw)} records, expected {N + aborted_records}")
    ok(f"read_uncommitted reader sees the {aborted_records} aborted records as well")
    tp.flush(10)


def zombie():
    tid = f"zombie-{RUN}"
    a = Producer({"bootstrap.servers": BOOTSTRAP, "transactional.id": tid})
    a.init_transactions(30)
    a.begin_transaction()
    for i in range(10):
        a.produce(OUT, key=b"zombie", value=f"z{i}".encode(), partition=0)
    if a.flush(30):
        fail("zombie's records not delivered")
    b = Producer({"bootstrap.servers": BOOTSTRAP, "transactional.id": tid})
    b.init_transactions(30)
    b.begin_transaction()
    b.produce(OUT, key=b"successor", value=b"s", partition=0)
    b.commit_transaction(30)
    try:
        a.commit_transaction(30)
        fail("the fenced producer's commit succeeded")
    except KafkaException as e:
        err = e.args[0]
        if not (err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                              KafkaError.INVALID_PRODUCER_EPOCH)):
            fail(f"the fenced producer's commit failed with {err}, not as fenced")
    seen = read_all(OUT, "read_committed", 1, quiet_s=2.0)
    if any(k == b"zombie" for (_, _, k, _) in seen):
        fail("a read_committed reader saw the fenced producer's records")
    if not any(k == b"successor" for (_, _, k, _) in seen):
        fail("the successor's committed record is missing")
    ok("a second producer with the same transactional.id fenced the first and aborted its transaction")


def timeout():
    t = Producer({"bootstrap.servers": BOOTSTRAP, "transactional.id": f"hang-{RUN}",
                  "transaction.timeout.ms": 2000})
    t.init_transactions(30)
    t.begin_transaction()
    t.produce(OUT, key=b"hanging", value=b"h", partition=1)
    if t.flush(30):
        fail("hanging record not delivered")
    plain = Producer({"bootstrap.servers": BOOTSTRAP})
    plain.produce(OUT, key=b"after", value=b"a", partition=1)
    plain.flush(30)
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"lso-{RUN}",
                  "isolation.level": "read_committed"})
    start = time.time()
    while time.time() < DEADLINE:
        seen = read_all(OUT, "read_committed", 0, quiet_s=1.0)
        if any(k == b"after" for (_, _, k, _) in seen):
            if any(k == b"hanging" for (_, _, k, _) in seen):
                fail("the timed-out transaction's record became visible")
            ok(f"a transaction past its timeout was aborted; read_committed moved past it after {time.time() - start:.1f} s")
            c.close()
            return
    fail("the last stable offset never moved past the hanging transaction")


create([IN, OUT])
consume_transform_produce()
zombie()
timeout()
print(f"{passed} passed, 0 failed")
