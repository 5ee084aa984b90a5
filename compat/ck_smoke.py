#!/usr/bin/env python3
"""confluent-kafka (librdkafka 2.x) against a running Keel broker.

AdminClient CreateTopics and DescribeConfigs, an idempotent acks=all producer with keys
and headers, then a reader that assigns every partition from the beginning and checks
that every delivered message is read back at its delivered offset with its key, value
and headers, and that ListOffsets (watermarks) agree with what was written.
Consumer groups (subscribe/commit) are exercised by ck_group_smoke.py.
"""
import os, sys, time, uuid
from confluent_kafka import Producer, Consumer, TopicPartition, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic, ConfigResource

BOOTSTRAP = os.environ.get("BOOTSTRAP", "127.0.0.1:9092")
N = int(os.environ.get("N", "2000"))
PARTITIONS = int(os.environ.get("PARTITIONS", "3"))
TOPIC = os.environ.get("TOPIC", f"ck-smoke-{uuid.uuid4().hex[:8]}")
DEADLINE = time.time() + float(os.environ.get("TIMEOUT_S", "90"))


def fail(msg):
    print("FAIL:", msg)
    print("0 passed, 1 failed")
    sys.exit(1)


def create_topic():
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    fs = admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1,
                                       config={"retention.ms": "86400000"})], operation_timeout=15)
    fs[TOPIC].result(timeout=30)
    res = ConfigResource(ConfigResource.Type.TOPIC, TOPIC)
    configs = admin.describe_configs([res])[res].result(timeout=30)
    if configs["retention.ms"].value != "86400000":
        fail(f"retention.ms described as {configs['retention.ms'].value}")
    md = admin.list_topics(topic=TOPIC, timeout=10)
    parts = len(md.topics[TOPIC].partitions)
    if parts != PARTITIONS:
        fail(f"topic has {parts} partitions, expected {PARTITIONS}")
    print(f"created {TOPIC} with {parts} partitions; retention.ms described correctly")


def produce():
    p = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all", "enable.idempotence": True,
                  "linger.ms": 5, "message.timeout.ms": 30000, "compression.type": "lz4"})
    delivered, errors = {}, []

    def dr(err, msg):
        if err:
            errors.append(err)
        else:
            delivered[msg.key().decode()] = (msg.partition(), msg.offset())

    for i in range(N):
        p.produce(TOPIC, key=f"k{i}".encode(), value=f"v{i}".encode(),
                  headers=[("h", str(i).encode())], on_delivery=dr)
        p.poll(0)
    left = p.flush(30)
    if left or errors or len(delivered) != N:
        fail(f"produce: left={left} errors={errors[:3]} delivered={len(delivered)}")
    print(f"produced {N} with acks=all (idempotent, lz4)")
    return delivered


def read_back(delivered):
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"ck-reader-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
    seen = {}
    while len(seen) < N and time.time() < DEADLINE:
        for m in c.consume(num_messages=500, timeout=1.0):
            if m.error():
                raise KafkaException(m.error())
            key = m.key().decode()
            if key in seen:
                fail(f"{key} read twice")
            seen[key] = (m.partition(), m.offset())
            if m.value().decode() != "v" + key[1:] or m.headers() != [("h", key[1:].encode())]:
                fail(f"{key}: value {m.value()} headers {m.headers()}")
    if seen != delivered:
        missing = [k for k in delivered if seen.get(k) != delivered[k]][:3]
        fail(f"read {len(seen)}/{N}; first mismatches {missing}")
    total = 0
    for p in range(PARTITIONS):
        lo, hi = c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)
        total += hi - lo
    if total != N:
        fail(f"watermarks cover {total} records, expected {N}")
    c.close()
    print(f"read back all {N} at their delivered offsets; watermarks agree")


if __name__ == "__main__":
    print(f"broker={BOOTSTRAP} topic={TOPIC} n={N}")
    create_topic()
    read_back(produce())
    print("1 passed, 0 failed")
