"""The client matrix's scenarios (compat/clients/SCENARIOS.md) with aiokafka (asyncio)."""

import asyncio
import os
import time
import traceback

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

BOOT = os.environ["BOOTSTRAP"]
PREFIX = os.environ.get("PREFIX", "aio")
BASE_TS = 1_700_000_000_000


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def until(seconds, fn):
    deadline = time.time() + seconds
    while True:
        if await fn():
            return True
        if time.time() > deadline:
            return False
        await asyncio.sleep(0.2)


class Matrix:
    def __init__(self, admin):
        self.admin = admin

    async def partitions_of(self, topic):
        for t in await self.admin.describe_topics([topic]):
            if t["topic"] == topic and not t["error_code"]:
                return t["partitions"]
        return []

    async def create(self, topic, partitions):
        await self.admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])

        async def led():
            ps = await self.partitions_of(topic)
            return len(ps) == partitions and all(p["leader"] >= 0 for p in ps)

        check(await until(30, led), f"{topic} never had leaders")

    @staticmethod
    async def producer(codec=None):
        p = AIOKafkaProducer(bootstrap_servers=BOOT, acks="all", enable_idempotence=True,
                             compression_type=codec, linger_ms=5)
        await p.start()
        return p

    @staticmethod
    async def read(topic, start, count):
        c = AIOKafkaConsumer(bootstrap_servers=BOOT, group_id=None, enable_auto_commit=False)
        await c.start()
        tps = [TopicPartition(topic, p) for p in start]
        c.assign(tps)
        for tp in tps:
            c.seek(tp, start[tp.partition])
        out = []
        deadline = time.time() + 30
        while len(out) < count and time.time() < deadline:
            for recs in (await c.getmany(timeout_ms=300)).values():
                out.extend(recs)
        await c.stop()
        return out

    async def admin_(self):
        topic = f"{PREFIX}-admin"
        await self.create(topic, 3)
        check(len(await self.partitions_of(topic)) == 3, "partitions")
        await self.admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": "3600000"})])
        # A changed config reaches every broker soon after it is committed, not at once.
        async def described():
            resp = await self.admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": None})])
            return {e[0]: e[1] for e in resp[0].resources[0][4]}.get("retention.ms")

        async def changed():
            return await described() == "3600000"

        await until(15, changed)
        value = await described()
        check(value == "3600000", f"retention.ms = {value}")
        check(topic in await self.admin.list_topics(), "not listed")
        await self.admin.delete_topics([topic])

        async def gone():
            return topic not in await self.admin.list_topics()

        check(await until(30, gone), "still listed after delete")

    async def produce(self):
        topic = f"{PREFIX}-produce"
        await self.create(topic, 3)
        p = await self.producer()
        for i in range(30):
            await p.send(topic, key=f"key-{i % 5}".encode(), value=f"value-{i}".encode(),
                         headers=[("h1", f"a{i}".encode()), ("h2", b"b")], timestamp_ms=BASE_TS + i)
        await p.flush()
        await p.stop()
        got = await self.read(topic, {0: 0, 1: 0, 2: 0}, 30)
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

    async def compression(self):
        for codec in [None, "gzip", "snappy", "lz4", "zstd"]:
            name = codec or "none"
            topic = f"{PREFIX}-codec-{name}"
            await self.create(topic, 1)
            values = [f"{name}-{i}-".encode() * 20 for i in range(10)]
            p = await self.producer(codec)
            for v in values:
                await p.send(topic, value=v, partition=0)
            await p.flush()
            await p.stop()
            got = await self.read(topic, {0: 0}, 10)
            check([m.value for m in got] == values, f"{name}: read back {len(got)} records, not the 10 sent")

    async def offsets(self):
        topic = f"{PREFIX}-offsets"
        await self.create(topic, 1)
        p = await self.producer()
        for i in range(20):
            await p.send(topic, value=f"r{i}".encode(), partition=0, timestamp_ms=BASE_TS + 1000 * i)
        await p.flush()
        await p.stop()
        tp = TopicPartition(topic, 0)
        c = AIOKafkaConsumer(bootstrap_servers=BOOT, group_id=None)
        await c.start()
        low, high = (await c.beginning_offsets([tp]))[tp], (await c.end_offsets([tp]))[tp]
        check((low, high) == (0, 20), f"earliest/latest {low}/{high}")
        found = (await c.offsets_for_times({tp: BASE_TS + 7000}))[tp]
        check(found is not None and found.offset == 7, f"offset for timestamp = {found}")
        await c.stop()
        got = await self.read(topic, {0: 12}, 8)
        check([m.offset for m in got] == list(range(12, 20)), f"from 12: {[m.offset for m in got]}")

    async def group(self):
        topic = gid = f"{PREFIX}-group"
        await self.create(topic, 4)
        p = await self.producer()

        async def send(tag, n):
            for i in range(n):
                await p.send(topic, value=f"{tag}{i}".encode(), partition=i % 4)
            await p.flush()

        a, b = Member(topic, gid), Member(topic, gid)
        await a.start()
        await b.start()

        async def both():
            return a.owned() > 0 and b.owned() > 0 and a.owned() + b.owned() == 4

        check(await until(60, both), f"assignments {a.owned()} / {b.owned()}")
        check(not a.seen and not b.seen, "a record before any was produced")
        await send("g", 40)

        async def all40():
            return len(a.seen | b.seen) >= 40

        await until(60, all40)
        check(a.seen | b.seen == names("g", 40), f"two members read {len(a.seen | b.seen)} of 40")
        await a.stop()

        async def rebalanced():
            return b.owned() == 4

        await until(60, rebalanced)
        check(b.owned() == 4, f"remaining member has {b.owned()} partitions")
        b.seen.clear()
        await send("h", 20)

        async def twenty():
            return names("h", 20) <= b.seen

        await until(60, twenty)
        check(b.seen == names("h", 20), f"after rebalance read {sorted(b.seen)}")
        await b.stop()
        await send("j", 10)
        c = Member(topic, gid)
        await c.start()

        async def ten():
            return len(c.seen) >= 10

        await until(60, ten)
        await asyncio.sleep(2)  # a window in which a re-read of older records would show
        await c.stop()
        await p.stop()
        check(c.seen == names("j", 10), f"resumed member read {sorted(c.seen)}")

    async def groups_admin(self):
        gid = f"{PREFIX}-group"
        groups = await self.admin.list_consumer_groups()
        check(gid in [g[0] for g in groups], "group not listed")
        d = (await self.admin.describe_consumer_groups([gid]))[0].groups[0]
        check(d[2] == "Empty" and d[3] == "consumer", f"described {d}")
        offs = await self.admin.list_consumer_group_offsets(gid)
        check(len(offs) == 4 and sum(o.offset for o in offs.values()) == 70, f"committed {offs}")


def names(tag, n):
    return {f"{tag}{i}" for i in range(n)}


class Member:
    """A group member consuming in its own task, committing after every batch it reads."""

    def __init__(self, topic, gid):
        self.c = AIOKafkaConsumer(topic, bootstrap_servers=BOOT, group_id=gid, enable_auto_commit=False,
                                  auto_offset_reset="earliest", session_timeout_ms=10000, heartbeat_interval_ms=1000)
        self.seen = set()
        self.task = None

    async def start(self):
        await self.c.start()
        self.task = asyncio.create_task(self.run())

    async def run(self):
        while True:
            got = await self.c.getmany(timeout_ms=200)
            for recs in got.values():
                self.seen.update(r.value.decode() for r in recs)
            if got:
                await self.c.commit()

    def owned(self):
        return len(self.c.assignment())

    async def stop(self):
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        await self.c.stop()


async def main():
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOT)
    await admin.start()
    m = Matrix(admin)
    for name, fn in [("admin", m.admin_), ("produce", m.produce), ("compression", m.compression),
                     ("offsets", m.offsets), ("group", m.group), ("groups_admin", m.groups_admin)]:
        try:
            await asyncio.wait_for(fn(), 120)
            print(f"RESULT {name} PASS", flush=True)
        except Exception as e:  # noqa: BLE001 - a scenario's error is its result
            traceback.print_exc()
            print(f"RESULT {name} FAIL {repr(e).replace(chr(10), ' ')[:300]}", flush=True)
    await admin.close()


asyncio.run(main())
