#!/usr/bin/env bash
# One JavaScript client of the matrix ($1: kafkajs) against
# $BOOTSTRAP: installs the pinned packages from the npm registry and runs its program.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "${HERE}"
if [[ ! -d node_modules ]] || [[ package.json -nt node_modules ]]; then
    npm install --no-audit --no-fund >/dev/null
fi
exec node "${HERE}/$1.mjs"
