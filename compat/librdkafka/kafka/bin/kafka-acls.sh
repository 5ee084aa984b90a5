#!/usr/bin/env bash
# Apache Kafka's bin/kafka-acls.sh, which librdkafka's ACL tests run (through KAFKA_PATH):
# Kafka 4.4's own AclCommand (org.apache.kafka.tools.AclCommand, from the Maven artifacts
# compat/peers/kafka.sh fetches), with the arguments the test gives, against Keel's
# CreateAcls, DescribeAcls and DeleteAcls.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../../.." && pwd)"
CP="$(bash "${ROOT}/compat/peers/kafka.sh" classpath)"
LOG4J="$(mktemp /tmp/keel-acls-log4j.XXXXXX)"
trap 'rm -f "${LOG4J}"' EXIT
printf 'rootLogger.level=ERROR\nrootLogger.appenderRef.stderr.ref=STDERR\nappender.stderr.type=Console\nappender.stderr.name=STDERR\nappender.stderr.target=SYSTEM_ERR\nappender.stderr.layout.type=PatternLayout\nappender.stderr.layout.pattern=%%p %%m%%n\n' > "${LOG4J}"
exec timeout 120 java -Xmx256m -Dlog4j2.configurationFile="${LOG4J}" -cp "${CP}" org.apache.kafka.tools.AclCommand "$@"
