#!/usr/bin/env bash
# Installs the third-party clients the compatibility flows use: kcat (Debian's package,
# librdkafka 2.0.2) and a Python venv with confluent-kafka (wheel with librdkafka 2.x);
# and RapidJSON's headers, which librdkafka's test-runner uses to check its statistics
# (tests 0053 and 0110).
set -euo pipefail
VENV="${VENV:-/tmp/keel-compat-venv}"
if ! command -v kcat >/dev/null || ! command -v curl >/dev/null || [[ ! -f /usr/include/rapidjson/schema.h ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat curl rapidjson-dev >/dev/null
fi
if [[ ! -x "${VENV}/bin/python" ]]; then
    python3 -m venv "${VENV}"
fi
"${VENV}/bin/pip" install -q confluent-kafka
kcat -V | head -1
"${VENV}/bin/python" -c 'import confluent_kafka as c; print("confluent-kafka", c.version()[0], "librdkafka", c.libversion()[0])'
