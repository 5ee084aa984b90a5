#!/usr/bin/env bash
# Apache Kafka's Java client through a partition leader's kill -9 (Failover.java) against a
# three-node Keel cluster this script starts with `keel dev`.
#
#   bash compat/clients/java/failover.sh [KEEL]     # KEEL defaults to target/debug/keel
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "${HERE}/../../.." && pwd)"
KEEL="${1:-${ROOT}/target/debug/keel}"
KEEL="$(cd "$(dirname "${KEEL}")" && pwd)/$(basename "${KEEL}")"   # this script changes directory
WORK="$(mktemp -d /tmp/keel-failover.XXXXXX)"
DEV=""
# (set -e applies inside the trap too: every step may fail without changing the result.)
cleanup() {
    if [[ -n "${DEV}" ]]; then kill -INT "${DEV}" 2>/dev/null || true; sleep 1; fi
    pkill -9 -f "${WORK}/dev" 2>/dev/null || true
    rm -rf "${WORK}" || true
}
trap cleanup EXIT
cd "${HERE}"
mvn -q -B package -DskipTests >/dev/null
BASE="$(python3 "${ROOT}/compat/free_base_port.py")"
"${KEEL}" dev --nodes 3 --base-port "${BASE}" --data-dir "${WORK}/dev" >"${WORK}/dev.log" 2>&1 &
DEV=$!
for _ in $(seq 1 100); do
    [[ "$(grep -c '^node [123]: pid' "${WORK}/dev.log")" -eq 3 ]] && break
    sleep 0.1
done
NODE_PIDS="$(sed -nE 's/^node ([0-9]+): pid ([0-9]+) .*/\1:\2/p' "${WORK}/dev.log" | paste -sd,)"
if [[ -z "${NODE_PIDS}" ]]; then echo "FAIL: keel dev did not start"; tail -20 "${WORK}/dev.log"; exit 1; fi
export NODE_PIDS
export BOOTSTRAP="127.0.0.1:${BASE},127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2))"
java -Dorg.slf4j.simpleLogger.defaultLogLevel=error \
    -cp "${HERE}/target/keel-java-client-check-0.1.0.jar:${HERE}/target/lib/*" keel.Failover
# The consumer validated its position with the new leader: OffsetForLeaderEpoch requests
# were served (counted in the surviving nodes' metrics).
served=0
for port in $((BASE + 200)) $((BASE + 201)) $((BASE + 202)); do
    n="$(curl -sf "http://127.0.0.1:${port}/metrics" | sed -nE 's/^keel_requests_total\{api="OffsetForLeaderEpoch"\} ([0-9]+).*/\1/p')" || true
    served=$((served + ${n:-0}))
done
if [[ ${served} -lt 1 ]]; then echo "FAIL: no OffsetForLeaderEpoch request reached the cluster"; exit 1; fi
echo "ok: the consumer's OffsetForLeaderEpoch requests were served (${served})"
