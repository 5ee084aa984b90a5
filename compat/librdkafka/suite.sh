#!/usr/bin/env bash
# librdkafka's own integration tests against Keel.
#
#   compat/librdkafka/suite.sh [KEEL_BINARY] [TEST ...]
#
# Builds librdkafka's tests/test-runner from the librdkafka source vendored in the
# rdkafka-sys crate (cargo fetches it; nothing else is downloaded), starts `keel serve` on
# free ports in a fresh data directory, writes tests/test.conf, runs each test with a
# timeout (restarting Keel if it died) and prints "N passed, N failed". Results go to
# compat/librdkafka/results.tsv (test, status, seconds) for report.py.
# Without TEST arguments it runs every broker test of the suite (see broker_tests.txt).
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
KEEL="${1:-${ROOT}/target/debug/keel}"
shift || true
RDKSYS="4.10.0+2.12.1"                      # librdkafka 2.12.1, as the rdkafka crate builds it
SRC_DIR="${SRC_DIR:-/tmp/keel-librdkafka-${RDKSYS#*+}}"
TIMEOUT_S="${TIMEOUT_S:-300}"
# The Kafka version whose API surface Keel claims; gates version-dependent tests.
export TEST_KAFKA_VERSION="${TEST_KAFKA_VERSION:-2.8.0}"
RESULTS="${RESULTS:-${HERE}/results.tsv}"
LOGS="${LOGS:-/tmp/keel-librdkafka-logs}"
mkdir -p "${LOGS}"

build_runner() {
    [[ -x "${SRC_DIR}/tests/test-runner" ]] && return 0
    if [[ ! -d "${SRC_DIR}" ]]; then
        local scratch; scratch="$(mktemp -d)"
        mkdir -p "${scratch}/src"; touch "${scratch}/src/lib.rs"
        printf '[package]\nname="fetchrdk"\nversion="0.0.0"\nedition="2021"\n[dependencies]\nrdkafka-sys={version="=%s",default-features=false}\n' \
            "${RDKSYS%+*}" > "${scratch}/Cargo.toml"
        (cd "${scratch}" && cargo fetch -q) || return 1
        cp -r "$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rdkafka-sys-"${RDKSYS}" | head -1)/librdkafka" "${SRC_DIR}"
    fi
    (cd "${SRC_DIR}" && ./configure --disable-curl --disable-sasl >/dev/null &&
        make -j"$(nproc)" libs >/dev/null && make -j"$(nproc)" -C tests build >/dev/null)
}

if ! build_runner; then
    echo "could not build librdkafka's test-runner"; echo "0 passed, 1 failed"; exit 1
fi

WORK="$(mktemp -d /tmp/keel-rdk.XXXXXX)"
PID=""
start_keel() {
    "${KEEL}" serve --data-dir "${WORK}/data" --kafka-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
        --default-partitions 4 >"${WORK}/stdout" 2>>"${WORK}/stderr" &
    PID=$!
    for _ in $(seq 1 100); do
        grep -q "keel ready" "${WORK}/stdout" 2>/dev/null && break
        sleep 0.1
    done
    BOOTSTRAP="$(sed -nE 's/.*kafka=([^ ]+).*/\1/p' "${WORK}/stdout" | tail -1)"
    printf 'bootstrap.servers=%s\n' "${BOOTSTRAP}" > "${SRC_DIR}/tests/test.conf"
}
trap '[[ -n "${PID}" ]] && { kill -9 "${PID}"; wait "${PID}"; } 2>/dev/null; rm -rf "${WORK}"' EXIT
start_keel
echo "keel at ${BOOTSTRAP}; TEST_KAFKA_VERSION=${TEST_KAFKA_VERSION}"

# Tests are selected by number: every broker test sharing a number runs together (-L
# leaves out the local ones) and each gets its own row in the runner's summary.
if [[ $# -gt 0 ]]; then NUMBERS="$*"; else NUMBERS="$(cut -c1-4 "${HERE}/broker_tests.txt" | uniq)"; fi
export LD_LIBRARY_PATH="${SRC_DIR}/src:${SRC_DIR}/src-cpp"
: > "${RESULTS}.new"
for n in ${NUMBERS}; do
    n="${n:0:4}"
    if ! kill -0 "${PID}" 2>/dev/null; then
        echo "keel was not running before ${n}; restarting it"; start_keel
    fi
    start=$(date +%s)
    # -E: skip tests that need the socket fault-injection shim; -p1: one at a time.
    (cd "${SRC_DIR}/tests" && TESTS="${n}" timeout "${TIMEOUT_S}" ./test-runner -p1 -E -L >"${LOGS}/${n}.log" 2>&1)
    rc=$?
    secs=$(( $(date +%s) - start ))
    # Judge each row of the runner's summary (| name | STATUS | seconds |).
    rows="$(sed 's/\x1b\[[0-9;]*m//g' "${LOGS}/${n}.log" | grep -E '^\| [0-9]{4}_' | tr -d '|' | awk '{print $1, $2, $3}')"
    for t in $(grep "^${n}" "${HERE}/broker_tests.txt"); do
        row="$(awk -v t="${t}" '$1 == t' <<<"${rows}")"
        status="$(awk '{print tolower($2)}' <<<"${row}")"
        tsecs="$(awk '{sub(/s$/, "", $3); print $3}' <<<"${row}")"
        if [[ -z "${status}" ]]; then
            # No row: the runner timed out or crashed before its summary.
            if [[ ${rc} -ne 0 ]]; then status=failed; else status=skipped; fi
            tsecs="${secs}"
        fi
        printf '%s\t%s\t%s\n' "${t}" "${status}" "${tsecs}" >> "${RESULTS}.new"
        echo "${status^^} ${t} (${tsecs}s)"
    done
done
mv "${RESULTS}.new" "${RESULTS}"
pass=$(awk -F'\t' '$2 == "passed"' "${RESULTS}" | wc -l)
fail=$(awk -F'\t' '$2 == "failed"' "${RESULTS}" | wc -l)
skip=$(awk -F'\t' '$2 == "skipped"' "${RESULTS}" | wc -l)
if ! kill -0 "${PID}" 2>/dev/null; then
    echo "keel is not running at the end of the suite"; fail=$((fail+1))
fi
# With REQUIRE=<file>, only the tests it lists decide the outcome (CI's allow-list).
if [[ -n "${REQUIRE:-}" ]]; then
    pass=0; fail=0
    for t in $(grep -v '^#' "${REQUIRE}"); do
        if awk -F'\t' -v t="${t}" '$1 == t && $2 == "passed" {found=1} END {exit !found}' "${RESULTS}"; then
            pass=$((pass+1))
        else
            fail=$((fail+1)); echo "required test ${t} did not pass (log ${LOGS}/${t:0:4}.log)"
        fi
    done
    skip=0
fi
echo "${skip} skipped"
echo "${pass} passed, ${fail} failed"
[[ ${fail} -eq 0 ]]
