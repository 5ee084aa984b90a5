#!/usr/bin/env python3
"""Keel's listeners, TLS and SASL, driven by real clients (confluent-kafka, kafka-python)
and Python's own TLS stack.

Usage: security.py KEEL_BINARY WORK_DIR

Starts `keel serve` nodes itself, each with a TOML config made here, and checks:
- listeners: a PLAINTEXT and an SSL listener on one node; Metadata read through each
  names the addresses of that listener;
- TLS: produce and consume over SSL with confluent-kafka and kafka-python; a client that
  trusts another CA, a plaintext client on the TLS port and a TLS 1.1 client are refused
  (and counted); client certificates when asked for; required client certificates refuse
  a client without one; a replaced certificate is served without a restart; HTTPS for
  /metrics;
- SASL: see the SASL section below.
Prints "N passed, N failed" and exits non-zero on any failure.
"""
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
import warnings

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

warnings.filterwarnings("ignore", category=DeprecationWarning)
KEEL = os.path.abspath(sys.argv[1])
WORK = os.path.abspath(sys.argv[2])
PASSED, FAILED = [], []


def check(name, ok, detail=""):
    (PASSED if ok else FAILED).append(name)
    print(("ok   " if ok else "FAIL ") + name + (f": {detail}" if detail and not ok else ""))
    sys.stdout.flush()


class Node:
    """A `keel serve` child on free ports with the given TOML config lines."""

    def __init__(self, name, toml_lines, extra_args=(), wait=True):
        self.dir = os.path.join(WORK, name)
        os.makedirs(self.dir, exist_ok=True)
        self.config = os.path.join(self.dir, "keel.toml")
        with open(self.config, "w") as f:
            f.write("\n".join(toml_lines) + "\n")
        self.out = open(os.path.join(self.dir, "stdout"), "w+")
        self.err = open(os.path.join(self.dir, "stderr"), "w")
        self.proc = subprocess.Popen(
            [KEEL, "serve", "--config", self.config, "--data-dir", os.path.join(self.dir, "data"),
             "--kafka-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", *extra_args],
            stdout=self.out, stderr=self.err, env={**os.environ, "KEEL_LOG": "info,openraft=off"})
        self.name = name
        if wait:
            self.wait_ready()

    def wait_ready(self):
        name = self.name
        deadline = time.time() + 60
        self.ready = None
        while time.time() < deadline and self.proc.poll() is None:
            self.out.seek(0)
            for line in self.out.read().splitlines():
                if line.startswith("keel ready: "):
                    self.ready = dict(p.split("=", 1) for p in line[len("keel ready: "):].split())
            if self.ready:
                break
            time.sleep(0.1)
        if not self.ready:
            with open(os.path.join(self.dir, "stderr")) as f:
                sys.exit(f"{name}: keel did not start:\n{f.read()[-3000:]}")
        self.kafka = self.ready["kafka"]
        self.http = self.ready["http"]

    def listener(self, name):
        return self.ready[f"listener.{name}"]

    def metric(self, name, scheme="http", context=None):
        with urllib.request.urlopen(f"{scheme}://{self.http}/metrics", timeout=10, context=context) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return None

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def certs(out, clients="admin"):
    subprocess.run([KEEL, "certs", "--out", out, "--clients", clients], check=True, stdout=subprocess.DEVNULL)
    return out


def produce_consume(conf, topic, n=200):
    """Creates `topic`, produces n keyed records with acks=all and reads them back."""
    admin = AdminClient(conf)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(timeout=30)
    p = Producer({**conf, "acks": "all", "enable.idempotence": True})
    acked = []
    for i in range(n):
        p.produce(topic, key=str(i).encode(), value=f"v{i}".encode(),
                  on_delivery=lambda err, m: acked.append(m) if err is None else None)
    p.flush(30)
    c = Consumer({**conf, "group.id": "g-" + uuid.uuid4().hex[:6], "enable.auto.commit": False})
    c.assign([TopicPartition(topic, part, 0) for part in range(2)])
    seen = set()
    deadline = time.time() + 30
    while len(seen) < n and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            seen.add(m.key().decode())
    c.close()
    return len(acked), len(seen)


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MATRIX_SCENARIOS = {"admin", "produce", "compression", "offsets", "group", "groups_admin"}


def rust_matrix(bootstrap, props):
    """The client matrix's Rust program (the rdkafka crate, built with OpenSSL by the keel
    crate's tls-clients feature) against `bootstrap` with `props` set on every client.
    Returns {scenario: detail} for the scenarios that did not pass, or a build failure."""
    b = subprocess.run(["cargo", "build", "-q", "--example", "rdkafka_matrix", "-p", "keel",
                        "--features", "tls-clients"], cwd=ROOT, capture_output=True, text=True)
    if b.returncode != 0:
        return {"build": b.stderr[-800:]}
    env = {**os.environ, "BOOTSTRAP": bootstrap, "PREFIX": "rs" + uuid.uuid4().hex[:6],
           "CLIENT_PROPS": "\n".join(f"{k}={v}" for k, v in props.items())}
    p = subprocess.run([os.path.join(ROOT, "target/debug/examples/rdkafka_matrix")], env=env,
                       capture_output=True, text=True, timeout=300)
    passed = set()
    failed = {}
    for line in p.stdout.splitlines():
        parts = line.split(" ", 3)
        if parts[0] == "RESULT" and len(parts) >= 3:
            if parts[2] == "PASS":
                passed.add(parts[1])
            else:
                failed[parts[1]] = parts[3] if len(parts) > 3 else parts[2]
    for missing in MATRIX_SCENARIOS - passed - set(failed):
        failed[missing] = f"no result (exit {p.returncode}): {p.stderr[-300:]}"
    return failed


def refused(conf):
    """Whether a client with `conf` fails to read Metadata within a few seconds."""
    admin = AdminClient({**conf, "socket.timeout.ms": 3000})
    try:
        admin.list_topics(timeout=5)
        return False
    except KafkaException:
        return True


def tls_connect(addr, cafile, **kw):
    """A raw TLS handshake with Python's ssl module: the negotiated version, or the error."""
    host, port = addr.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=cafile)
    # Security level 0 lets this client offer TLS 1.0 and 1.1, so that a refusal is the
    # server's.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    for k, v in kw.items():
        setattr(ctx, k, v)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname=host) as t:
                return t.version()
    except (ssl.SSLError, OSError) as e:
        return f"refused: {e.__class__.__name__}"


def wait_for(cond, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


def tls_section():
    ca = certs(os.path.join(WORK, "certs"), "alice")
    other = certs(os.path.join(WORK, "certs-other"))
    live = os.path.join(WORK, "live")  # the files the node reads; replaced to test reload
    os.makedirs(live, exist_ok=True)
    for f in ("node.pem", "node.key"):
        shutil.copy(os.path.join(ca, f), os.path.join(live, f))
    node = Node("tls", [
        "http_tls = true",
        'listeners = [{ name = "SSL", listen = "127.0.0.1:0" }]',
        "[tls]",
        f'cert_file = "{live}/node.pem"',
        f'key_file = "{live}/node.key"',
        f'client_ca_file = "{ca}/ca.pem"',
        'client_auth = "requested"',
        "reload_interval_ms = 300",
    ])
    ssl_addr = node.listener("SSL")
    https = ssl.create_default_context(cafile=f"{ca}/ca.pem")
    try:
        plain = {"bootstrap.servers": node.kafka}
        tls = {"bootstrap.servers": ssl_addr, "security.protocol": "SSL", "ssl.ca.location": f"{ca}/ca.pem"}

        md = AdminClient(tls).list_topics(timeout=10)
        ports = sorted(b.port for b in md.brokers.values())
        check("Metadata over the SSL listener names the SSL listener's address",
              ports == [int(ssl_addr.rsplit(":", 1)[1])], f"brokers {ports}, listener {ssl_addr}")
        md = AdminClient(plain).list_topics(timeout=10)
        ports = sorted(b.port for b in md.brokers.values())
        check("Metadata over the PLAINTEXT listener names the PLAINTEXT listener's address",
              ports == [int(node.kafka.rsplit(":", 1)[1])], f"brokers {ports}")

        acked, seen = produce_consume(tls, "tls-" + uuid.uuid4().hex[:6])
        check("confluent-kafka over SSL: 200 acknowledged, 200 read back", (acked, seen) == (200, 200), f"{acked}, {seen}")

        with_cert = {**tls, "ssl.certificate.location": f"{ca}/client-alice.pem",
                     "ssl.key.location": f"{ca}/client-alice.key"}
        acked, seen = produce_consume(with_cert, "mtls-" + uuid.uuid4().hex[:6], 50)
        check("confluent-kafka with a client certificate (mTLS): 50 acknowledged, 50 read back",
              (acked, seen) == (50, 50), f"{acked}, {seen}")

        check("a client trusting another CA is refused",
              refused({**tls, "ssl.ca.location": f"{other}/ca.pem"}))
        before = node.metric("keel_tls_handshake_failures_total", "https", https) or 0
        check("a plaintext client on the SSL port is refused", refused({"bootstrap.servers": ssl_addr}))
        v = tls_connect(ssl_addr, f"{ca}/ca.pem", maximum_version=ssl.TLSVersion.TLSv1_1,
                        minimum_version=ssl.TLSVersion.TLSv1)
        check("TLS 1.1 is refused", v.startswith("refused"), v)
        v12 = tls_connect(ssl_addr, f"{ca}/ca.pem", maximum_version=ssl.TLSVersion.TLSv1_2)
        v13 = tls_connect(ssl_addr, f"{ca}/ca.pem")
        check("TLS 1.2 and 1.3 are served", (v12, v13) == ("TLSv1.2", "TLSv1.3"), f"{v12}, {v13}")
        after = node.metric("keel_tls_handshake_failures_total", "https", https) or 0
        check("failed handshakes are counted in keel_tls_handshake_failures_total", after >= before + 2,
              f"{before} -> {after}")

        from kafka import KafkaConsumer, KafkaProducer
        topic = "kp-tls-" + uuid.uuid4().hex[:6]
        kp = KafkaProducer(bootstrap_servers=ssl_addr, security_protocol="SSL", ssl_cafile=f"{ca}/ca.pem", acks="all")
        for i in range(20):
            kp.send(topic, f"r{i}".encode())
        kp.flush(30)
        kp.close()
        kc = KafkaConsumer(topic, bootstrap_servers=ssl_addr, security_protocol="SSL", ssl_cafile=f"{ca}/ca.pem",
                           auto_offset_reset="earliest", consumer_timeout_ms=10000)
        got = [m.value for m in kc]
        kc.close()
        check("kafka-python over SSL: 20 written, 20 read", len(got) == 20, f"{len(got)} read")

        try:
            with urllib.request.urlopen(f"https://{node.http}/health", timeout=10, context=https) as r:
                health = r.status
        except OSError as e:
            health = str(e)
        check("HTTPS /health answers with the node certificate", health == 200, str(health))

        # Renewal: the node's files are replaced by a certificate from another CA; a client
        # trusting only that CA connects once the node has read them, with no restart.
        check("before renewal, a client trusting the new CA is refused",
              refused({**tls, "ssl.ca.location": f"{other}/ca.pem"}))
        for f in ("node.key", "node.pem"):
            shutil.copy(os.path.join(other, f), os.path.join(live, f + ".tmp"))
            os.replace(os.path.join(live, f + ".tmp"), os.path.join(live, f))
        renewed = wait_for(lambda: tls_connect(ssl_addr, f"{other}/ca.pem").startswith("TLSv1"), 15)
        check("a replaced certificate is served without a restart", renewed)
        check("the replaced certificate serves Kafka clients",
              not refused({**tls, "ssl.ca.location": f"{other}/ca.pem"}))
        check("the same process still runs", node.proc.poll() is None)
    finally:
        node.stop()

    strict = Node("mtls-required", [
        'listeners = [{ name = "SSL", listen = "127.0.0.1:0" }]',
        "[tls]",
        f'cert_file = "{ca}/node.pem"',
        f'key_file = "{ca}/node.key"',
        f'client_ca_file = "{ca}/ca.pem"',
        'client_auth = "required"',
    ])
    try:
        tls = {"bootstrap.servers": strict.listener("SSL"), "security.protocol": "SSL",
               "ssl.ca.location": f"{ca}/ca.pem"}
        check("client_auth = required: a client without a certificate is refused", refused(tls))
        check("client_auth = required: a certificate from another CA is refused",
              refused({**tls, "ssl.certificate.location": f"{other}/client-admin.pem",
                       "ssl.key.location": f"{other}/client-admin.key"}))
        check("client_auth = required: a certificate from the CA is served",
              not refused({**tls, "ssl.certificate.location": f"{ca}/client-alice.pem",
                           "ssl.key.location": f"{ca}/client-alice.key"}))
        failed = rust_matrix(strict.listener("SSL"), {
            "security.protocol": "SSL", "ssl.ca.location": f"{ca}/ca.pem",
            "ssl.certificate.location": f"{ca}/client-alice.pem", "ssl.key.location": f"{ca}/client-alice.key"})
        check("rdkafka (Rust) with a client certificate (mTLS required): the client matrix's six scenarios pass",
              not failed, str(failed))
    finally:
        strict.stop()


def keel_user(*args, bootstrap):
    r = subprocess.run([KEEL, "user", *args, "-b", bootstrap], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def sasl_section():
    ca = os.path.join(WORK, "certs")
    node = Node("sasl", [
        'listeners = [',
        '  { name = "SASL_SSL", listen = "127.0.0.1:0" },',
        '  { name = "SASL_PLAINTEXT", listen = "127.0.0.1:0" },',
        ']',
        "[sasl_plain_users]",
        'admin = "admin-secret"',
        "[tls]",
        f'cert_file = "{ca}/node.pem"',
        f'key_file = "{ca}/node.key"',
    ], extra_args=("--kafka-protocol", "PLAINTEXT"))
    try:
        sasl_ssl = {"bootstrap.servers": node.listener("SASL_SSL"), "security.protocol": "SASL_SSL",
                    "ssl.ca.location": f"{ca}/ca.pem"}
        sasl_plain = {"bootstrap.servers": node.listener("SASL_PLAINTEXT"), "security.protocol": "SASL_PLAINTEXT"}

        def scram(conf, mech, user, pw):
            return {**conf, "sasl.mechanism": mech, "sasl.username": user, "sasl.password": pw}

        rc, out = keel_user("set", "alice", "--password", "alice-pw", bootstrap=node.kafka)
        check("keel user set alice (both SCRAM mechanisms)", rc == 0, out)
        rc, out = keel_user("list", bootstrap=node.kafka)
        check("keel user list shows alice with SCRAM-SHA-256 and SCRAM-SHA-512",
              rc == 0 and "alice" in out and "SCRAM-SHA-256 (8192" in out and "SCRAM-SHA-512 (8192" in out, out)

        acked, seen = produce_consume(scram(sasl_ssl, "SCRAM-SHA-256", "alice", "alice-pw"), "scram-" + uuid.uuid4().hex[:6], 100)
        check("confluent-kafka SCRAM-SHA-256 over SASL_SSL: 100 acknowledged, 100 read back",
              (acked, seen) == (100, 100), f"{acked}, {seen}")
        failed = rust_matrix(node.listener("SASL_SSL"), {
            "security.protocol": "SASL_SSL", "ssl.ca.location": f"{ca}/ca.pem",
            "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "alice", "sasl.password": "alice-pw"})
        check("rdkafka (Rust) SCRAM-SHA-512 over SASL_SSL: the client matrix's six scenarios pass",
              not failed, str(failed))
        check("confluent-kafka SCRAM-SHA-512 over SASL_PLAINTEXT is served",
              not refused(scram(sasl_plain, "SCRAM-SHA-512", "alice", "alice-pw")))
        check("SASL/PLAIN over SASL_SSL is served", not refused(scram(sasl_ssl, "PLAIN", "admin", "admin-secret")))
        before = node.metric("keel_sasl_authentication_failures_total") or 0
        check("a wrong SCRAM password is refused", refused(scram(sasl_ssl, "SCRAM-SHA-256", "alice", "alice-PW")))
        check("an unknown SCRAM user is refused", refused(scram(sasl_ssl, "SCRAM-SHA-512", "mallory", "alice-pw")))
        check("a wrong PLAIN password is refused", refused(scram(sasl_plain, "PLAIN", "admin", "nope")))
        check("a client that does not authenticate on a SASL listener is refused",
              refused({"bootstrap.servers": node.listener("SASL_PLAINTEXT")}))
        after = node.metric("keel_sasl_authentication_failures_total") or 0
        check("refused authentications are counted", after >= before + 3, f"{before} -> {after}")

        from kafka import KafkaConsumer, KafkaProducer
        topic = "kp-scram-" + uuid.uuid4().hex[:6]
        kw = dict(bootstrap_servers=node.listener("SASL_SSL"), security_protocol="SASL_SSL", ssl_cafile=f"{ca}/ca.pem",
                  sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="alice", sasl_plain_password="alice-pw")
        kp = KafkaProducer(acks="all", **kw)
        for i in range(20):
            kp.send(topic, f"r{i}".encode())
        kp.flush(30)
        kp.close()
        kc = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=10000, **kw)
        got = [m.value for m in kc]
        kc.close()
        check("kafka-python SCRAM-SHA-512 over SASL_SSL: 20 written, 20 read", len(got) == 20, f"{len(got)} read")

        # KIP-554 through a real admin client: confluent-kafka creates bob, who then connects.
        from confluent_kafka.admin import (ScramCredentialInfo, ScramMechanism, UserScramCredentialDeletion,
                                           UserScramCredentialUpsertion)
        admin = AdminClient(scram(sasl_ssl, "SCRAM-SHA-256", "alice", "alice-pw"))
        futs = admin.alter_user_scram_credentials([UserScramCredentialUpsertion(
            "bob", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096), b"bob-pw")])
        futs["bob"].result(timeout=30)
        described = admin.describe_user_scram_credentials(["bob"])
        desc = described["bob"].result(timeout=30) if isinstance(described, dict) else described.result(timeout=30)["bob"]
        infos = [(i.mechanism, i.iterations) for i in desc.scram_credential_infos]
        check("confluent-kafka AdminClient creates and describes a SCRAM user (KIP-554)",
              infos == [(ScramMechanism.SCRAM_SHA_256, 4096)], str(infos))
        check("the user it created authenticates", not refused(scram(sasl_ssl, "SCRAM-SHA-256", "bob", "bob-pw")))
        try:
            admin.alter_user_scram_credentials([UserScramCredentialUpsertion(
                "weak", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 1000), b"x")])["weak"].result(timeout=30)
            weak = "no error"
        except KafkaException as e:
            weak = e.args[0].name()
        check("a credential of 1000 iterations fails with UNACCEPTABLE_CREDENTIAL", weak == "UNACCEPTABLE_CREDENTIAL", weak)
        try:
            admin.alter_user_scram_credentials([UserScramCredentialDeletion("nobody", ScramMechanism.SCRAM_SHA_512)])[
                "nobody"].result(timeout=30)
            missing = "no error"
        except KafkaException as e:
            missing = e.args[0].name()
        check("deleting a credential that does not exist fails with RESOURCE_NOT_FOUND",
              missing == "RESOURCE_NOT_FOUND", missing)

        rc, out = keel_user("set", "alice", "--password", "new-pw", "--mechanism", "SCRAM-SHA-256", bootstrap=node.kafka)
        check("a changed password: the old one is refused",
              rc == 0 and refused(scram(sasl_ssl, "SCRAM-SHA-256", "alice", "alice-pw")), out)
        check("a changed password: the new one is served", not refused(scram(sasl_ssl, "SCRAM-SHA-256", "alice", "new-pw")))
        rc, out = keel_user("delete", "alice", bootstrap=node.kafka)
        check("a deleted user is refused", rc == 0 and refused(scram(sasl_ssl, "SCRAM-SHA-512", "alice", "alice-pw")), out)
    finally:
        node.stop()


def delivery_errors(conf, topic, n=5):
    """Produces n records; the distinct error names of their delivery reports."""
    p = Producer({**conf, "acks": "all", "message.timeout.ms": 8000, "retries": 0})
    errors = []
    for i in range(n):
        p.produce(topic, value=b"x", on_delivery=lambda err, m: errors.append(err.name() if err else None))
    p.flush(15)
    return sorted(set(str(e) for e in errors)) if len(errors) == n else ["undelivered"]


def consume_error(conf, topic, group):
    """Subscribes with `group`: the first error name the consumer reports, or the number of
    records read within a few seconds."""
    c = Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    read, err = 0, None
    deadline = time.time() + 15
    while time.time() < deadline and err is None:
        m = c.poll(0.5)
        if m is None:
            if read:
                break
            continue
        if m.error():
            if m.error().code() != -191:  # end of partition
                err = m.error().name()
        else:
            read += 1
    c.close()
    return err or read


def acl_section():
    from confluent_kafka.admin import (AclBinding, AclBindingFilter, AclOperation, AclPermissionType,
                                       ResourcePatternType, ResourceType)
    ca = os.path.join(WORK, "certs")
    node = Node("acl", [
        "authorizer = true",
        'super_users = ["User:admin"]',
        'listeners = [{ name = "SSL", listen = "127.0.0.1:0" }]',
        "[sasl_plain_users]",
        'admin = "admin-pw"',
        'alice = "alice-pw"',
        'bob = "bob-pw"',
        "[tls]",
        f'cert_file = "{ca}/node.pem"',
        f'key_file = "{ca}/node.key"',
        f'client_ca_file = "{ca}/ca.pem"',
        'client_auth = "requested"',
    ], extra_args=("--audit-log", os.path.join(WORK, "acl", "audit", "audit.log")))
    try:
        sasl = {"bootstrap.servers": node.kafka, "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN"}
        admin_conf = {**sasl, "sasl.username": "admin", "sasl.password": "admin-pw"}
        alice = {**sasl, "sasl.username": "alice", "sasl.password": "alice-pw"}
        bob = {**sasl, "sasl.username": "bob", "sasl.password": "bob-pw"}
        admin = AdminClient(admin_conf)
        for t in ("orders", "logs-app", "secret"):
            admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1)])[t].result(timeout=30)
        check("a super user creates topics with the authorizer on", True)

        visible = set(AdminClient(alice).list_topics(timeout=10).topics)
        check("Metadata hides every topic from a principal without ACLs", not visible & {"orders", "logs-app", "secret"},
              str(visible))
        errs = delivery_errors(alice, "orders")
        check("without an ACL, Produce is refused with TOPIC_AUTHORIZATION_FAILED", errs == ["TOPIC_AUTHORIZATION_FAILED"],
              str(errs))
        alice_admin = AdminClient(alice)
        try:
            alice_admin.create_topics([NewTopic("alice-new", 1, 1)])["alice-new"].result(timeout=30)
            created = "created"
        except KafkaException as e:
            created = e.args[0].name()
        check("CreateTopics without CREATE is refused with TOPIC_AUTHORIZATION_FAILED",
              created == "TOPIC_AUTHORIZATION_FAILED", created)
        r = subprocess.run([KEEL, "acl", "list", "-b", node.kafka, "--sasl-user", "alice", "--sasl-password", "alice-pw"],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "RUST_BACKTRACE": "0"})
        check("DescribeAcls without DESCRIBE on the cluster is refused with CLUSTER_AUTHORIZATION_FAILED (31)",
              r.returncode != 0 and "error 31" in r.stderr, r.stdout + r.stderr)
        try:
            leaked = alice_admin.describe_acls(AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                                                AclOperation.ANY, AclPermissionType.ANY)).result(timeout=30)
        except KafkaException:
            leaked = []
        check("confluent-kafka's DescribeAcls as alice gets no ACLs", leaked == [], str(leaked))

        r = subprocess.run([KEEL, "acl", "add", "--principal", "User:alice", "--operation", "WRITE,READ", "--topic", "orders",
                            "-b", node.kafka, "--sasl-user", "admin", "--sasl-password", "admin-pw"],
                           capture_output=True, text=True, timeout=60)
        check("keel acl add (as a super user over SASL/PLAIN)", r.returncode == 0, r.stdout + r.stderr)
        errs = delivery_errors(alice, "orders")
        check("with WRITE on the topic, Produce is served", errs == ["None"], str(errs))
        check("Metadata shows the topic alice may now describe (READ/WRITE imply DESCRIBE)",
              "orders" in AdminClient(alice).list_topics(timeout=10).topics)
        got = consume_error(alice, "orders", "g-orders")
        check("READ on the topic but none on the group: GROUP_AUTHORIZATION_FAILED", got == "GROUP_AUTHORIZATION_FAILED",
              str(got))
        futs = admin.create_acls([
            AclBinding(ResourceType.GROUP, "g-", ResourcePatternType.PREFIXED, "User:alice", "*",
                       AclOperation.READ, AclPermissionType.ALLOW),
            AclBinding(ResourceType.TOPIC, "logs-", ResourcePatternType.PREFIXED, "User:alice", "*",
                       AclOperation.WRITE, AclPermissionType.ALLOW)])
        for f in futs.values():
            f.result(timeout=30)
        got = consume_error(alice, "orders", "g-orders")
        check("with READ on a group prefix (created by confluent-kafka's AdminClient), the group consumes all 5 records",
              got == 5, str(got))
        check("a PREFIXED WRITE on logs- serves logs-app", delivery_errors(alice, "logs-app") == ["None"])
        check("... and not secret", delivery_errors(alice, "secret") == ["TOPIC_AUTHORIZATION_FAILED"])

        futs = admin.create_acls([
            AclBinding(ResourceType.TOPIC, "*", ResourcePatternType.LITERAL, "User:bob", "*",
                       AclOperation.ALL, AclPermissionType.ALLOW),
            AclBinding(ResourceType.GROUP, "*", ResourcePatternType.LITERAL, "User:bob", "*",
                       AclOperation.ALL, AclPermissionType.ALLOW),
            AclBinding(ResourceType.TOPIC, "secret", ResourcePatternType.LITERAL, "User:bob", "*",
                       AclOperation.READ, AclPermissionType.DENY)])
        for f in futs.values():
            f.result(timeout=30)
        check("ALLOW ALL on every topic: bob writes secret", delivery_errors(bob, "secret") == ["None"])
        got = consume_error(bob, "secret", "g-bob")
        check("a DENY READ on secret wins over bob's ALLOW ALL", got == "TOPIC_AUTHORIZATION_FAILED", str(got))
        check("bob still reads orders", consume_error(bob, "orders", "g-bob2") == 5)

        ssl_conf = {"bootstrap.servers": node.listener("SSL"), "security.protocol": "SSL", "ssl.ca.location": f"{ca}/ca.pem"}
        with_cert = {**ssl_conf, "ssl.certificate.location": f"{ca}/client-alice.pem", "ssl.key.location": f"{ca}/client-alice.key"}
        check("a client certificate's principal without ACLs is refused",
              delivery_errors(with_cert, "orders") == ["TOPIC_AUTHORIZATION_FAILED"])
        futs = admin.create_acls([AclBinding(ResourceType.TOPIC, "orders", ResourcePatternType.LITERAL, "User:CN=alice",
                                             "*", AclOperation.WRITE, AclPermissionType.ALLOW)])
        for f in futs.values():
            f.result(timeout=30)
        check("an ACL for User:CN=alice serves the client with alice's certificate",
              delivery_errors(with_cert, "orders") == ["None"])
        check("... and not the same listener's client without a certificate (User:ANONYMOUS)",
              delivery_errors(ssl_conf, "orders") == ["TOPIC_AUTHORIZATION_FAILED"])

        listed = admin.describe_acls(AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, "User:alice", None,
                                                      AclOperation.ANY, AclPermissionType.ANY)).result(timeout=30)
        check("DescribeAcls lists alice's 4 ACLs", len(listed) == 4, str(listed))
        deleted = admin.delete_acls([AclBindingFilter(ResourceType.TOPIC, "orders", ResourcePatternType.LITERAL, "User:alice",
                                                      None, AclOperation.WRITE, AclPermissionType.ALLOW)])
        n = sum(len(f.result(timeout=30)) for f in deleted.values())
        check("DeleteAcls removes the matching ACL", n == 1, str(n))
        check("after DeleteAcls, alice's Produce is refused again",
              delivery_errors(alice, "orders") == ["TOPIC_AUTHORIZATION_FAILED"])
        denials = node.metric("keel_authorization_denials_total") or 0
        check("refusals are counted in keel_authorization_denials_total", denials >= 8, str(denials))
        check("a wrong password is refused", refused({**sasl, "sasl.username": "alice", "sasl.password": "nope"}))
        audit_checks(os.path.join(WORK, "acl", "audit", "audit.log"))
    finally:
        node.stop()


def audit_checks(path):
    """The audit log of acl_section's node: JSON lines naming who did what, from where."""
    import json
    deadline = time.time() + 10
    events = []
    while time.time() < deadline:
        with open(path) as f:
            events = [json.loads(line) for line in f if line.strip()]
        if any(e["operation"] == "DeleteAcls" for e in events):
            break
        time.sleep(0.2)
    fields = {"time", "node", "event", "principal", "client", "listener", "operation", "resource_type", "resource", "outcome"}
    check("every audit line is a JSON object with the documented fields",
          events and all(fields <= set(e) for e in events), str(events[:1]))

    def has(**kw):
        return any(all(e.get(k) == v for k, v in kw.items()) for e in events)
    check("audit: admin's SASL/PLAIN authentication", has(event="authentication", principal="User:admin", operation="PLAIN",
                                                           outcome="success"))
    check("audit: a failed authentication", has(event="authentication", operation="PLAIN", outcome="failure"))
    check("audit: a client certificate's authentication", has(event="authentication", principal="User:CN=alice",
                                                               operation="TLS", outcome="success"))
    check("audit: alice's refused WRITE on orders", has(event="authorization", principal="User:alice", operation="WRITE",
                                                         resource_type="TOPIC", resource="orders", outcome="denied"))
    check("audit: admin created topic secret", has(event="change", principal="User:admin", operation="CreateTopics",
                                                    resource="secret", outcome="success"))
    check("audit: alice's refused CreateTopics", has(event="change", principal="User:alice", operation="CreateTopics",
                                                      outcome="failure", detail="TopicAuthorizationFailed"))
    check("audit: ACLs created and deleted", has(event="change", operation="CreateAcls", outcome="success")
          and has(event="change", operation="DeleteAcls", outcome="success",
                  resource="TOPIC LITERAL:orders User:alice WRITE ALLOW"))
    check("audit: clients are named by address and port",
          all(e["client"].count(":") >= 1 for e in events if e["event"] == "authentication"))


def api_versions(sock):
    """Sends ApiVersions v0 on a raw socket: whether an answer came back."""
    req = struct.pack(">hhih", 18, 0, 1, -1)
    try:
        sock.sendall(struct.pack(">i", len(req)) + req)
        return len(sock.recv(4)) == 4
    except OSError:
        return False


def closed_by_server(sock, within):
    """Whether the server closes `sock` within `within` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except OSError:
        return True


def limits_section():
    node = Node("limits", [
        "connections_max_per_ip = 5",
        "unauthenticated_connections_max = 3",
        "connections_max_per_principal = 2",
        'listeners = [{ name = "SASL_PLAINTEXT", listen = "127.0.0.1:0" }]',
        "[sasl_plain_users]",
        'admin = "admin-pw"',
        'limited = "limited-pw"',
    ], extra_args=("--kafka-protocol", "PLAINTEXT"))
    host, port = node.kafka.rsplit(":", 1)
    shost, sport = node.listener("SASL_PLAINTEXT").rsplit(":", 1)
    socks = []
    try:
        socks = [socket.create_connection((host, int(port))) for _ in range(5)]
        check("five connections from one address are served", all(api_versions(s) for s in socks))
        sixth = socket.create_connection((host, int(port)))
        check("connections_max_per_ip = 5: a sixth from the same address is closed", closed_by_server(sixth, 5))
        sixth.close()
        socks.pop().close()
        wait_for(lambda: node.metric("keel_connections") == 4, 10)
        seventh = socket.create_connection((host, int(port)))
        check("once one closes, a new connection is served again", api_versions(seventh))
        seventh.close()
        for s in socks:
            s.close()
        # The node counts those connections until it has seen them close.
        wait_for(lambda: node.metric("keel_connections") == 0, 10)
        socks = [socket.create_connection((shost, int(sport))) for _ in range(3)]
        fourth = socket.create_connection((shost, int(sport)))
        check("unauthenticated_connections_max = 3: a fourth unauthenticated connection is closed",
              closed_by_server(fourth, 5))
        fourth.close()
        t0 = time.time()
        closed = closed_by_server(socks[0], 20)
        waited = time.time() - t0
        check(f"a connection that does not authenticate is closed after the 10 s allowed ({waited:.1f} s)",
              closed and 8 <= waited <= 15)
        check("a client that authenticates is served meanwhile",
              not refused({"bootstrap.servers": node.listener("SASL_PLAINTEXT"), "security.protocol": "SASL_PLAINTEXT",
                           "sasl.mechanism": "PLAIN", "sasl.username": "admin", "sasl.password": "admin-pw"}))
        for s in socks:
            s.close()
        socks = []
        wait_for(lambda: node.metric("keel_connections") == 0, 10)
        socks = [socket.create_connection((shost, int(sport))) for _ in range(3)]
        authed = [plain_login(s, "limited", "limited-pw") for s in socks]
        check("connections_max_per_principal = 2: two connections as one user are served",
              authed[:2] == [True, True] and api_versions(socks[0]) and api_versions(socks[1]), str(authed))
        check("... and a third is closed once it authenticates", closed_by_server(socks[2], 5))
        socks.pop().close()
        socks.pop(0).close()
        wait_for(lambda: node.metric("keel_connections") == 1, 10)
        again = socket.create_connection((shost, int(sport)))
        socks.append(again)
        check("once one closes, the user connects again", plain_login(again, "limited", "limited-pw") and api_versions(again))
        v0 = socket.create_connection((shost, int(sport)))
        socks.append(v0)
        check("SaslHandshake v0 and a bare PLAIN token authenticate (Kafka 0.10's way)",
              plain_login_v0(v0, "admin", "admin-pw") and api_versions(v0))
        bad = socket.create_connection((shost, int(sport)))
        socks.append(bad)
        check("... and a bare token with a wrong password closes the connection",
              not plain_login_v0(bad, "admin", "nope") and closed_by_server(bad, 5))
    finally:
        for s in socks:
            s.close()
        node.stop()


def plain_login(sock, user, password):
    """SaslHandshake v1 (PLAIN) and SaslAuthenticate v0 on a raw socket: whether both succeeded."""
    def call(api, version, body):
        req = struct.pack(">hhih", api, version, 7, -1) + body
        sock.sendall(struct.pack(">i", len(req)) + req)
        n = struct.unpack(">i", sock.recv(4, socket.MSG_WAITALL))[0]
        return sock.recv(n, socket.MSG_WAITALL)
    try:
        sock.settimeout(5)
        hs = call(17, 1, struct.pack(">h", 5) + b"PLAIN")
        if struct.unpack(">h", hs[4:6])[0] != 0:
            return False
        token = b"\0" + user.encode() + b"\0" + password.encode()
        auth = call(36, 0, struct.pack(">i", len(token)) + token)
        return struct.unpack(">h", auth[4:6])[0] == 0
    except (OSError, struct.error):
        return False


def dev_secure_section():
    """README's worked example: a secure three-node `keel dev --secure` cluster, a SCRAM
    user and ACLs added with keel commands, kcat and confluent-kafka over SASL_SSL."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    base = int(subprocess.run([sys.executable, os.path.join(root, "compat", "free_base_port.py")],
                              capture_output=True, text=True, check=True).stdout.strip())
    dev_dir = os.path.join(WORK, "secure")
    failed_before = len(FAILED)
    log = open(os.path.join(WORK, "secure.log"), "w")
    dev = subprocess.Popen([KEEL, "dev", "--secure", "--nodes", "3", "--base-port", str(base), "--data-dir", dev_dir],
                           stdout=log, stderr=log, env={**os.environ, "KEEL_LOG": "warn,openraft=off"})
    try:
        admin_b = f"127.0.0.1:{base + 300}"
        bootstrap = ",".join(f"127.0.0.1:{base + i}" for i in range(3))
        pw_file = os.path.join(dev_dir, "admin-password")
        wait_for(lambda: os.path.exists(pw_file), 30)
        admin = ["-b", admin_b, "--sasl-user", "admin", "--sasl-password", open(pw_file).read().strip()]
        ok = wait_for(lambda: subprocess.run([KEEL, "user", "set", "alice", "--password", "alice-secret", *admin],
                                             capture_output=True, timeout=60).returncode == 0, 90)
        check("keel dev --secure: keel user set alice through the admin listener", ok)
        r1 = subprocess.run([KEEL, "acl", "add", "--principal", "User:alice", "--operation", "ALL", "--topic", "orders", *admin],
                            capture_output=True, text=True, timeout=60)
        r2 = subprocess.run([KEEL, "acl", "add", "--principal", "User:alice", "--operation", "READ", "--group", "orders-",
                             "--prefixed", *admin], capture_output=True, text=True, timeout=60)
        check("keel acl add (topic orders, groups orders-*)", r1.returncode == 0 and r2.returncode == 0,
              r1.stderr + r2.stderr)
        ca = os.path.join(dev_dir, "certs", "ca.pem")
        kcat = ["kcat", "-b", bootstrap, "-X", "security.protocol=SASL_SSL", "-X", f"ssl.ca.location={ca}",
                "-X", "sasl.mechanisms=SCRAM-SHA-256", "-X", "sasl.username=alice", "-X", "sasl.password=alice-secret"]
        lines = "".join(f"order {i}\n" for i in range(10))
        p = subprocess.run([*kcat, "-P", "-t", "orders", "-X", "topic.request.required.acks=all"], input=lines,
                           capture_output=True, text=True, timeout=60)
        check("kcat produces over SASL_SSL with SCRAM-SHA-256", p.returncode == 0, p.stderr[-500:])
        c = subprocess.run([*kcat, "-C", "-t", "orders", "-o", "beginning", "-c", "10", "-e"], capture_output=True,
                           text=True, timeout=60)
        got = sorted(l for l in c.stdout.splitlines() if l.startswith("order "))
        check("kcat reads the 10 records back", len(got) == 10, c.stdout[-300:] + c.stderr[-300:])
        conf = {"bootstrap.servers": bootstrap, "security.protocol": "SASL_SSL", "ssl.ca.location": ca,
                "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "alice", "sasl.password": "alice-secret"}
        got = consume_error(conf, "orders", "orders-app")
        check("confluent-kafka reads them in group orders-app (SCRAM-SHA-512)", got == 10, str(got))
        check("a client without credentials is refused",
              refused({"bootstrap.servers": bootstrap, "security.protocol": "SSL", "ssl.ca.location": ca}))
        check("alice may not read another topic",
              consume_error(conf, "payments", "orders-app") in ("TOPIC_AUTHORIZATION_FAILED", "UNKNOWN_TOPIC_OR_PART",
                                                                 "_UNKNOWN_TOPIC"))
    finally:
        dev.send_signal(2)
        try:
            dev.wait(30)
        except subprocess.TimeoutExpired:
            dev.kill()
        subprocess.run(["pkill", "-9", "-f", dev_dir])
        log.close()
        if len(FAILED) > failed_before:
            # The nodes' own account of what went wrong (the work directory is removed).
            with open(os.path.join(WORK, "secure.log"), errors="replace") as f:
                print("--- end of keel dev --secure's log ---\n" + "".join(f.readlines()[-40:]))


def plain_login_v0(sock, user, password):
    """SaslHandshake v0 (PLAIN), then the token as a bare frame: whether a bare answer came."""
    try:
        sock.settimeout(5)
        req = struct.pack(">hhih", 17, 0, 7, -1) + struct.pack(">h", 5) + b"PLAIN"
        sock.sendall(struct.pack(">i", len(req)) + req)
        n = struct.unpack(">i", sock.recv(4, socket.MSG_WAITALL))[0]
        hs = sock.recv(n, socket.MSG_WAITALL)
        if struct.unpack(">h", hs[4:6])[0] != 0:
            return False
        token = b"\0" + user.encode() + b"\0" + password.encode()
        sock.sendall(struct.pack(">i", len(token)) + token)
        answer = sock.recv(4, socket.MSG_WAITALL)
        return len(answer) == 4 and struct.unpack(">i", answer)[0] == 0
    except (OSError, struct.error):
        return False


def bad_input_section():
    """Hostile or broken input over TLS and SASL: refused, counted, audited, and the node
    keeps serving others."""
    import json
    d = os.path.join(WORK, "certs-bad")
    certs(d, "good")
    for f in ("node.pem", "node.key"):
        shutil.copy(os.path.join(d, f), os.path.join(d, "good-" + f))
    # The same CA signs a client certificate that has already expired.
    subprocess.run([KEEL, "certs", "--out", d, "--clients", "old", "--days", "0"], check=True, stdout=subprocess.DEVNULL)
    expired_after = time.time() + 1.5  # valid to the second it was made
    audit = os.path.join(WORK, "bad", "audit.log")
    node = Node("bad", [
        'listeners = [{ name = "SSL", listen = "127.0.0.1:0" }, { name = "SASL_SSL", listen = "127.0.0.1:0" }]',
        "[sasl_plain_users]",
        'alice = "alice-pw"',
        "[tls]",
        f'cert_file = "{d}/good-node.pem"',
        f'key_file = "{d}/good-node.key"',
        f'client_ca_file = "{d}/ca.pem"',
        'client_auth = "required"',
    ], extra_args=("--kafka-protocol", "SASL_PLAINTEXT", "--audit-log", audit))
    try:
        ssl_addr, sasl_ssl = node.listener("SSL"), node.listener("SASL_SSL")
        host, port = ssl_addr.rsplit(":", 1)
        good = {"bootstrap.servers": ssl_addr, "security.protocol": "SSL", "ssl.ca.location": f"{d}/ca.pem",
                "ssl.certificate.location": f"{d}/client-good.pem", "ssl.key.location": f"{d}/client-good.key"}
        tls_before = node.metric("keel_tls_handshake_failures_total") or 0
        for _ in range(20):
            with socket.create_connection((host, int(port))) as g:
                try:
                    g.sendall(os.urandom(10_000))
                    g.settimeout(5)
                    g.recv(100)
                except OSError:
                    pass
        wait_for(lambda: time.time() > expired_after, 5)
        check("an expired client certificate is refused",
              refused({**good, "ssl.certificate.location": f"{d}/client-old.pem", "ssl.key.location": f"{d}/client-old.key"}))
        tls_after = node.metric("keel_tls_handshake_failures_total") or 0
        check("20 connections of handshake garbage and the expired certificate are counted",
              tls_after >= tls_before + 21, f"{tls_before} -> {tls_after}")
        check("after them, a good client is served", not refused(good))

        shost, sport = node.kafka.rsplit(":", 1)
        with socket.create_connection((shost, int(sport))) as t:
            t.settimeout(5)
            req = struct.pack(">hhih", 17, 1, 1, -1) + struct.pack(">h", 13) + b"SCRAM-SHA-256"
            t.sendall(struct.pack(">i", len(req)) + req)
            n = struct.unpack(">i", t.recv(4, socket.MSG_WAITALL))[0]
            t.recv(n, socket.MSG_WAITALL)
            token = b"n,,n=al"
            req = struct.pack(">hhih", 36, 0, 2, -1) + struct.pack(">i", len(token)) + token
            t.sendall(struct.pack(">i", len(req)) + req)
            n = struct.unpack(">i", t.recv(4, socket.MSG_WAITALL))[0]
            body = t.recv(n, socket.MSG_WAITALL)
            code = struct.unpack(">h", body[4:6])[0]
            check("a truncated SCRAM message is answered SASL_AUTHENTICATION_FAILED (58) and the connection closed",
                  code == 58 and closed_by_server(t, 5), str(code))
        with socket.create_connection((shost, int(sport))) as t:
            req = struct.pack(">hhih", 17, 1, 1, -1) + struct.pack(">h", 5) + b"PLAIN"
            t.sendall(struct.pack(">i", len(req) + 100) + req)  # a frame cut short
        before = node.metric("keel_sasl_authentication_failures_total") or 0
        t0 = time.time()
        results = []
        for i in range(100):
            with socket.create_connection((shost, int(sport))) as t:
                results.append(plain_login(t, "alice", f"wrong-{i}"))
        rate = 100 / (time.time() - t0)
        after = node.metric("keel_sasl_authentication_failures_total") or 0
        check(f"100 wrong passwords in a row ({rate:.0f}/s) are all refused and counted",
              not any(results) and after >= before + 100, f"{before} -> {after}")
        with socket.create_connection((shost, int(sport))) as t:
            check("... and the right one still works", plain_login(t, "alice", "alice-pw") and api_versions(t))
        with open(audit) as f:
            events = [json.loads(line) for line in f if line.strip()]
        fails = sum(1 for e in events if e["event"] == "authentication" and e["outcome"] == "failure")
        check("the audit log holds every failed authentication", fails >= 100 + 21, str(fails))
        check("the node kept running", node.proc.poll() is None)
    finally:
        node.stop()


def kafka_tool(*args):
    """Runs one of Apache Kafka's command-line tools (its Java class) from Maven Central."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cp = subprocess.run(["bash", os.path.join(root, "compat", "peers", "kafka.sh"), "classpath"],
                        capture_output=True, text=True, check=True, timeout=600).stdout.strip()
    r = subprocess.run(["java", "-Xmx512m", "-cp", cp, *args], capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


def quota_section():
    node = Node("quotas", [])
    try:
        configs = ["org.apache.kafka.tools.ConfigCommand", "--bootstrap-server", node.kafka]
        rc, out = kafka_tool(*configs, "--alter", "--entity-type", "clients", "--entity-name", "quota-app",
                             "--add-config", "producer_byte_rate=50000")
        check("kafka-configs sets a client's producer_byte_rate (AlterClientQuotas)", rc == 0, out[-500:])
        rc, out = kafka_tool(*configs, "--describe", "--entity-type", "clients", "--entity-name", "quota-app")
        check("kafka-configs describes it (DescribeClientQuotas)", rc == 0 and "producer_byte_rate=50000.0" in out,
              out[-500:])
        admin = AdminClient({"bootstrap.servers": node.kafka})
        admin.create_topics([NewTopic("quota", num_partitions=1, replication_factor=1)])["quota"].result(timeout=30)

        def produce(client_id):
            throttles = []
            p = Producer({"bootstrap.servers": node.kafka, "client.id": client_id, "acks": 1, "linger.ms": 5,
                          "throttle_cb": lambda ev: throttles.append(ev.throttle_time)})
            for i in range(60):
                p.produce("quota", value=os.urandom(10_000))
                p.poll(0)
            p.flush(60)
            deadline = time.time() + 5
            while not throttles and time.time() < deadline:
                p.poll(0.2)
            return throttles

        throttles = produce("quota-app")
        check("a producer over its byte rate is told to wait (throttle_time_ms)",
              throttles and max(throttles) > 0, str(throttles[:5]))
        check("throttled responses are counted", (node.metric("keel_quota_throttled_responses_total") or 0) > 0)
        check("another client id is not throttled", produce("other-app") == [])
        rc, out = kafka_tool(*configs, "--alter", "--entity-type", "clients", "--entity-name", "quota-app",
                             "--delete-config", "producer_byte_rate")
        rc2, out2 = kafka_tool(*configs, "--describe", "--entity-type", "clients", "--entity-name", "quota-app")
        check("kafka-configs removes the quota", rc == 0 and rc2 == 0 and "producer_byte_rate" not in out2, out + out2)

        # request_percentage (KIP-124): 0.01 % of one thread is 100 us of handling a second.
        rc, out = kafka_tool(*configs, "--alter", "--entity-type", "clients", "--entity-name", "busy-app",
                             "--add-config", "request_percentage=0.01")
        check("kafka-configs sets a client's request_percentage", rc == 0, out[-500:])

        def metadata_calls(client_id, seconds=4.0):
            a = AdminClient({"bootstrap.servers": node.kafka, "client.id": client_id})
            n, t0 = 0, time.time()
            while time.time() - t0 < seconds:
                try:
                    a.list_topics(timeout=seconds)
                    n += 1
                except KafkaException:
                    pass
            return n

        before = node.metric("keel_quota_throttled_responses_total") or 0
        busy, free = metadata_calls("busy-app"), metadata_calls("free-app")
        after = node.metric("keel_quota_throttled_responses_total") or 0
        check(f"a client over its request_percentage is slowed ({busy} Metadata requests in 4 s against {free})",
              busy * 4 < free and after > before, f"busy {busy}, free {free}, throttled {before} -> {after}")
    finally:
        node.stop()


def free_port():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from free_ports import free_port as below_ephemeral
    return below_ephemeral()


def acl_cluster_section():
    """ACLs made through one node of three are in force on the others within a second."""
    raft = [free_port() for _ in range(3)]
    peers = ",".join(f"{i}@127.0.0.1:{p}" for i, p in enumerate(raft))
    common = ["authorizer = true", 'super_users = ["User:admin"]',
              "[sasl_plain_users]", 'admin = "admin-pw"', 'carol = "carol-pw"']
    nodes = []
    try:
        for i in range(3):
            nodes.append(Node(f"acl-node{i}", common, extra_args=(
                "--node-id", str(i), "--raft-listen", f"127.0.0.1:{raft[i]}", "--peers", peers,
                "--cluster-secret", "security checks' cluster secret"), wait=False))
        for n in nodes:
            n.wait_ready()
        admin = ["--sasl-user", "admin", "--sasl-password", "admin-pw"]

        def listed_on(node):
            r = subprocess.run([KEEL, "acl", "list", "--principal", "User:carol", "-b", node.kafka, *admin],
                               capture_output=True, text=True, timeout=30)
            return "TOPIC:carol-topic" in r.stdout

        r = subprocess.run([KEEL, "acl", "add", "--principal", "User:carol", "--operation", "READ", "--topic", "carol-topic",
                            "-b", nodes[0].kafka, *admin], capture_output=True, text=True, timeout=60)
        t0 = time.time()
        check("keel acl add through node 0", r.returncode == 0, r.stdout + r.stderr)
        check("keel acl list shows the ACL on the node it was added through", listed_on(nodes[0]))
        ok = r.returncode == 0 and wait_for(lambda: listed_on(nodes[1]) and listed_on(nodes[2]), 5)
        elapsed = time.time() - t0
        check(f"an ACL added through node 0 is listed by nodes 1 and 2 within a second ({elapsed * 1000:.0f} ms)",
              ok and elapsed < 1.0, r.stdout + r.stderr)
    finally:
        for n in nodes:
            n.stop()


if __name__ == "__main__":
    os.makedirs(WORK, exist_ok=True)
    sections = [tls_section, sasl_section, acl_section, acl_cluster_section, limits_section,
                quota_section, dev_secure_section, bad_input_section]
    # SECTIONS=tls,sasl runs only those (by name without "_section"); all by default.
    only = [x for x in os.environ.get("SECTIONS", "").split(",") if x]
    for section in sections:
        if not only or section.__name__.removesuffix("_section") in only:
            section()
    print(f"{len(PASSED)} passed, {len(FAILED)} failed")
    sys.exit(1 if FAILED else 0)
