#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 30; `build` only builds them), starting from its seed corpus
# in fuzz/corpus/<target> (new inputs go to a scratch directory, not the committed corpus).
# Fails on the first crash, panic, leak of the memory limit or hang, and prints the input.
#
# Builds without a sanitizer (Keel's own crates forbid unsafe code) and unoptimised, to
# keep CI's build short; for long runs: cd fuzz && cargo +nightly fuzz run -O <target>.
# Needs the nightly toolchain; installs cargo-fuzz 0.13.1 if it is missing.
set -euo pipefail
SECONDS_EACH="${1:-30}"
DIR="$(cd "$(dirname "$0")" && pwd)"
cd "${DIR}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "0.13.1"; then
    cargo install cargo-fuzz --version 0.13.1 --locked
fi
cargo +nightly fuzz build --dev -s none
# `fuzz/run.sh build` stops here (CI builds the targets while slower steps wait on timers).
[[ "${SECONDS_EACH}" == build ]] && exit 0
SCRATCH="$(mktemp -d /tmp/keel-fuzz.XXXXXX)"
trap 'rm -rf "${SCRATCH}"' EXIT
for target in $(cargo +nightly fuzz list); do
    mkdir -p "${SCRATCH}/${target}" "${DIR}/artifacts/${target}"
    echo "== ${target}: ${SECONDS_EACH} s"
    if ! cargo +nightly fuzz run --dev -s none "${target}" "${SCRATCH}/${target}" "corpus/${target}" -- \
        -max_total_time="${SECONDS_EACH}" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"${SCRATCH}/${target}.log" 2>&1; then
        grep -v '^%' "${SCRATCH}/${target}.log" | tail -40
        echo "fuzz target ${target} failed; its input is in fuzz/artifacts/${target}/"
        exit 1
    fi
    grep -E "^stat::number_of_executed_units|^Done" "${SCRATCH}/${target}.log" | tr '\n' ' '
    echo
done
echo "every fuzz target ran ${SECONDS_EACH} s without a failure"
