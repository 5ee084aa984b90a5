#!/usr/bin/env bash
# Stands in for Apache Kafka's bin/kafka-topics.sh, which a few of librdkafka's tests run
# (through KAFKA_PATH) to create, delete and grow topics. It speaks to the broker the way
# the real script does with --bootstrap-server, over the Kafka admin API, by way of the
# `keel topic` commands; --zookeeper is taken as a broker address, since Keel has no
# ZooKeeper. Only the options those tests use are understood; anything else fails loudly.
#
#   KEEL_BIN=target/debug/keel kafka-topics.sh --bootstrap-server HOST:PORT \
#       --create --topic T --partitions 2 --replication-factor 1 [--config k=v ...]
#   ... --delete --topic T
#   ... --alter --topic T --partitions 4
set -euo pipefail
KEEL="${KEEL_BIN:-keel}"
action="" topic="" partitions="" rf="-1" bootstrap=""
configs=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --zookeeper|--bootstrap-server) bootstrap="$2"; shift 2 ;;
        --create|--delete|--alter|--list|--describe) action="${1#--}"; shift ;;
        --topic) topic="$2"; shift 2 ;;
        --partitions) partitions="$2"; shift 2 ;;
        --replication-factor) rf="$2"; shift 2 ;;
        --config) configs+=(--config "$2"); shift 2 ;;
        *) echo "kafka-topics.sh (keel): unsupported option $1" >&2; exit 2 ;;
    esac
done
[[ -n "${bootstrap}" ]] || { echo "kafka-topics.sh (keel): --bootstrap-server required" >&2; exit 2; }
case "${action}" in
    create) exec "${KEEL}" topic create "${topic}" -b "${bootstrap}" -p "${partitions:-1}" -r "${rf}" "${configs[@]}" ;;
    delete) exec "${KEEL}" topic delete "${topic}" -b "${bootstrap}" ;;
    alter)
        [[ -n "${partitions}" && ${#configs[@]} -eq 0 ]] ||
            { echo "kafka-topics.sh (keel): --alter supports --partitions only" >&2; exit 2; }
        exec "${KEEL}" topic add-partitions "${topic}" -b "${bootstrap}" -p "${partitions}" ;;
    list) exec "${KEEL}" topic list -b "${bootstrap}" ;;
    describe) exec "${KEEL}" topic describe "${topic}" -b "${bootstrap}" ;;
    *) echo "kafka-topics.sh (keel): one of --create, --delete, --alter, --list, --describe required" >&2; exit 2 ;;
esac
