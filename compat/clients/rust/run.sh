#!/usr/bin/env bash
# The Rust client of the matrix: the rdkafka crate (librdkafka, built by rdkafka-sys), as
# the example crates/keel/examples/rdkafka_matrix.rs, against $BOOTSTRAP.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
cd "${ROOT}"
cargo build -q --example rdkafka_matrix -p keel
exec "${ROOT}/target/debug/examples/rdkafka_matrix"
