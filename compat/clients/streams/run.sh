#!/usr/bin/env bash
# Kafka Streams (kafka-streams, version in pom.xml) with exactly_once_v2 against a running
# Keel at $BOOTSTRAP: builds the check with Maven (dependencies from Maven Central) and runs it.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "${HERE}"
mvn -q -B package -DskipTests >/dev/null
exec java -Dorg.slf4j.simpleLogger.defaultLogLevel=error \
    -cp "${HERE}/target/keel-streams-check-0.1.0.jar:${HERE}/target/lib/*" keel.WordCount
