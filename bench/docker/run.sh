#!/usr/bin/env bash
# Docker backend benchmark: N tenants (default 50) on the local engine with the operation limit L
# (default 8): time from empty to all ready, time to recover after every container is removed,
# peak concurrent container operations. Prints a Markdown table. See README.md.
#
# Usage: bench/docker/run.sh [TENANTS] [MAX_CONCURRENT_OPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
docker info >/dev/null 2>&1 || { echo "no Docker engine reachable; start Docker or set DOCKER_HOST" >&2; exit 1; }
for v in 11.3.0 11.4.0 11.5.0-broken; do
  docker image inspect "pug-test/grafana:$v" >/dev/null 2>&1 || { crates/pug-docker/tests/images/build.sh; break; }
done
exec cargo run -q -p pug-docker --example bench_docker -- "${1:-50}" "${2:-8}"
