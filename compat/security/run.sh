#!/usr/bin/env bash
# Keel's listeners, TLS and SASL against real clients (confluent-kafka, kafka-python) and
# Python's TLS stack: compat/security/security.py starts its own `keel serve` nodes (the
# binary given as $1, default target/debug/keel), each with a config made for the check.
# Needs compat/setup.sh's venv. Prints "N passed, N failed".
set -euo pipefail
DIR="$(cd "$(dirname "$0")" && pwd)"
KEEL="$(realpath "${1:-${DIR}/../../target/debug/keel}")"
VENV="${VENV:-/tmp/keel-compat-venv}"
WORK="$(mktemp -d /tmp/keel-security.XXXXXX)"
trap 'pkill -f "${WORK}" 2>/dev/null || true; rm -rf "${WORK}"' EXIT
timeout 900 "${VENV}/bin/python" "${DIR}/security.py" "${KEEL}" "${WORK}" 2>&1 | grep -av '^%[0-9]|'
