#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/) from real traffic.

Usage: seeds.py KEEL_BINARY   (with compat/setup.sh's venv: confluent-kafka, kafka-python)

- request, dispatch: every request frame confluent-kafka (librdkafka) sends while it
  creates a topic, produces with and without compression, consumes in a group, commits,
  lists offsets and describes configs, recorded by a proxy between it and `keel serve`;
- record_batch, legacy_message_set: batches from kafka-python's record builders (v2,
  and the v0/v1 message sets);
- log_entry: the start of a segment file that run left;
- transport_frame: a handshake opening and a well-formed frame of each kind;
- sasl: PLAIN tokens and SCRAM client messages.
"""
import hashlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from kafka.record._crc32c import crc as crc32c
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.legacy_records import LegacyRecordBatchBuilder

KEEL = os.path.abspath(sys.argv[1])
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def save(target, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """Forwards one port to another, recording the frames clients send."""

    def __init__(self, listen_port, target_port):
        self.frames = []
        self.server = socket.create_server(("127.0.0.1", listen_port))
        self.target = target_port
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self.pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self.pipe, args=(upstream, client, False), daemon=True).start()

    def pipe(self, src, dst, record):
        buf = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                if record:
                    buf += data
                    while len(buf) >= 4:
                        n = struct.unpack(">i", buf[:4])[0]
                        if len(buf) < 4 + n:
                            break
                        self.frames.append(buf[4:4 + n])
                        buf = buf[4 + n:]
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def traffic(work):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
    kafka_port, proxy_port = free_port(), free_port()
    proc = subprocess.Popen([KEEL, "serve", "--data-dir", os.path.join(work, "data"),
                             "--kafka-listen", f"127.0.0.1:{kafka_port}", "--http-listen", "127.0.0.1:0",
                             "--advertised-port", str(proxy_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        while "keel ready" not in (proc.stdout.readline() or "keel ready"):
            pass
        proxy = Proxy(proxy_port, kafka_port)
        conf = {"bootstrap.servers": f"127.0.0.1:{proxy_port}"}
        admin = AdminClient(conf)
        admin.create_topics([NewTopic("seeds", num_partitions=2, replication_factor=1)])["seeds"].result(timeout=30)
        res = ConfigResource(ConfigResource.Type.TOPIC, "seeds")
        admin.describe_configs([res])[res].result(timeout=30)
        for codec in ("none", "lz4", "gzip"):
            p = Producer({**conf, "enable.idempotence": True, "compression.type": codec, "linger.ms": 5})
            for i in range(20):
                p.produce("seeds", key=str(i).encode(), value=f"value {i} {codec}".encode(), headers=[("h", b"v")])
            p.flush(30)
        c = Consumer({**conf, "group.id": "seeds", "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe(["seeds"])
        got, deadline = 0, time.time() + 30
        while got < 60 and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got += 1
        c.commit(asynchronous=False)
        c.get_watermark_offsets(TopicPartition("seeds", 0), timeout=10)
        c.offsets_for_times([TopicPartition("seeds", 0, 0)], timeout=10)
        c.close()
        frames = proxy.frames
        proxy.server.close()
    finally:
        proc.terminate()
        proc.wait(30)
    return frames


def main():
    with tempfile.TemporaryDirectory() as work:
        frames = traffic(work)
        for f in frames:
            save("request", f)
            save("dispatch", f)
        print(f"{len(frames)} request frames")
        seg_dir = os.path.join(work, "data", "topics", "seeds", "0")
        for name in sorted(os.listdir(seg_dir)):
            if name.endswith(".log"):
                with open(os.path.join(seg_dir, name), "rb") as f:
                    save("log_entry", f.read(16384))
    for codec in (0, 1):
        b = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False, producer_id=-1,
                                      producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
        for i in range(5):
            b.append(i, timestamp=1700000000000 + i, key=f"k{i}".encode(), value=b"v" * i, headers=[("h", b"x")])
        save("record_batch", bytes(b.build()))
    for magic in (0, 1):
        for codec in (0, 1):
            b = LegacyRecordBatchBuilder(magic=magic, compression_type=codec, batch_size=1 << 20)
            for i in range(3):
                b.append(i, timestamp=1700000000000 if magic else None, key=b"k", value=f"v{i}".encode())
            save("legacy_message_set", bytes(b.build()))
    # Transport: the handshake's opening, and frames (length, crc32c, kind, request, from,
    # group) of each request kind with a small body.
    save("transport_frame", b"KEEL-AUTH1" + struct.pack(">Q", 2) + bytes(range(32)))
    for kind in (1, 2, 3, 4, 5, 6, 0x81, 0x82):
        group = b"orders/0"
        rest = struct.pack(">BQQH", kind, 7, 2, len(group)) + group + bytes([1, 2, 0, 0, 3])
        save("transport_frame", struct.pack(">II", 4 + len(rest), crc32c(rest)) + rest)
    for msg in (b"\x00alice\x00secret", b"alice\x00alice\x00secret",
                b"n,,n=alice,r=clientnonce\xffc=biws,r=clientnonceservernonce,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                b"n,a=alice,n=alice,r=x\xffc=bixhbGljZSw=,r=xservernonce,p=AA=="):
        save("sasl", msg)


if __name__ == "__main__":
    main()
