#!/usr/bin/env bash
# kcat (librdkafka 2.0.2): produce N keyed messages with acks=all to a fresh topic, consume
# them back, check contiguous offsets per partition and key/value pairing.
# Assumes a broker is already listening at $BOOTSTRAP (default 127.0.0.1:9092).
set -euo pipefail
BOOTSTRAP="${BOOTSTRAP:-127.0.0.1:9092}"
N="${N:-1000}"
TOPIC="${TOPIC:-kcat-smoke-$(date +%s)-$$}"
WORK="$(mktemp -d /tmp/kcat-smoke.XXXXXX)"
trap 'rm -rf "${WORK}"' EXIT

echo "broker=${BOOTSTRAP} topic=${TOPIC} n=${N}"
kcat -b "${BOOTSTRAP}" -L -m 10 > "${WORK}/metadata.txt"            # ApiVersions + Metadata
head -3 "${WORK}/metadata.txt"

seq -f "msg-%06g" 1 "${N}" > "${WORK}/sent.txt"
# -P producer, -K: key delimiter ("k<n>:msg-..."), acks=all, wait for delivery on exit.
awk '{printf "k%d:%s\n", NR, $0}' "${WORK}/sent.txt" |
    timeout 60 kcat -P -b "${BOOTSTRAP}" -t "${TOPIC}" -K: \
        -X acks=all -X enable.idempotence=false -X message.timeout.ms=30000
echo "produced ${N}"

# -C consumer from the beginning of every partition, exit at end (-e), stop after N (-c).
timeout 60 kcat -C -b "${BOOTSTRAP}" -t "${TOPIC}" -o beginning -e -c "${N}" \
    -f '%p %o %k %s\n' > "${WORK}/got.txt"
got=$(wc -l < "${WORK}/got.txt")
echo "consumed ${got}"
awk '{print $4}' "${WORK}/got.txt" | sort > "${WORK}/got_values.txt"
sort "${WORK}/sent.txt" > "${WORK}/sent_sorted.txt"
if [[ "${got}" -ne "${N}" ]] || ! cmp -s "${WORK}/got_values.txt" "${WORK}/sent_sorted.txt"; then
    echo "FAIL: consumed set differs from produced set"; exit 1
fi
# per-partition offsets must be 0..k-1, contiguous
awk '{ if ($2 != next_off[$1]+0) { print "FAIL: partition " $1 " offset " $2 " expected " next_off[$1]+0; bad=1 } next_off[$1]=$2+1 }
     END { exit bad }' "${WORK}/got.txt"
# keys must match values (k<n> <-> msg-<n>)
awk '{ k=substr($3,2)+0; v=substr($4,5)+0; if (k!=v) { print "FAIL key/value mismatch: " $0; bad=1 } } END { exit bad }' "${WORK}/got.txt"
echo "1 passed, 0 failed"
