#!/usr/bin/env python3
"""confluent-kafka consumer groups against a running Keel broker.

Creates a topic (AdminClient CreateTopics; CREATE_TOPIC=0 relies on auto-creation), produces N keyed messages with acks=all and
idempotence, then consumes them with two consumers in one consumer group
(subscribe -> JoinGroup/SyncGroup/Heartbeat), commits offsets, and checks
that the committed offsets equal the log end offsets.
"""
import os, sys, time, uuid, threading
from confluent_kafka import Producer, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BOOTSTRAP = os.environ.get("BOOTSTRAP", "127.0.0.1:9092")
N = int(os.environ.get("N", "1000"))
PARTITIONS = int(os.environ.get("PARTITIONS", "3"))
TOPIC = os.environ.get("TOPIC", f"ck-group-{uuid.uuid4().hex[:8]}")
GROUP = os.environ.get("GROUP", f"ck-smoke-group-{uuid.uuid4().hex[:8]}")
DEADLINE = time.time() + float(os.environ.get("TIMEOUT_S", "90"))


def create_topic():
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    if os.environ.get("CREATE_TOPIC", "1") == "1":          # CreateTopics API
        fs = admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)],
                                 operation_timeout=15)
        fs[TOPIC].result(timeout=30)
    else:                                                    # rely on auto-create via Metadata
        Producer({"bootstrap.servers": BOOTSTRAP}).list_topics(topic=TOPIC, timeout=10)
    for _ in range(50):
        md = admin.list_topics(topic=TOPIC, timeout=10)
        t = md.topics.get(TOPIC)
        if t is not None and t.error is None and t.partitions:
            break
        time.sleep(0.2)
    parts = len(md.topics[TOPIC].partitions)
    print(f"topic {TOPIC} has {parts} partitions (broker id(s) {sorted(md.brokers)})")
    return parts


def produce():
    p = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all",
                  "enable.idempotence": True, "linger.ms": 5,
                  "message.timeout.ms": 30000})
    delivered, errors = [], []

    def dr(err, msg):
        (errors if err else delivered).append(err or (msg.partition(), msg.offset()))

    for i in range(N):
        p.produce(TOPIC, key=f"k{i}".encode(), value=f"v{i}".encode(),
                  headers=[("h", str(i).encode())], on_delivery=dr)
        p.poll(0)
    left = p.flush(30)
    if left or errors or len(delivered) != N:
        sys.exit(f"FAIL produce: left={left} errors={errors[:3]} delivered={len(delivered)}")
    print(f"produced {N} with acks=all (idempotent)")


def consume_group(n_consumers=2):
    seen, lock, consumers = {}, threading.Lock(), []
    assigned = {}

    def run(idx):
        c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": GROUP,
                      "auto.offset.reset": "earliest", "enable.auto.commit": False,
                      "session.timeout.ms": 10000, "heartbeat.interval.ms": 1000,
                      "partition.assignment.strategy": "range"})
        consumers.append(c)
        c.subscribe([TOPIC], on_assign=lambda cons, parts: assigned.__setitem__(idx, [p.partition for p in parts]))
        while time.time() < DEADLINE:
            with lock:
                if len(seen) >= N:
                    break
            msgs = c.consume(num_messages=500, timeout=1.0)
            for m in msgs:
                if m.error():
                    raise KafkaException(m.error())
                with lock:
                    seen[m.key().decode()] = (m.partition(), m.offset(), m.value().decode())
            if msgs:
                commit(c)
        commit(c)   # final synchronous commit of this member's positions

    def commit(c):
        try:
            c.commit(asynchronous=False)
        except KafkaException as e:          # e.g. REBALANCE_IN_PROGRESS / no offsets: retried next batch
            if e.args[0].code() != KafkaError._NO_OFFSET:
                print("commit warning:", e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_consumers)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(f"group {GROUP}: assignments {assigned}")
    bad = [k for k, (_, _, v) in seen.items() if v != "v" + k[1:]]
    if len(seen) != N or bad:
        sys.exit(f"FAIL consume: got {len(seen)}/{N}, mismatched={bad[:3]}")
    print(f"consumed {len(seen)} distinct messages in group")

    # committed offsets must equal high watermarks
    c = consumers[0]
    tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    committed = c.committed(tps, timeout=10)
    for tp in committed:
        lo, hi = c.get_watermark_offsets(TopicPartition(TOPIC, tp.partition), timeout=10)
        if tp.offset != hi:
            sys.exit(f"FAIL commit: partition {tp.partition} committed {tp.offset} != high watermark {hi}")
    print("committed offsets == high watermarks:", [(tp.partition, tp.offset) for tp in committed])
    for c in consumers:
        c.close()   # LeaveGroup


if __name__ == "__main__":
    print(f"broker={BOOTSTRAP} topic={TOPIC} n={N}")
    PARTITIONS = create_topic()
    produce()
    consume_group()
    print("1 passed, 0 failed")
