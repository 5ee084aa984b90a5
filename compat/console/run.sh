#!/usr/bin/env bash
# The web console against a running `keel serve`: its own script, run in Node, renders
# every page from the admin API. Usage: bash compat/console/run.sh path/to/keel
set -euo pipefail
KEEL=$(realpath "${1:-target/debug/keel}")
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$KEEL" serve --data-dir "$WORK/data" --kafka-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 > "$WORK/out" 2> "$WORK/err" &
PID=$!
for _ in $(seq 1 100); do grep -q "keel ready" "$WORK/out" && break; sleep 0.1; done
KAFKA=$(grep -o "kafka=[^ ]*" "$WORK/out" | cut -d= -f2)
HTTP=$(grep -o "http=[^ ]*" "$WORK/out" | cut -d= -f2)
"$KEEL" topic create console-demo -p 3 --bootstrap "$KAFKA" > /dev/null
for i in 1 2 3 4; do echo "v$i"; done | "$KEEL" produce console-demo --partition 1 --bootstrap "$KAFKA" > /dev/null
node "$HERE/check.mjs" "http://$HTTP" console-demo
