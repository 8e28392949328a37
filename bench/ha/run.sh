#!/usr/bin/env bash
# Controller replicas on one PostgreSQL (issue 18): N tenants (default 200) to ready with one,
# two and three pug controllers sharing the store and one in-memory orchestrator whose every
# operation takes 5 ms; and the takeover time after a pug holding leases is killed without
# giving anything back (its tasks aborted: what kill -9 does), with the default lease.
# Prints a Markdown table. Needs PostgreSQL (PUG_TEST_POSTGRES_URL, default the `pugtest` role
# `.ci/run` creates).
#
# Usage: bench/ha/run.sh [TENANTS] [KILLS]
set -euo pipefail
cd "$(dirname "$0")/../.."
HA_TENANTS="${1:-200}" HA_KILLS="${2:-5}" exec cargo nextest run --workspace \
  -E 'test(bench_ha)' --run-ignored ignored-only --no-capture 2>&1 | grep '^|'
