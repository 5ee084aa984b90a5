#!/usr/bin/env bash
# One Go client of the matrix ($1: franz-go, sarama, segmentio-kafka-go) against
# $BOOTSTRAP: builds its program (modules from the Go module proxy, pinned in go.mod and
# go.sum) and runs it.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "${HERE}"
mkdir -p bin
go build -o "bin/$1" "./$1"
exec "bin/$1"
