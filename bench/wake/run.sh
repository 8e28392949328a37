#!/usr/bin/env bash
# Wake overhead of sleeping tenants (issue 16): see run.py. Builds the release binaries first.
#   bench/wake/run.sh [--tenants 4] [--rounds 5]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q --workspace --bins
exec python3 bench/wake/run.py "$@"
