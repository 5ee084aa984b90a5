#!/usr/bin/env bash
# Apache Kafka's own command-line tools (kafka-tools 4.x from Maven Central, the classes
# behind bin/kafka-*.sh) against a three-node Keel cluster (`keel dev`): each check runs
# one tool as an operator would and looks for what the tool prints when it worked.
#
#   bash compat/tools/run.sh [KEEL]       # KEEL defaults to target/debug/keel
#
# Prints "ok: NAME" or "FAIL: NAME" with the tool's output, then "N passed, M failed".
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "${HERE}/../.." && pwd)"
KEEL="${1:-${ROOT}/target/debug/keel}"
CP="$(bash "${ROOT}/compat/peers/kafka.sh" classpath)" || { echo "could not build Kafka's classpath"; exit 1; }
WORK="$(mktemp -d /tmp/keel-tools.XXXXXX)"
DEV_PID=""
cleanup() { [[ -n "${DEV_PID}" ]] && kill -INT "${DEV_PID}" 2>/dev/null && sleep 1; pkill -9 -f "${WORK}/dev" 2>/dev/null; rm -rf "${WORK}"; }
trap cleanup EXIT

# A base port with base..base+2, +100 and +200 free (keel dev's layout).
BASE="$(python3 "${ROOT}/compat/free_base_port.py")"
"${KEEL}" dev --nodes 3 --base-port "${BASE}" --data-dir "${WORK}/dev" >"${WORK}/dev.log" 2>&1 &
DEV_PID=$!
B="127.0.0.1:${BASE},127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2))"
cat >"${WORK}/log4j2.properties" <<'EOF'
rootLogger.level=ERROR
rootLogger.appenderRef.stderr.ref=STDERR
appender.stderr.type=Console
appender.stderr.name=STDERR
appender.stderr.target=SYSTEM_ERR
appender.stderr.layout.type=PatternLayout
appender.stderr.layout.pattern=%p %m%n
EOF

tool() {
    local cls="$1"; shift
    timeout 120 java -Xmx512m -Dlog4j2.configurationFile="${WORK}/log4j2.properties" -cp "${CP}" "${cls}" "$@"
}

pass=0; fail=0
# check NAME PATTERN COMMAND...: passes when the command's output matches PATTERN.
check() {
    local name="$1" pattern="$2"; shift 2
    local out
    out="$("$@" 2>&1)"
    if grep -qE -- "${pattern}" <<<"${out}"; then
        pass=$((pass + 1)); echo "ok: ${name}"
    else
        fail=$((fail + 1)); echo "FAIL: ${name} (wanted /${pattern}/)"; echo "${out}" | tail -15 | sed 's/^/    /'
    fi
}
# succeeds NAME COMMAND...: passes when the command exits 0.
succeeds() {
    local name="$1"; shift
    local out
    if out="$("$@" 2>&1)"; then
        pass=$((pass + 1)); echo "ok: ${name}"
    else
        fail=$((fail + 1)); echo "FAIL: ${name} (exit status $?)"; echo "${out}" | tail -15 | sed 's/^/    /'
    fi
}
# eventually NAME PATTERN COMMAND...: as check, retried for up to 30 s (state that
# settles after the command that changed it returned).
eventually() {
    local name="$1" pattern="$2"; shift 2
    local out deadline=$((SECONDS + 30))
    while :; do
        out="$("$@" 2>&1)"
        if grep -qE -- "${pattern}" <<<"${out}"; then
            pass=$((pass + 1)); echo "ok: ${name}"; return
        fi
        if [[ ${SECONDS} -ge ${deadline} ]]; then
            fail=$((fail + 1)); echo "FAIL: ${name} (wanted /${pattern}/)"; echo "${out}" | tail -15 | sed 's/^/    /'; return
        fi
        sleep 1
    done
}

T=org.apache.kafka.tools
eventually "cluster up (kafka-broker-api-versions sees three nodes)" "(127\.0\.0\.1:[0-9]+ \(id: [123] .*){3}" \
    bash -c "$(declare -f tool); WORK='${WORK}' CP='${CP}'; tool ${T}.BrokerApiVersionsCommand --bootstrap-server ${B} | tr '\n' ' '"

echo "== kafka-topics"
check "kafka-topics --create" "Created topic tools-t" tool ${T}.TopicCommand --bootstrap-server "${B}" --create --topic tools-t --partitions 3 --replication-factor 3
check "kafka-topics --list" "^tools-t$" tool ${T}.TopicCommand --bootstrap-server "${B}" --list
eventually "kafka-topics --describe (3 partitions, 3 replicas, leaders)" "PartitionCount: 3.*ReplicationFactor: 3.*(Partition: [0-2].*Leader: [1-3].*Replicas: [1-3],[1-3],[1-3].*){3}" \
    bash -c "$(declare -f tool); WORK='${WORK}' CP='${CP}'; tool ${T}.TopicCommand --bootstrap-server ${B} --describe --topic tools-t | tr '\n' ' '"
succeeds "kafka-topics --alter --partitions 4" tool ${T}.TopicCommand --bootstrap-server "${B}" --alter --topic tools-t --partitions 4
eventually "kafka-topics --describe after --alter" "PartitionCount: 4" tool ${T}.TopicCommand --bootstrap-server "${B}" --describe --topic tools-t

echo "== kafka-configs"
check "kafka-configs --alter topic" "Completed updating config for topic tools-t" tool ${T}.ConfigCommand --bootstrap-server "${B}" --entity-type topics --entity-name tools-t --alter --add-config retention.ms=3600000,cleanup.policy=delete
eventually "kafka-configs --describe topic" "retention.ms=3600000" tool ${T}.ConfigCommand --bootstrap-server "${B}" --entity-type topics --entity-name tools-t --describe
check "kafka-configs --describe broker --all (Kafka's broker config names)" "^all-found$" \
    bash -c "$(declare -f tool); WORK='${WORK}' CP='${CP}'; out=\$(tool ${T}.ConfigCommand --bootstrap-server ${B} --entity-type brokers --entity-name 1 --describe --all)
        for name in 'node.id=1' 'num.partitions=' 'log.retention.ms=' 'advertised.listeners=PLAINTEXT://127.0.0.1:${BASE}' 'unclean.leader.election.enable=false' 'log.cleaner.enable=true'; do
            grep -qF \"\$name\" <<<\"\$out\" || { echo \"missing \$name\"; echo \"\$out\"; exit 0; }
        done; echo all-found"

echo "== console producer and consumer, consumer groups"
seq 1 50 | sed 's/^/key-&:value-&/' >"${WORK}/records"
succeeds "kafka-console-producer (keys, acks=all)" bash -c "$(declare -f tool); WORK='${WORK}' CP='${CP}'; tool ${T}.ConsoleProducer --bootstrap-server ${B} --topic tools-t --property parse.key=true --property key.separator=: --producer-property acks=all <'${WORK}/records'"
tool ${T}.consumer.ConsoleConsumer --bootstrap-server "${B}" --topic tools-t --from-beginning --max-messages 50 \
    --timeout-ms 60000 --group tools-g --property print.key=true >"${WORK}/consumed" 2>/dev/null
check "kafka-console-consumer --group (the 50 records, each with its key)" "^50$" \
    bash -c "sed 's/\t/:/' '${WORK}/consumed' | sort | comm -12 - <(sort '${WORK}/records') | wc -l"
check "kafka-consumer-groups --list" "^tools-g$" tool ${T}.consumer.group.ConsumerGroupCommand --bootstrap-server "${B}" --list
# Kafka 4's console producer sends these keyed lines to one partition (Apache Kafka's own
# broker shows the same), and the console consumer commits a position only for the
# partitions it had one for when it stopped: every row listed has lag 0, and the rows
# cover the 50 records.
check "kafka-consumer-groups --describe (lag 0 on every partition, the 50 records committed)" "^lag-0 50$" \
    bash -c "$(declare -f tool); WORK='${WORK}' CP='${CP}'; tool ${T}.consumer.group.ConsumerGroupCommand --bootstrap-server ${B} --describe --group tools-g \
        | awk '\$1 == \"tools-g\" && \$2 == \"tools-t\" { rows++; sum += \$4; if (\$6 != 0) bad++ } END { if (rows > 0 && !bad) print \"lag-0\", sum; else print \"rows\", rows, \"lagging\", bad }'"
check "kafka-consumer-groups --reset-offsets --to-earliest --execute" "(tools-g +tools-t +[0-3] +0 .*){4}" \
    bash -c "$(declare -f tool); WORK='${WORK}' CP='${CP}'; tool ${T}.consumer.group.ConsumerGroupCommand --bootstrap-server ${B} --reset-offsets --group tools-g --topic tools-t --to-earliest --execute | tr '\n' ' '"
check "kafka-get-offsets (latest offsets sum to 50)" "^50$" \
    bash -c "$(declare -f tool); WORK='${WORK}' CP='${CP}'; tool ${T}.GetOffsetShell --bootstrap-server ${B} --topic tools-t | awk -F: '{ s += \$3 } END { print s }'"

echo "== kafka-delete-records, kafka-log-dirs"
P0="$(tool ${T}.GetOffsetShell --bootstrap-server "${B}" --topic tools-t --partitions 0 2>/dev/null | awk -F: '{ print $3 }')"
echo "{\"version\":1,\"partitions\":[{\"topic\":\"tools-t\",\"partition\":0,\"offset\":1}]}" >"${WORK}/delete.json"
if [[ "${P0:-0}" -ge 1 ]]; then
    check "kafka-delete-records (low watermark 1)" "low_watermark: 1" tool ${T}.DeleteRecordsCommand --bootstrap-server "${B}" --offset-json-file "${WORK}/delete.json"
    check "kafka-get-offsets --time earliest after delete" "^tools-t:0:1$" tool ${T}.GetOffsetShell --bootstrap-server "${B}" --topic tools-t --partitions 0 --time earliest
else
    fail=$((fail + 1)); echo "FAIL: kafka-delete-records (partition 0 holds no records: ${P0})"
fi
check "kafka-log-dirs --describe (every replica of tools-t on three brokers)" '"broker":1.*"broker":2.*"broker":3|("partition":"tools-t-[0-3]".*){12}' \
    bash -c "$(declare -f tool); WORK='${WORK}' CP='${CP}'; tool ${T}.LogDirsCommand --bootstrap-server ${B} --describe --topic-list tools-t | tr '\n' ' '"

echo "== kafka-reassign-partitions, kafka-leader-election"
# Moves partition 0's preferred replica (the first of its list) to another node, then asks
# for a preferred leader election and checks that node leads.
LEADER="$(tool ${T}.TopicCommand --bootstrap-server "${B}" --describe --topic tools-t 2>/dev/null | sed -nE 's/.*Partition: 0\s+Leader: ([0-9]+).*/\1/p')"
NEW=$(( LEADER % 3 + 1 )); THIRD=$(( NEW % 3 + 1 ))
echo "{\"version\":1,\"partitions\":[{\"topic\":\"tools-t\",\"partition\":0,\"replicas\":[${NEW},${THIRD},${LEADER}]}]}" >"${WORK}/reassign.json"
check "kafka-reassign-partitions --execute" "Successfully started partition reassignment" tool ${T}.reassign.ReassignPartitionsCommand --bootstrap-server "${B}" --reassignment-json-file "${WORK}/reassign.json" --execute
eventually "kafka-reassign-partitions --verify" "Reassignment of partition tools-t-0 is complete" tool ${T}.reassign.ReassignPartitionsCommand --bootstrap-server "${B}" --reassignment-json-file "${WORK}/reassign.json" --verify
check "kafka-leader-election --election-type preferred" "Successfully completed leader election \(PREFERRED\) for partitions tools-t-0|Valid replica already elected for partitions tools-t-0" tool ${T}.LeaderElectionCommand --bootstrap-server "${B}" --election-type preferred --topic tools-t --partition 0
eventually "the preferred replica leads partition 0" "Partition: 0\s+Leader: ${NEW}\s+Replicas: ${NEW},${THIRD},${LEADER}" tool ${T}.TopicCommand --bootstrap-server "${B}" --describe --topic tools-t
succeeds "kafka-leader-election --all-topic-partitions" tool ${T}.LeaderElectionCommand --bootstrap-server "${B}" --election-type preferred --all-topic-partitions

echo "== perf tests, transactions, metadata quorum"
check "kafka-producer-perf-test (20000 records, acks=all)" "^20000 records sent" tool ${T}.ProducerPerformance --topic tools-perf --num-records 20000 --record-size 100 --throughput -1 --producer-props bootstrap.servers="${B}" acks=all
check "kafka-consumer-perf-test (20000 records)" ", 20000, " tool ${T}.ConsumerPerformance --bootstrap-server "${B}" --topic tools-perf --messages 20000 --timeout 60000
check "kafka-transactions describe-producers (the perf test's idempotent producer, last sequence 19999)" "ProducerId.*ProducerEpoch.*LastSequence.*CurrentTransactionStartOffset.*[0-9]+[[:space:]]+[0-9]+[[:space:]]+-1[[:space:]]+19999[[:space:]]" \
    bash -c "$(declare -f tool); WORK='${WORK}' CP='${CP}'; tool ${T}.TransactionsCommand --bootstrap-server ${B} describe-producers --topic tools-perf --partition 0 | tr '\n' ' '"
check "kafka-transactions list" "TransactionalId" tool ${T}.TransactionsCommand --bootstrap-server "${B}" list
check "kafka-metadata-quorum describe --status" "LeaderId: +[1-3].*CurrentVoters: +\[" \
    bash -c "$(declare -f tool); WORK='${WORK}' CP='${CP}'; tool ${T}.MetadataQuorumCommand --bootstrap-server ${B} describe --status | tr '\n' ' '"
eventually "kafka-metadata-quorum describe --replication (three voters, none lagging)" "(([1-3])[[:space:]]+[A-Za-z0-9_-]+[[:space:]]+[0-9]+[[:space:]]+0[[:space:]]+[0-9]+[[:space:]]+[0-9]+[[:space:]]+(Leader|Follower).*){3}" \
    bash -c "$(declare -f tool); WORK='${WORK}' CP='${CP}'; tool ${T}.MetadataQuorumCommand --bootstrap-server ${B} describe --replication | tr '\n' ' '"

# KIP-853: take the controller's leader out of its voters with Kafka's tool (Keel reports
# the zero directory id): it hands the leadership to a voter, and the tool, which expects
# the leader among the voters, describes the new quorum. Then put it back with `keel
# cluster add-voter`.
LEADER="$(tool ${T}.MetadataQuorumCommand --bootstrap-server "${B}" describe --status 2>/dev/null | awk '$1 == "LeaderId:" {print $2}')"
if [[ ! "${LEADER}" =~ ^[1-3]$ ]]; then
    fail=$((fail + 1)); echo "FAIL: the controller's leader from kafka-metadata-quorum describe --status (got '${LEADER}'); removing node 3"
    LEADER=3
fi
# The nodes in id order, the removed one an observer, the others voters.
WANT="$(for n in 1 2 3; do if [[ ${n} == "${LEADER}" ]]; then echo Observer; else echo Voter; fi; done | paste -sd,)"
check "kafka-metadata-quorum remove-controller --controller-id ${LEADER} (the leader)" "Removed KRaft controller ${LEADER}" \
    tool ${T}.MetadataQuorumCommand --bootstrap-server "${B}" remove-controller --controller-id "${LEADER}" --controller-directory-id AAAAAAAAAAAAAAAAAAAAAA
eventually "kafka-metadata-quorum describe --replication (node ${LEADER} an observer, the others voters)" "^${WANT}$" \
    bash -c "$(declare -f tool); WORK='${WORK}' CP='${CP}'; tool ${T}.MetadataQuorumCommand --bootstrap-server ${B} describe --replication | awk 'NR > 1 && \$1 ~ /^[1-3]\$/ {print \$1, \$NF}' | sort | awk '{print \$2}' | sed 's/Leader/Voter/; s/Follower/Voter/' | paste -sd,"
check "keel cluster add-voter --node ${LEADER}" "node ${LEADER} is a controller voter" "${KEEL}" cluster add-voter --bootstrap "${B}" --node "${LEADER}"
eventually "kafka-metadata-quorum describe --replication (three voters again)" "^Voter,Voter,Voter$" \
    bash -c "$(declare -f tool); WORK='${WORK}' CP='${CP}'; tool ${T}.MetadataQuorumCommand --bootstrap-server ${B} describe --replication | awk 'NR > 1 && \$1 ~ /^[1-3]\$/ {print \$1, \$NF}' | sort | awk '{print \$2}' | sed 's/Leader/Voter/; s/Follower/Voter/' | paste -sd,"

echo "== kafka-topics --delete"
succeeds "kafka-topics --delete" tool ${T}.TopicCommand --bootstrap-server "${B}" --delete --topic tools-t
eventually "deleted topic no longer listed" "^0$" bash -c "$(declare -f tool); WORK='${WORK}' CP='${CP}'; tool ${T}.TopicCommand --bootstrap-server ${B} --list | grep -c '^tools-t$'"

if [[ ${fail} -ne 0 ]]; then
    echo "--- keel dev log (last 20 lines)"; tail -20 "${WORK}/dev.log"
fi
echo "${pass} passed, ${fail} failed"
[[ ${fail} -eq 0 ]]
