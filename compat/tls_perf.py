#!/usr/bin/env python3
"""What TLS and SASL cost a producer: librdkafka's `rdkafka_performance` against one
`keel serve` with three listeners (PLAINTEXT, SSL, SASL_SSL with a SCRAM-SHA-512 user),
1 KiB records, acks=all, the listeners taken in turn, twice, so that each pair of rows is
measured side by side on the same node. For each run it prints acknowledged msg/s and
MB/s, per-message latency from produce() to delivery report (avg, p50, p99, p999, max in
ms) and Keel's CPU (% of one core, and microseconds per record).

    compat/tls_perf.py --keel target/release/keel

rdkafka_performance is built from the librdkafka source that compat/librdkafka/suite.sh
fetches (run that once first, or point --librdkafka at a built tree).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from produce_perf import rdkafka_performance  # noqa: E402
from scale import cpu_seconds  # noqa: E402


def start(keel, work):
    certs = os.path.join(work, "certs")
    subprocess.run([keel, "certs", "--out", certs], check=True, stdout=subprocess.DEVNULL)
    config = os.path.join(work, "keel.toml")
    with open(config, "w") as f:
        f.write(
            'listeners = [{ name = "SSL", listen = "127.0.0.1:0" }, { name = "SASL_SSL", listen = "127.0.0.1:0" }]\n'
            '[sasl_plain_users]\nadmin = "admin-pw"\n'
            f'[tls]\ncert_file = "{certs}/node.pem"\nkey_file = "{certs}/node.key"\n')
    out = open(os.path.join(work, "stdout"), "w+")
    proc = subprocess.Popen([keel, "serve", "--config", config, "--data-dir", os.path.join(work, "data"),
                             "--kafka-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                             "--kafka-protocol", "SASL_PLAINTEXT", "--listener", "PLAINTEXT=PLAINTEXT://127.0.0.1:0"],
                            stdout=out, stderr=subprocess.DEVNULL, env={**os.environ, "KEEL_LOG": "warn"})
    ready = None
    for _ in range(600):
        out.seek(0)
        lines = [l for l in out.read().splitlines() if l.startswith("keel ready: ")]
        if lines:
            ready = dict(p.split("=", 1) for p in lines[0][len("keel ready: "):].split())
            break
        time.sleep(0.1)
    if not ready:
        sys.exit("keel did not start")
    subprocess.run([keel, "user", "set", "perf", "--password", "perf-pw", "--mechanism", "SCRAM-SHA-512",
                    "-b", ready["kafka"], "--sasl-user", "admin", "--sasl-password", "admin-pw"],
                   check=True, stdout=subprocess.DEVNULL)
    ca = os.path.join(certs, "ca.pem")
    modes = [
        ("PLAINTEXT", ready["listener.PLAINTEXT"], []),
        ("SSL", ready["listener.SSL"], ["-X", "security.protocol=SSL", "-X", f"ssl.ca.location={ca}"]),
        ("SASL_SSL, SCRAM-SHA-512", ready["listener.SASL_SSL"],
         ["-X", "security.protocol=SASL_SSL", "-X", f"ssl.ca.location={ca}", "-X", "sasl.mechanism=SCRAM-SHA-512",
          "-X", "sasl.username=perf", "-X", "sasl.password=perf-pw"]),
    ]
    return proc, modes


def run(exe, pid, addr, extra, count):
    lat = tempfile.mktemp(prefix="keel-lat-")
    cpu0 = cpu_seconds(pid)
    t0 = time.monotonic()
    client = subprocess.run([exe, "-P", "-t", "perf", "-b", addr, "-s", "1024", "-X", "acks=all", "-X", "linger.ms=5",
                             "-c", str(count), "-l", "-A", lat, "-q"] + extra,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    wall = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    final = [l for l in client.stdout.splitlines() if "delivered" in l and "msgs/s" in l]
    m = re.search(r"(\d+) delivered .* in (\d+)ms: (\d+) msgs/s and ([\d.]+) MB/s", final[-1]) if final else None
    with open(lat) as f:
        v = sorted(int(x) for x in f if x.strip())
    os.unlink(lat)
    n = len(v)
    ms = lambda q: round(v[min(n - 1, int(n * q))] / 1000, 1)  # noqa: E731
    return (int(m.group(3)) if m else None, float(m.group(4)) if m else None, round(sum(v) / n / 1000, 1),
            ms(0.5), ms(0.99), ms(0.999), round(v[-1] / 1000, 1), round(100 * cpu / wall),
            round(1e6 * cpu / max(1, n)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keel", default="target/release/keel")
    ap.add_argument("--librdkafka", default="/tmp/keel-librdkafka-2.12.1")
    ap.add_argument("--count", type=int, default=200000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    exe = rdkafka_performance(args.librdkafka)
    work = tempfile.mkdtemp(prefix="keel-tls-perf-")
    proc, modes = start(os.path.abspath(args.keel), work)
    try:
        print("| listener | round | msg/s | MB/s | latency avg ms | p50 | p99 | p999 | max | Keel CPU % | Keel CPU us/record |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in range(1, args.rounds + 1):
            for label, addr, extra in modes:
                row = run(exe, proc.pid, addr, extra, args.count)
                print(f"| {label} | {r} | " + " | ".join(str(x) for x in row) + " |", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
