#!/usr/bin/env bash
# Installs the third-party clients the compatibility flows use: kcat (Debian's package,
# librdkafka 2.0.2); a Python venv with confluent-kafka (wheel with librdkafka 2.x),
# kafka-python and aiokafka with their codecs; RapidJSON's headers, which librdkafka's
# test-runner uses to check its statistics (tests 0053 and 0110); OpenSSL's headers, so that
# the test-runner speaks TLS and SASL/SCRAM for the suite's secure passes. The Java, Go and
# JavaScript clients of compat/clients/ fetch their pinned packages (Maven Central, the Go
# module proxy, the npm registry) when they first run.
set -euo pipefail
VENV="${VENV:-/tmp/keel-compat-venv}"
if ! command -v kcat >/dev/null || ! command -v curl >/dev/null || [[ ! -f /usr/include/rapidjson/schema.h ]] ||
    [[ ! -f /usr/include/openssl/ssl.h ]] || ! command -v pkg-config >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat curl rapidjson-dev libssl-dev pkg-config >/dev/null
fi
if [[ ! -x "${VENV}/bin/python" ]]; then
    python3 -m venv "${VENV}"
fi
"${VENV}/bin/pip" install -q confluent-kafka==2.16.2 kafka-python==3.0.12 aiokafka==0.14.0 \
    cramjam==2.14.0 lz4==4.4.5 python-snappy==0.7.3 zstandard==0.25.0
kcat -V | head -1
"${VENV}/bin/python" -c 'import confluent_kafka as c; print("confluent-kafka", c.version()[0], "librdkafka", c.libversion()[0])'
for tool in java mvn go node npm; do
    command -v "${tool}" >/dev/null || { echo "compat/setup.sh: ${tool} is missing (the client matrix needs it)"; exit 1; }
done
