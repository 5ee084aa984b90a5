#!/usr/bin/env bash
# Kafka Streams (kafka-streams, version in pom.xml) against a running Keel at $BOOTSTRAP:
# an exactly_once_v2 word count (WordCount.java), then an at_least_once windowed join and
# windowed count (WindowedJoin.java). Builds them with Maven (dependencies from Maven
# Central) and runs them.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "${HERE}"
mvn -q -B package -DskipTests >/dev/null
for check in WordCount WindowedJoin; do
    java -Dorg.slf4j.simpleLogger.defaultLogLevel=error \
        -cp "${HERE}/target/keel-streams-check-0.1.0.jar:${HERE}/target/lib/*" "keel.${check}"
done
