#!/usr/bin/env bash
# The client matrix's scenarios with Apache Kafka's Java client of version $1 (default
# 4.4.0) against $BOOTSTRAP: builds Matrix.java against that kafka-clients release with
# Maven (into target-<version>) and runs it.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VERSION="${1:-4.4.0}"
BUILD="${HERE}/target-${VERSION}"
cd "${HERE}"
mvn -q -B package -DskipTests -Dkafka.version="${VERSION}" -Dbuild.dir="${BUILD}" >/dev/null
exec java -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -cp "${BUILD}/keel-java-client-check-0.1.0.jar:${BUILD}/lib/*" keel.Matrix
