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
trap '[[ -n "${PID}" ]] && kill -9 "${PID}" 2>/dev/null; rm -rf "${WORK}"' EXIT
start_keel
echo "keel at ${BOOTSTRAP}; TEST_KAFKA_VERSION=${TEST_KAFKA_VERSION}"

if [[ $# -gt 0 ]]; then TESTS_LIST="$*"; else TESTS_LIST="$(cat "${HERE}/broker_tests.txt")"; fi
export LD_LIBRARY_PATH="${SRC_DIR}/src:${SRC_DIR}/src-cpp"
pass=0; fail=0; failed=""
: > "${RESULTS}.new"
for t in ${TESTS_LIST}; do
    if ! kill -0 "${PID}" 2>/dev/null; then
        echo "keel was not running before ${t}; restarting it"; start_keel
    fi
    start=$(date +%s)
    # -E: skip tests that need the socket fault-injection shim; -p1: one at a time.
    (cd "${SRC_DIR}/tests" && TESTS="${t}" timeout "${TIMEOUT_S}" ./test-runner -p1 -E >"${LOGS}/${t}.log" 2>&1)
    rc=$?
    secs=$(( $(date +%s) - start ))
    # Judge each row of the runner's summary: a test that was skipped passed nothing.
    summary="$(sed 's/\x1b\[[0-9;]*m//g' "${LOGS}/${t}.log" | grep -E '^\| [0-9]{4}_' || true)"
    if [[ ${rc} -eq 0 ]] && grep -q PASSED <<<"${summary}" && ! grep -qE 'SKIPPED|FAILED' <<<"${summary}"; then
        pass=$((pass+1)); status=passed; echo "PASS ${t} (${secs}s)"
    elif [[ ${rc} -eq 0 ]]; then
        status=skipped; echo "SKIP ${t} (${secs}s)"
    else
        fail=$((fail+1)); status=failed; failed="${failed} ${t}"; echo "FAIL ${t} (${secs}s, log ${LOGS}/${t}.log)"
    fi
    printf '%s\t%s\t%s\n' "${t}" "${status}" "${secs}" >> "${RESULTS}.new"
done
mv "${RESULTS}.new" "${RESULTS}"
if ! kill -0 "${PID}" 2>/dev/null; then
    echo "keel is not running at the end of the suite"; fail=$((fail+1))
fi
echo "${pass} passed, ${fail} failed${failed:+ (${failed# })}"
[[ ${fail} -eq 0 ]]
