#!/usr/bin/env bash
# Apache Kafka's Java client (kafka-clients, version in pom.xml) against a running Keel at
# $BOOTSTRAP: builds the check with Maven (dependencies from Maven Central) and runs it.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "${HERE}"
mvn -q -B package -DskipTests >/dev/null
exec java -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -cp "${HERE}/target/keel-java-client-check-0.1.0.jar:${HERE}/target/lib/*" keel.Transactions
