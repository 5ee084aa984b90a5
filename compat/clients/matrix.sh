#!/usr/bin/env bash
# The client matrix: every client program under compat/clients/ runs the scenarios of
# SCENARIOS.md against one server, and each RESULT line lands in a TSV.
#
#   bash compat/clients/matrix.sh [--peer keel|kafka] [--keel PATH] [--out FILE]
#                                 [--allow FILE] [--docs] [CLIENT...]
#
# --peer keel (default) starts `keel serve` (PATH, default target/debug/keel) in a fresh data
# directory; --peer kafka starts Apache Kafka 4.x in KRaft mode from its Maven artifacts
# (compat/peers/kafka.sh), the control column. --out (default
# compat/clients/results/<peer>.tsv) gets "client<TAB>scenario<TAB>status<TAB>detail".
# --allow lists "client scenario" cells allowed to fail (each with its reason); any other
# FAIL, or a client that prints no RESULT for a scenario, makes the exit status 1.
# --docs renders the table of both result files into docs/compat.md. No CLIENT runs all.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
PEER=keel
KEEL="${ROOT}/target/debug/keel"
OUT=""
ALLOW=""
DOCS=0
CLIENTS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --peer) PEER="$2"; shift 2 ;;
        --keel) KEEL="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --allow) ALLOW="$2"; shift 2 ;;
        --docs) DOCS=1; shift ;;
        *) CLIENTS+=("$1"); shift ;;
    esac
done
# confluent-kafka-go and @confluentinc/kafka-javascript are not here: both wrap librdkafka
# (as confluent-kafka-python and rdkafka do), and neither installs from this machine's
# registries (the Go module proxy serves confluent-kafka-go only from an unapproved copy;
# the npm package downloads its binary, or librdkafka's dependencies' sources, from GitHub).
ALL=(confluent-kafka-python kafka-python aiokafka java-4.4 java-3.9 franz-go sarama segmentio-kafka-go
     kafkajs rdkafka-rust)
[[ ${#CLIENTS[@]} -eq 0 ]] && CLIENTS=("${ALL[@]}")
OUT="${OUT:-${HERE}/results/${PEER}.tsv}"
mkdir -p "$(dirname "${OUT}")"
SCENARIOS=(admin produce compression offsets group groups_admin)
VENV="${VENV:-/tmp/keel-compat-venv}"
CLIENT_TIMEOUT_S="${CLIENT_TIMEOUT_S:-420}"

command_for() {
    case "$1" in
        confluent-kafka-python) echo "${VENV}/bin/python ${HERE}/python/ck_matrix.py" ;;
        kafka-python) echo "${VENV}/bin/python ${HERE}/python/kp_matrix.py" ;;
        aiokafka) echo "${VENV}/bin/python ${HERE}/python/aio_matrix.py" ;;
        java-4.4) echo "bash ${HERE}/java/matrix.sh 4.4.0" ;;
        java-3.9) echo "bash ${HERE}/java/matrix.sh 3.9.1" ;;
        franz-go|sarama|segmentio-kafka-go) echo "bash ${HERE}/go/run.sh $1" ;;
        kafkajs) echo "bash ${HERE}/js/run.sh $1" ;;
        rdkafka-rust) echo "bash ${HERE}/rust/run.sh" ;;
        *) return 1 ;;
    esac
}

WORK="$(mktemp -d /tmp/keel-matrix.XXXXXX)"
PID=""
cleanup() { [[ -n "${PID}" ]] && kill -9 "${PID}" 2>/dev/null; [[ "${PEER}" == kafka ]] && bash "${ROOT}/compat/peers/kafka.sh" stop "${WORK}" >/dev/null 2>&1; rm -rf "${WORK}"; }
trap cleanup EXIT

if [[ "${PEER}" == keel ]]; then
    "${KEEL}" serve --data-dir "${WORK}/data" --kafka-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
        >"${WORK}/stdout" 2>"${WORK}/stderr" &
    PID=$!
    for _ in $(seq 1 100); do
        grep -q "keel ready" "${WORK}/stdout" 2>/dev/null && break
        sleep 0.1
    done
    READY="$(grep "keel ready" "${WORK}/stdout" || true)"
    [[ -n "${READY}" ]] || { echo "keel did not start"; cat "${WORK}/stderr"; exit 1; }
    BOOTSTRAP="$(echo "${READY}" | sed -E 's/.*kafka=([^ ]+).*/\1/')"
elif [[ "${PEER}" == kafka ]]; then
    BOOTSTRAP="$(bash "${ROOT}/compat/peers/kafka.sh" start "${WORK}")" || { echo "Apache Kafka did not start"; exit 1; }
else
    echo "unknown peer ${PEER}"; exit 2
fi
export BOOTSTRAP VENV
echo "matrix: ${PEER} at ${BOOTSTRAP}, clients: ${CLIENTS[*]}"

: >"${OUT}.new"
status=0
for client in "${CLIENTS[@]}"; do
    cmd="$(command_for "${client}")" || { echo "unknown client ${client}"; status=1; continue; }
    log="${WORK}/${client}.log"
    start=$(date +%s)
    PREFIX="m-${client}" timeout "${CLIENT_TIMEOUT_S}" ${cmd} >"${log}" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    for sc in "${SCENARIOS[@]}"; do
        line="$(grep -oE "RESULT ${sc} .*" "${log}" | tail -1)"
        if [[ -z "${line}" ]]; then
            st=FAIL; detail="no result (exit ${rc}): $(grep -v '^RESULT' "${log}" | tail -3 | tr '\t\n' '  ' | cut -c1-300)"
        else
            st="$(echo "${line}" | cut -d' ' -f3)"; detail="$(echo "${line}" | cut -d' ' -f4- | tr '\t' ' ')"
        fi
        printf '%s\t%s\t%s\t%s\n' "${client}" "${sc}" "${st}" "${detail}" >>"${OUT}.new"
        allowed=0
        [[ -n "${ALLOW}" ]] && grep -qE "^${client} ${sc}( |$)" "${ALLOW}" && allowed=1
        if [[ "${st}" == FAIL && ${allowed} -eq 0 ]]; then
            status=1
            echo "  ${client} ${sc}: FAIL ${detail}"
        fi
    done
    echo "${client}: $(grep -oE 'RESULT [a-z_]+ PASS' "${log}" | wc -l) of ${#SCENARIOS[@]} pass (${took} s)"
    if grep -qE 'RESULT [a-z_]+ FAIL' "${log}" || [[ ${rc} -ne 0 ]]; then
        echo "--- ${client} output (last 30 lines)"; tail -30 "${log}"
    fi
done
# Clients not run this time keep their previous rows.
if [[ -f "${OUT}" ]]; then
    awk -F'\t' 'NR==FNR { ran[$1]=1; next } !($1 in ran)' "${OUT}.new" "${OUT}" >>"${OUT}.new"
fi
sort -t$'\t' -k1,1 -s "${OUT}.new" >"${OUT}"; rm -f "${OUT}.new"
if [[ ${DOCS} -eq 1 ]]; then
    python3 "${HERE}/render.py" "${HERE}/results" "${ROOT}/docs/compat.md"
fi
exit ${status}
