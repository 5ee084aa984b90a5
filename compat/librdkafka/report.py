#!/usr/bin/env python3
"""Writes docs/compat.md, the report card of librdkafka's broker tests against Keel.

Inputs: broker_tests.txt (every broker test of the librdkafka version in use),
results.tsv (written by suite.sh: test, status, seconds), notes.tsv (test, verdict, why)
for tests that do not apply or whose failure has a known cause, allow_list.txt (tests CI
requires to pass).  Run:  python3 compat/librdkafka/report.py
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def read_lines(name):
    path = os.path.join(HERE, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [l.rstrip("\n") for l in f if l.strip() and not l.startswith("#")]


tests = read_lines("broker_tests.txt")
results = {}
for line in read_lines("results.tsv"):
    t, status, secs = line.split("\t")
    results[t] = (status, secs)
# The control: the same tests against Apache Kafka (PEER=kafka RESULTS=.../results-kafka.tsv).
control = {}
for line in read_lines("results-kafka.tsv"):
    t, status, secs = line.split("\t")
    # "skipped": the control runs only the single-node scenario (no SASL or cluster pass).
    control[t] = {"passed": "passed", "failed": "failed"}.get(status, "-")
notes = {}
for line in read_lines("notes.tsv"):
    t, verdict, why = line.split("\t", 2)
    notes[t] = (verdict, why)
allow = set(read_lines("allow_list.txt"))

rows = []
counts = {"passed": 0, "failed": 0, "not applicable": 0, "not run": 0}
for t in tests:
    status, secs = results.get(t, ("not run", ""))
    verdict, why = notes.get(t, ("", ""))
    if verdict == "n/a":
        shown = "not applicable"
    elif status == "passed":
        shown = "passed"
    elif status in ("failed", "skipped"):
        shown = "failed"
    else:
        shown = "not run"
    counts[shown] += 1
    rows.append((t, shown, secs, "yes" if t in allow else "", why, control.get(t, "-")))

out = ["<!-- librdkafka:begin -->"]
out.append("## librdkafka's test suite")
out.append("")
out.append("librdkafka 2.12.1's own integration tests (the source the `rdkafka` crate vendors),")
out.append("run against `keel serve` with `TEST_KAFKA_VERSION=2.8.0` by `compat/librdkafka/suite.sh`:")
out.append("against a single node, except the tests that need three brokers (a cluster pass against")
out.append("three Raft-replicated nodes) and the SASL test (a node that requires SASL/PLAIN).")
out.append("This section is regenerated from the results by")
out.append("`python3 compat/librdkafka/report.py`. Tests in the allow-list must pass in CI")
out.append("(`compat/librdkafka/allow_list.txt`, run by `.ci/run`).")
out.append("")
cluster = sum(1 for t, shown, _, _, why, _ in rows if shown == "passed" and "cluster pass" in why)
out.append(f"**{counts['passed']} passed, {counts['failed']} failed, {counts['not applicable']} not applicable"
           + (f", {counts['not run']} not run" if counts["not run"] else "") + f"** of {len(tests)} broker tests"
           + (f" ({counts['passed'] - cluster} of the passes on a single node, {cluster} on the three-node cluster)." if cluster else "."))
out.append("")
out.append("The whole suite: `cargo build -p keel && compat/librdkafka/suite.sh target/debug/keel`")
out.append("(builds the test-runner on first use, about 5 minutes; the run takes about 40 minutes on 2 cores).")
out.append("")
if control:
    out.append("The column *Kafka 4.4* is the control: the same test-runner against Apache Kafka 4.4 in KRaft")
    out.append("mode, one node (`PEER=kafka RESULTS=compat/librdkafka/results-kafka.tsv compat/librdkafka/suite.sh`")
    out.append("with the tests to run); `-` where it was not run. Of the allow-list, three fail on Kafka 4.4 for Kafka 4's")
    out.append("removals, not for the client: 0052's 0.9.0 cases speak protocol versions Kafka 4 dropped (KIP-896), 0092 sets")
    out.append("`message.format.version`, a topic config Kafka 4 no longer knows, and 0129 asks for `segment.bytes=20000`,")
    out.append("below Kafka 4's 1 MiB minimum. Keel accepts all three, as Kafka 3 did.")
    out.append("")
out.append("| test | result | seconds | in CI | Kafka 4.4 | notes |")
out.append("|---|---|---|---|---|---|")
for t, shown, secs, ci, why, ctl in rows:
    out.append(f"| {t} | {shown} | {secs} | {ci} | {ctl} | {why} |")
out.append("")
out.append("<!-- librdkafka:end -->")
# The page has other sections (the client matrix, Kafka's tools): only this one is replaced.
path = os.path.join(ROOT, "docs", "compat.md")
page = open(path).read() if os.path.exists(path) else "# Client compatibility\n\n"
block = "\n".join(out)
if "<!-- librdkafka:begin -->" in page and "<!-- librdkafka:end -->" in page:
    head, rest = page.split("<!-- librdkafka:begin -->", 1)
    page = head + block + rest.split("<!-- librdkafka:end -->", 1)[1]
else:
    page = page.rstrip("\n") + "\n\n" + block + "\n"
with open(path, "w") as f:
    f.write(page)
print(f"docs/compat.md: {counts}")
missing = [t for t in allow if t not in tests]
if missing:
    sys.exit(f"allow-list names unknown tests: {missing}")
