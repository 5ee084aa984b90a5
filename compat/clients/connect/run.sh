#!/usr/bin/env bash
# Kafka Connect (connect-runtime, version in pom.xml) in distributed mode against a running
# Keel at $BOOTSTRAP: the worker keeps its configs, source offsets and statuses in three
# compacted internal topics it creates itself (and checks are compacted); a FileStream
# source connector reads a file into a topic and a FileStream sink connector writes that
# topic to another file. Checks, on the output:
#   1. every line of the input reaches the sink's file, in order;
#   2. after the worker restarts, lines appended to the input flow too, and the source
#      resumes from its committed offset (the topic holds each line once);
#   3. the internal topics are compacted (cleanup.policy=compact).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "${HERE}"
mvn -q -B package >/dev/null
CP="${HERE}/target/lib/*"
WORK="$(mktemp -d /tmp/keel-connect.XXXXXX)"
WORKER=""
# (set -e applies inside the trap too: every step may fail without changing the result.)
cleanup() {
    if [[ -n "${WORKER}" ]]; then kill -9 "${WORKER}" 2>/dev/null || true; fi
    rm -rf "${WORK}" || true
}
trap cleanup EXIT
PORT="$(python3 "${HERE}/../../free_ports.py")"
RUN="$(date +%s%N | tail -c 7)"
TOPIC="connect-lines-${RUN}"
cat >"${WORK}/worker.properties" <<EOF
bootstrap.servers=${BOOTSTRAP}
group.id=keel-connect-${RUN}
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.storage.StringConverter
config.storage.topic=connect-configs-${RUN}
offset.storage.topic=connect-offsets-${RUN}
status.storage.topic=connect-status-${RUN}
config.storage.replication.factor=-1
offset.storage.replication.factor=-1
status.storage.replication.factor=-1
offset.flush.interval.ms=500
listeners=http://127.0.0.1:${PORT}
rest.advertised.host.name=127.0.0.1
EOF
cat >"${WORK}/log4j2.properties" <<'EOF'
rootLogger.level=WARN
rootLogger.appenderRef.out.ref=OUT
appender.out.type=Console
appender.out.name=OUT
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
EOF

start_worker() {
    java -Xmx512m -Dlog4j2.configurationFile="${WORK}/log4j2.properties" -cp "${CP}" \
        org.apache.kafka.connect.cli.ConnectDistributed "${WORK}/worker.properties" >>"${WORK}/worker.log" 2>&1 &
    WORKER=$!
    for _ in $(seq 1 120); do
        curl -sf "http://127.0.0.1:${PORT}/connectors" >/dev/null && return 0
        kill -0 "${WORKER}" 2>/dev/null || break
        sleep 0.5
    done
    echo "FAIL: the Connect worker did not start"; tail -30 "${WORK}/worker.log"; exit 1
}

# wait_for SECONDS COMMAND...: runs COMMAND every half second until it succeeds.
wait_for() {
    local until=$((SECONDS + $1)); shift
    until "$@"; do
        [[ ${SECONDS} -lt ${until} ]] || return 1
        sleep 0.5
    done
}

running() {
    curl -sf "http://127.0.0.1:${PORT}/connectors/$1/status" | grep -q '"connector":{"state":"RUNNING".*"tasks":\[{[^]]*"state":"RUNNING"'
}

same_lines() { [[ -f "${WORK}/out.txt" ]] && cmp -s "${WORK}/in.txt" "${WORK}/out.txt"; }

seq 1 500 | sed 's/^/line /' >"${WORK}/in.txt"
start_worker
curl -sf -X POST -H 'Content-Type: application/json' "http://127.0.0.1:${PORT}/connectors" -d "{\"name\":\"src-${RUN}\",
    \"config\":{\"connector.class\":\"org.apache.kafka.connect.file.FileStreamSourceConnector\",
    \"file\":\"${WORK}/in.txt\",\"topic\":\"${TOPIC}\",\"tasks.max\":\"1\"}}" >/dev/null
curl -sf -X POST -H 'Content-Type: application/json' "http://127.0.0.1:${PORT}/connectors" -d "{\"name\":\"sink-${RUN}\",
    \"config\":{\"connector.class\":\"org.apache.kafka.connect.file.FileStreamSinkConnector\",
    \"file\":\"${WORK}/out.txt\",\"topics\":\"${TOPIC}\",\"tasks.max\":\"1\"}}" >/dev/null
wait_for 60 running "src-${RUN}" || { echo "FAIL: source connector not RUNNING"; tail -30 "${WORK}/worker.log"; exit 1; }
wait_for 60 running "sink-${RUN}" || { echo "FAIL: sink connector not RUNNING"; tail -30 "${WORK}/worker.log"; exit 1; }
echo "ok: source and sink connectors RUNNING"
wait_for 60 same_lines || { echo "FAIL: the sink wrote $(wc -l <"${WORK}/out.txt" 2>/dev/null || echo 0) of 500 lines"; exit 1; }
echo "ok: 500 lines from the source file reached the sink file, in order"

# The source commits its file position to the offsets topic; a restarted worker reads
# the configs and offsets back from the compacted topics and carries on from there.
committed() {
    local size; size="$(stat -c %s "${WORK}/in.txt")"
    curl -sf "http://127.0.0.1:${PORT}/connectors/src-${RUN}/offsets" | grep -q "\"position\":${size}[,}]" &&
        curl -sf "http://127.0.0.1:${PORT}/connectors/sink-${RUN}/offsets" | grep -q '"kafka_offset":500[,}]'
}
wait_for 30 committed || { echo "FAIL: the connectors did not commit their positions"; exit 1; }
kill -TERM "${WORKER}"; wait "${WORKER}" 2>/dev/null || true; WORKER=""
seq 501 700 | sed 's/^/line /' >>"${WORK}/in.txt"
start_worker
wait_for 90 same_lines || {
    echo "FAIL: after a restart the sink file differs from the source file ($(wc -l <"${WORK}/out.txt") lines of 700)"
    diff <(sort "${WORK}/in.txt") <(sort "${WORK}/out.txt") | head -5; exit 1; }
echo "ok: after a worker restart, 200 more lines flowed and none was read twice by the source"

for t in configs offsets status; do
    policy="$("${VENV:-/tmp/keel-compat-venv}/bin/python" - "${BOOTSTRAP}" "connect-${t}-${RUN}" <<'EOF'
import sys
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
admin = AdminClient({"bootstrap.servers": sys.argv[1]})
res = ConfigResource(ResourceType.TOPIC, sys.argv[2])
print(list(admin.describe_configs([res]).values())[0].result(30)["cleanup.policy"].value)
EOF
)"
    [[ "${policy}" == compact ]] || { echo "FAIL: connect-${t} has cleanup.policy=${policy}"; exit 1; }
done
echo "ok: the worker's three internal topics are compacted"
echo "3 passed, 0 failed"
