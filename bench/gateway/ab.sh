#!/usr/bin/env bash
# A/B of two builds of the gateway benchmark server in one run, for changes too small for the
# run-to-run noise of run.sh (±5%): both serve side by side against the same upstream, and wrk
# measures them in alternating rounds, nginx as the reference in each round.
#
#   cp target/release/examples/gateway_bench /tmp/gb_old     # before the change
#   cp target/release/examples/gateway_bench /tmp/gb_new     # after it
#   bench/gateway/ab.sh /tmp/gb_old /tmp/gb_new              # ROUNDS=3 DURATION=8s
#
# Prints requests/s and the server's total CPU (user + system) per request for each round.
# Needs: nginx and wrk (apt-get install nginx wrk).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_GATEWAY_BENCH NEW_GATEWAY_BENCH" >&2; exit 2; }
old_bin=$1 new_bin=$2
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
UP_PORT=18090 NGINX_PORT=18091 OLD_PORT=18094 NEW_PORT=18095
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
[ -x "$NGINX" ] || { echo "nginx not found: apt-get install nginx" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

. "$(cd "$(dirname "$0")" && pwd)/nginx.sh"
start_upstream_and_nginx

start() { # name bin port
  "$2" --upstream "127.0.0.1:$UP_PORT" --listen "127.0.0.1:$3" --tenants 1000 > "$work/$1.out" 2> "$work/$1.err" &
  pids+=($!)
  echo $! > "$work/$1.pid"
}
start old "$old_bin" $OLD_PORT
start new "$new_bin" $NEW_PORT
for name in old new; do
  for _ in $(seq 1 600); do
    grep -q '^ready' "$work/$name.out" 2>/dev/null && break
    sleep 0.1
  done
  grep -q '^ready' "$work/$name.out" || { echo "$name did not start:" >&2; cat "$work/$name.err" >&2; exit 1; }
done

path=/t/t0500/api/health
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
measure() { # name port pid [wrk args]
  local name=$1 port=$2 pid=$3; shift 3
  local before after
  [ -z "$pid" ] || before=$(cpu_ticks "$pid")
  wrk -t2 -c64 -d"$DURATION" "$@" "http://127.0.0.1:$port$path" > "$work/wrk"
  [ -z "$pid" ] || after=$(cpu_ticks "$pid")
  local rps requests cpu=-
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$work/wrk")
  requests=$(awk '/requests in/ { print $1 }' "$work/wrk")
  if [ -n "$pid" ]; then
    cpu=$(awk -v b="$before" -v a="$after" -v n="$requests" -v hz="$(getconf CLK_TCK)" \
      'BEGIN { printf "%.2f", (a - b) / hz * 1e6 / n }')
  fi
  printf '| %5s | %-5s | %12s | %22s |\n' "$round" "$name" "$rps" "$cpu"
}

old_cookie=$(sed -n 's/^cookie=//p' "$work/old.out")
new_cookie=$(sed -n 's/^cookie=//p' "$work/new.out")
# Warm-up: connections, pools and caches.
round=0
for port in $OLD_PORT $NEW_PORT; do
  cookie=$([ $port = $OLD_PORT ] && echo "$old_cookie" || echo "$new_cookie")
  wrk -t2 -c64 -d2s -H "Cookie: $cookie" "http://127.0.0.1:$port$path" > /dev/null
done
printf '| round | build | requests/s | server CPU/request (µs) |\n|---|---|---|---|\n'
for round in $(seq 1 "$ROUNDS"); do
  measure old $OLD_PORT "$(cat "$work/old.pid")" -H "Cookie: $old_cookie"
  measure new $NEW_PORT "$(cat "$work/new.pid")" -H "Cookie: $new_cookie"
  measure nginx $NGINX_PORT ""
done
