#!/usr/bin/env python3
"""Transaction throughput and commit latency through confluent-kafka (librdkafka).

One transactional producer runs TXNS transactions of RECORDS records each (spread over
PARTITIONS partitions, VALUE_BYTES bytes each) and reports transactions per second,
records per second, and the commit latency (commit_transaction() call to return)
percentiles; then a read_committed and a read_uncommitted consumer each read the topic
from the start and report records per second.

  BOOTSTRAP=127.0.0.1:9092 python3 compat/txn_perf.py
"""
import os, time, uuid
from confluent_kafka import Producer, Consumer, TopicPartition, KafkaError
from confluent_kafka.admin import AdminClient, NewTopic

BOOTSTRAP = os.environ.get("BOOTSTRAP", "127.0.0.1:9092")
TXNS = int(os.environ.get("TXNS", "500"))
RECORDS = int(os.environ.get("RECORDS", "10"))
PARTITIONS = int(os.environ.get("PARTITIONS", "3"))
VALUE_BYTES = int(os.environ.get("VALUE_BYTES", "100"))
RF = int(os.environ.get("RF", "1"))
topic = f"txn-perf-{uuid.uuid4().hex[:6]}"


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=RF)])[topic].result(30)
p = Producer({"bootstrap.servers": BOOTSTRAP, "transactional.id": f"perf-{topic}", "linger.ms": 0})
p.init_transactions(30)
value = b"x" * VALUE_BYTES
lat = []
start = time.time()
for t in range(TXNS):
    p.begin_transaction()
    for i in range(RECORDS):
        p.produce(topic, value=value, partition=i % PARTITIONS)
    c0 = time.time()
    p.commit_transaction(30)
    lat.append((time.time() - c0) * 1000)
elapsed = time.time() - start
print(f"{TXNS} transactions of {RECORDS} records ({VALUE_BYTES} B) over {PARTITIONS} partitions, RF {RF}: "
      f"{TXNS / elapsed:.0f} txn/s, {TXNS * RECORDS / elapsed:.0f} records/s; commit latency "
      f"p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms, p999 {pct(lat, 0.999):.1f} ms")

for iso in ("read_uncommitted", "read_committed"):
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"perf-{iso}-{topic}",
                  "isolation.level": iso, "enable.partition.eof": True})
    c.assign([TopicPartition(topic, i, 0) for i in range(PARTITIONS)])
    n, eof, s0 = 0, set(), time.time()
    while len(eof) < PARTITIONS and time.time() - s0 < 120:
        for m in c.consume(1000, 1.0):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                continue
            n += 1
    dt = time.time() - s0
    c.close()
    print(f"{iso}: {n} records in {dt:.2f} s ({n / dt:.0f} records/s)")
