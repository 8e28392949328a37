#!/usr/bin/env bash
# Gateway benchmark: wrk on loopback against the same upstream (nginx serving a small static
# answer, like Grafana's /api/health), three ways in one run:
#   direct  — wrk → upstream
#   nginx   — wrk → nginx (Debian's package) as a plain reverse proxy with keep-alive → upstream
#   floor   — wrk → a bare hyper proxy on the gateway's own pieces, doing nothing else
#             (examples/proxy_floor.rs): what pug's HTTP stack costs before any of pug's work
#   pug     — wrk → pug's gateway (1,000 tenants registered, signed-in session) → upstream
# 64 connections, 20 s each (DURATION, CONNECTIONS, TENANTS override). Prints a table.
#
#   bench/gateway/run.sh
#
# Needs: nginx and wrk (apt-get install nginx wrk), cargo.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
TENANTS=${TENANTS:-1000}
UP_PORT=${UP_PORT:-18090}
NGINX_PORT=${NGINX_PORT:-18091}
PUG_PORT=${PUG_PORT:-18092}
FLOOR_PORT=${FLOOR_PORT:-18093}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
WRK=${WRK:-$(command -v wrk || echo /usr/bin/wrk)}

[ -x "$NGINX" ] || { echo "nginx not found: apt-get install nginx" >&2; exit 1; }
[ -x "$WRK" ] || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "building the gateway benchmark server (release)…" >&2
cargo build --release -q -p pug-gateway --example gateway_bench --example proxy_floor
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bench_bin="$target_dir/release/examples/gateway_bench"
floor_bin="$target_dir/release/examples/proxy_floor"

. bench/gateway/nginx.sh
start_upstream_and_nginx

"$bench_bin" --upstream "127.0.0.1:$UP_PORT" --listen "127.0.0.1:$PUG_PORT" --tenants "$TENANTS" > "$work/pug.out" 2> "$work/pug.err" &
pug_pid=$!
pids+=($pug_pid)
for _ in $(seq 1 600); do
  grep -q '^ready' "$work/pug.out" 2>/dev/null && break
  sleep 0.1
done
grep -q '^ready' "$work/pug.out" || { echo "the gateway did not start:" >&2; cat "$work/pug.err" >&2; exit 1; }
cookie=$(sed -n 's/^cookie=//p' "$work/pug.out")
"$floor_bin" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$UP_PORT" > "$work/floor.out" 2> "$work/floor.err" &
floor_pid=$!
pids+=($floor_pid)
for port in $UP_PORT $NGINX_PORT $FLOOR_PORT; do
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break
    sleep 0.1
  done
done

path="/t/t0500/api/health"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $cookie" "http://127.0.0.1:$PUG_PORT$path")
[ "$code" = 200 ] || { echo "pug answered $code for $path" >&2; exit 1; }

# "12.34us" / "1.20ms" / "1.01s" → milliseconds
to_ms() { awk -v v="$1" 'BEGIN {
  if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
  else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
  else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
  else print v }'; }

# CPU seconds (user, system) used so far by the processes in $@ (a proxy's workers).
cpu_of() { # pid...
  local tick; tick=$(getconf CLK_TCK)
  for p in "$@"; do cat "/proc/$p/stat"; done 2>/dev/null |
    awk -v t="$tick" '{ u += $14; s += $15 } END { printf "%f %f", u / t, s / t }'
}
nginx_workers() { pgrep -P "$(cat "$work/$1/nginx.pid")" | tr '\n' ' '; }

run() { # name url pids [header]: pids are the proxy's processes ("" for none)
  local name=$1 url=$2 procs=$3; shift 3
  "$WRK" -t"$THREADS" -c"$CONNECTIONS" -d2s "$@" "$url" > /dev/null # warm-up
  local before after
  # shellcheck disable=SC2086
  before=$(cpu_of $procs)
  "$WRK" -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" > "$work/$name.wrk"
  # shellcheck disable=SC2086
  after=$(cpu_of $procs)
  local rps p50 p99 errors requests cpu
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/$name.wrk")
  p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$work/$name.wrk")")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$work/$name.wrk")")
  requests=$(awk '/requests in/ {print $1}' "$work/$name.wrk")
  # The proxy's own CPU per request, user + system, in microseconds.
  cpu=$(awk -v b="$before" -v a="$after" -v n="$requests" 'BEGIN {
    split(b, x, " "); split(a, y, " ");
    if (n > 0 && a != "0.000000 0.000000") printf "%.1f+%.1f", (y[1] - x[1]) * 1e6 / n, (y[2] - x[2]) * 1e6 / n; else print "-" }')
  errors=$(awk '/Non-2xx|Socket errors/ {print}' "$work/$name.wrk" | tr '\n' ' ')
  printf '%s %s %s %s %s\n' "$name" "$rps" "$p50" "$p99" "$cpu" >> "$work/results"
  [ -z "$errors" ] || echo "$name: $errors" >&2
}

run direct "http://127.0.0.1:$UP_PORT$path" ""
run nginx "http://127.0.0.1:$NGINX_PORT$path" "$(nginx_workers proxy)"
run floor "http://127.0.0.1:$FLOOR_PORT$path" "$floor_pid"
run pug "http://127.0.0.1:$PUG_PORT$path" "$pug_pid" -H "Cookie: $cookie"

echo
echo "gateway benchmark: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, GET $path, $TENANTS tenants in pug, $(nproc) cores"
printf '| %-8s | %12s | %9s | %9s | %27s |\n' target "requests/s" "p50 (ms)" "p99 (ms)" "proxy CPU/request user+sys (µs)"
printf '|%s|%s|%s|%s|%s|\n' ---------- -------------- ----------- ----------- -----------------------------
while read -r name rps p50 p99 cpu; do
  printf '| %-8s | %12s | %9s | %9s | %27s |\n' "$name" "$rps" "$p50" "$p99" "$cpu"
done < "$work/results"
awk '$1 == "nginx" {nr = $2; n99 = $4} $1 == "pug" {pr = $2; p99 = $4}
  END { printf "\npug vs nginx: %.2fx requests/s (target >= 1.00), p99 %.2fx (target <= 1.10)\n", pr / nr, p99 / n99 }' "$work/results"
