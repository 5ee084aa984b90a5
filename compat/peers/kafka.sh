#!/usr/bin/env bash
# Apache Kafka 4.x (version in compat/peers/kafka/pom.xml), one node in KRaft mode
# (broker and controller), from its Maven artifacts: the control for the client matrix,
# and the classpath of Kafka's command-line tools.
#
#   bash compat/peers/kafka.sh start DIR   # formats DIR/kafka, starts it, prints host:port
#   bash compat/peers/kafka.sh stop DIR
#   bash compat/peers/kafka.sh classpath   # builds (once) and prints the classpath
#
# Kafka's defaults are kept except what one node needs (replication factors of 1) and
# group.initial.rebalance.delay.ms=0, as Keel has no such delay. KAFKA_PROPS (lines of
# key=value) is appended to the server's properties.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
LIB="${HERE}/kafka/target/lib"

classpath() {
    if [[ ! -f "${LIB}/.complete" ]]; then
        (cd "${HERE}/kafka" && mvn -q -B package >/dev/null)
        touch "${LIB}/.complete"
    fi
    echo "${LIB}/*"
}

free_port() {
    python3 "${HERE}/../free_ports.py"
}

case "${1:-}" in
    classpath) classpath ;;
    start)
        DIR="$2"; CP="$(classpath)"
        mkdir -p "${DIR}/kafka"
        PORT="$(free_port)"; CPORT="$(free_port)"
        cat >"${DIR}/kafka/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${CPORT}
listeners=PLAINTEXT://127.0.0.1:${PORT},CONTROLLER://127.0.0.1:${CPORT}
advertised.listeners=PLAINTEXT://127.0.0.1:${PORT}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=${DIR}/kafka/logs
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
${KAFKA_PROPS:-}
PROPS
        cat >"${DIR}/kafka/log4j2.properties" <<'PROPS'
rootLogger.level=WARN
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
PROPS
        JAVA=(java -Xms256m -Xmx1g -Dlog4j2.configurationFile="${DIR}/kafka/log4j2.properties" -cp "${CP}")
        ID="$("${JAVA[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
        "${JAVA[@]}" kafka.tools.StorageTool format -t "${ID}" -c "${DIR}/kafka/server.properties" >"${DIR}/kafka/format.log" 2>&1
        "${JAVA[@]}" kafka.Kafka "${DIR}/kafka/server.properties" >"${DIR}/kafka/stdout" 2>&1 &
        echo $! >"${DIR}/kafka/pid"
        for _ in $(seq 1 300); do
            if (exec 3<>"/dev/tcp/127.0.0.1/${PORT}") 2>/dev/null; then
                echo "127.0.0.1:${PORT}"
                exit 0
            fi
            kill -0 "$(cat "${DIR}/kafka/pid")" 2>/dev/null || break
            sleep 0.2
        done
        echo "Apache Kafka did not start:" >&2; tail -20 "${DIR}/kafka/stdout" >&2
        exit 1
        ;;
    stop)
        DIR="$2"
        if [[ -f "${DIR}/kafka/pid" ]]; then
            kill "$(cat "${DIR}/kafka/pid")" 2>/dev/null || true
            for _ in $(seq 1 100); do kill -0 "$(cat "${DIR}/kafka/pid")" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$(cat "${DIR}/kafka/pid")" 2>/dev/null || true
        fi
        ;;
    *) echo "usage: $0 start DIR | stop DIR | classpath" >&2; exit 2 ;;
esac
