#!/usr/bin/env bash
# Starts `keel serve` (the binary given as $1, default target/debug/keel) on free ports in a
# fresh data directory, runs the kcat, confluent-kafka, Java client, Kafka Streams and Kafka
# Connect flows against it, stops it with SIGTERM (which must exit 0) and prints
# "N passed, N failed".
#
# PEER=kafka runs the same flows against Apache Kafka 4.x in KRaft mode, one node
# (compat/peers/kafka.sh): the control. Flows that need Keel itself (three Keel nodes, its
# metrics and health endpoints, its SIGTERM) are left out there.
set -uo pipefail
DIR="$(cd "$(dirname "$0")" && pwd)"
KEEL="${1:-${DIR}/../target/debug/keel}"
VENV="${VENV:-/tmp/keel-compat-venv}"
PEER="${PEER:-keel}"
WORK="$(mktemp -d /tmp/keel-compat.XXXXXX)"
if [[ "${PEER}" == kafka ]]; then
    trap 'bash "${DIR}/peers/kafka.sh" stop "${WORK}" >/dev/null 2>&1; rm -rf "${WORK}"' EXIT
    BOOTSTRAP="$(bash "${DIR}/peers/kafka.sh" start "${WORK}")" || { echo "Apache Kafka did not start"; echo "0 passed, 1 failed"; exit 1; }
    export BOOTSTRAP
    echo "Apache Kafka at ${BOOTSTRAP}"
else
    "${KEEL}" serve --data-dir "${WORK}/data" --kafka-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
        >"${WORK}/stdout" 2>"${WORK}/stderr" &
    PID=$!
    trap 'kill -9 ${PID} 2>/dev/null; rm -rf "${WORK}"' EXIT
    for _ in $(seq 1 100); do
        grep -q "keel ready" "${WORK}/stdout" 2>/dev/null && break
        sleep 0.1
    done
    READY="$(grep "keel ready" "${WORK}/stdout" || true)"
    if [[ -z "${READY}" ]]; then
        echo "keel did not start:"; cat "${WORK}/stderr"; echo "0 passed, 1 failed"; exit 1
    fi
    export BOOTSTRAP="$(echo "${READY}" | sed -E 's/.*kafka=([^ ]+).*/\1/')"
    HTTP="$(echo "${READY}" | sed -E 's/.*http=([^ ]+).*/\1/')"
    echo "keel at ${BOOTSTRAP} (http ${HTTP})"
fi

pass=0; fail=0
run() {
    local name="$1"; shift
    echo "== ${name}"
    if "$@"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAILED: ${name}"; fi
}
run "kcat produce/consume" env N=2000 bash "${DIR}/kcat_smoke.sh"
run "confluent-kafka admin/produce/read" timeout 180 "${VENV}/bin/python" "${DIR}/ck_smoke.py"
run "confluent-kafka consumer group (2 members, sync commits)" timeout 180 "${VENV}/bin/python" "${DIR}/ck_group_smoke.py"
run "confluent-kafka transactions (consume-transform-produce, fencing, timeout)" timeout 240 "${VENV}/bin/python" "${DIR}/ck_txn.py"
run "Java kafka-clients transactions (consume-transform-produce, fencing)" timeout 300 bash "${DIR}/clients/java/run.sh"
if [[ "${PEER}" == keel ]]; then
    run "Java client through a partition leader's kill -9 on three nodes (OffsetForLeaderEpoch, no reset, nothing lost)" timeout 300 bash "${DIR}/clients/java/failover.sh" "${KEEL}"
fi
run "Kafka Streams: exactly_once_v2 word count (repartition, compacted changelog), at_least_once windowed join and windowed count" timeout 300 bash "${DIR}/clients/streams/run.sh"
run "Kafka Connect distributed worker (compacted internal topics, FileStream source and sink, restart)" timeout 400 bash "${DIR}/clients/connect/run.sh"
if [[ "${PEER}" == keel ]]; then
    run "metrics endpoint" bash -c "curl -sf http://${HTTP}/metrics | grep -q '^keel_produced_records_total [1-9]'"
    run "health endpoint" bash -c "curl -sf http://${HTTP}/health | grep -q '\"status\":\"ok\"'"
    kill -TERM "${PID}"
    if wait "${PID}"; then pass=$((pass+1)); echo "== SIGTERM: clean exit 0"; else fail=$((fail+1)); echo "FAILED: SIGTERM exit status $?"; fi
    if [[ ${fail} -ne 0 ]]; then
        echo "--- keel stderr (last 40 lines)"; tail -40 "${WORK}/stderr"
    fi
fi
echo "${pass} passed, ${fail} failed"
[[ ${fail} -eq 0 ]]
