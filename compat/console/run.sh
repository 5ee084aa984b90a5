#!/usr/bin/env bash
# The web console against a running `keel serve`: its own script, run in Node, renders
# every page from the admin API; then Chromium shows it, driven page by page by Playwright.
# Needs compat/setup.sh's venv.
# Usage: bash compat/console/run.sh path/to/keel
set -euo pipefail
KEEL=$(realpath "${1:-target/debug/keel}")
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
# A short chaos run (three nodes, one kill) whose report the console lists.
"$KEEL" chaos run --duration 5 --faults kill --seed 42 --out "$WORK/chaos/run-42" > "$WORK/chaos.out" 2>&1 \
    || { echo "keel chaos run failed"; tail -20 "$WORK/chaos.out"; exit 1; }
"$KEEL" serve --data-dir "$WORK/data" --kafka-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
    --chaos-reports "$WORK/chaos" > "$WORK/out" 2> "$WORK/err" &
PID=$!
for _ in $(seq 1 100); do grep -q "keel ready" "$WORK/out" && break; sleep 0.1; done
KAFKA=$(grep -o "kafka=[^ ]*" "$WORK/out" | cut -d= -f2)
HTTP=$(grep -o "http=[^ ]*" "$WORK/out" | cut -d= -f2)
"$KEEL" topic create console-demo -p 3 --bootstrap "$KAFKA" > /dev/null
for i in 1 2 3 4; do echo "v$i"; done | "$KEEL" produce console-demo --partition 1 --bootstrap "$KAFKA" > /dev/null
# A consumer group (confluent-kafka, from compat/setup.sh's venv) that committed offset 3
# of the four records: lag 1.
"${VENV:-/tmp/keel-compat-venv}/bin/python" - "$KAFKA" <<'PY'
import sys
from confluent_kafka import Consumer, TopicPartition
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "console-reader", "enable.auto.commit": False})
c.commit(offsets=[TopicPartition("console-demo", 1, 3)], asynchronous=False)
c.close()
# Partition 2 gets one record with a key, a JSON value and a header, for the message browser.
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": sys.argv[1], "acks": "all"})
p.produce("console-demo", partition=2, key=b"order-7", value=b'{"total":42,"items":["x"]}', headers=[("source", b"web")])
assert p.flush(30) == 0
PY
node "$HERE/check.mjs" "http://$HTTP" console-demo
# The same pages in a real browser: Debian's Chromium (installed here if missing) driven by
# Playwright (playwright-core, pinned, from the npm registry). Screenshots go to $SHOTS
# (SHOTS=docs/images regenerates the README's).
if [[ ! -x /usr/bin/chromium ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
DEPS="${KEEL_BROWSER_DEPS:-/tmp/keel-browser-deps}"
if [[ ! -d "$DEPS/node_modules/playwright-core" ]]; then
    mkdir -p "$DEPS" && npm install --silent --prefix "$DEPS" playwright-core@1.64.1 >/dev/null
fi
SHOTS="${SHOTS:-$WORK/screenshots}"
mkdir -p "$SHOTS"
PLAYWRIGHT_FROM="$DEPS/" node "$HERE/browser.mjs" "http://$HTTP" console-demo "$(realpath "$SHOTS")"
