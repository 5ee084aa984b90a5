"""Renders the client matrix (results/keel.tsv beside results/kafka.tsv) into docs/compat.md,
between the markers <!-- client-matrix:begin --> and <!-- client-matrix:end -->.

    python3 compat/clients/render.py compat/clients/results docs/compat.md
"""

import os
import sys

BEGIN = "<!-- client-matrix:begin -->"
END = "<!-- client-matrix:end -->"
SCENARIOS = ["admin", "produce", "compression", "offsets", "group", "groups_admin"]
MARK = {"PASS": "pass", "FAIL": "**FAIL**", "UNSUPPORTED": "n/a"}


def load(path):
    rows = {}
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3:
                rows[(parts[0], parts[1])] = (parts[2], parts[3] if len(parts) > 3 else "")
    return rows


def main(results_dir, doc):
    keel = load(os.path.join(results_dir, "keel.tsv"))
    kafka = load(os.path.join(results_dir, "kafka.tsv"))
    clients = []
    for c, _ in list(keel) + list(kafka):
        if c not in clients:
            clients.append(c)
    out = [
        BEGIN,
        "",
        "Each cell is Keel's result, then Apache Kafka 4.x's (KRaft, one node, `compat/peers/kafka.sh`)",
        "for the same program; `-` where that peer has not been run. Scenarios: `compat/clients/SCENARIOS.md`.",
        "Regenerate with `bash compat/clients/matrix.sh --docs` (Keel) and",
        "`bash compat/clients/matrix.sh --peer kafka --docs` (the control).",
        "",
        "Versions: Apache Kafka's Java client (`kafka-clients`) 4.4.0 and 3.9.1; franz-go 1.22.3 (kadm 1.20.0);",
        "Sarama 1.61.1 speaking Kafka 4.0's protocol versions; segmentio/kafka-go 0.4.51; KafkaJS 2.2.4;",
        "confluent-kafka-python 2.16.2; kafka-python 3.0.12; aiokafka 0.14.0; the `rdkafka` crate 0.39",
        "(librdkafka 2.12.1).",
        "",
        "| client | " + " | ".join(f"`{s}`" for s in SCENARIOS) + " |",
        "|---" * (len(SCENARIOS) + 1) + "|",
    ]
    notes = []
    for c in clients:
        cells = []
        for s in SCENARIOS:
            k = keel.get((c, s))
            a = kafka.get((c, s))
            cells.append(f"{MARK.get(k[0], k[0]) if k else '-'} / {MARK.get(a[0], a[0]) if a else '-'}")
            for peer, r in (("Keel", k), ("Kafka", a)):
                if r and r[0] != "PASS" and r[1]:
                    notes.append(f"- {c} `{s}` on {peer}: {r[0].lower()}, {r[1]}")
        out.append(f"| {c} | " + " | ".join(cells) + " |")
    if notes:
        out += ["", "Cells other than pass:", ""] + notes
    out += ["", END]
    text = open(doc).read() if os.path.exists(doc) else ""
    block = "\n".join(out)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Client matrix\n\n" + block + "\n"
    with open(doc, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
