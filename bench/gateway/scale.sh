#!/usr/bin/env bash
# Does the gateway's request path cost more with more registered tenants? Two gateway benchmark
# servers side by side against one upstream: SMALL with --tenants ($AWAKE) registered, all
# ready, BIG with the same tenants plus --sleeping ($SLEEPING) more, asleep and not the user's;
# both take their routes from a 1 s status snapshot as `pug serve` does. wrk requests the same
# awake tenants' paths (spread over all of them, as bench/wake/scale.py does) in alternating
# rounds, and each round prints requests/s, p50/p99 and the server's CPU per request: its
# request threads (pug-http-*) and everything else apart.
#
#   bench/gateway/scale.sh [GATEWAY_BENCH]     # ROUNDS=3 DURATION=10s CONNECTIONS=4 AWAKE=500 SLEEPING=9500
#
# POLL_ALL=1: the snapshot poller reads every status every second, as pug-server's did before
# the store's status version (default: only when the version moved).
#
# GATEWAY_BENCH defaults to target/release/examples/gateway_bench (cargo build --release
# -p pug-gateway --example gateway_bench). Needs: nginx and wrk.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/release/examples/gateway_bench}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-4}
AWAKE=${AWAKE:-500}
SLEEPING=${SLEEPING:-9500}
# The upstream listens on $AWAKE ports from UP_PORT (every tenant its own instance, as in pug).
UP_PORT=${UP_PORT:-21000} SMALL_PORT=18096 BIG_PORT=18097
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
[ -x "$NGINX" ] || { echo "nginx not found: apt-get install nginx" >&2; exit 1; }
[ -x "$bin" ] || { echo "$bin not found: cargo build --release -p pug-gateway --example gateway_bench" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

. bench/gateway/nginx.sh
listens=$(for i in $(seq 0 $((AWAKE - 1))); do printf 'listen 127.0.0.1:%d; ' $((UP_PORT + i)); done)
nginx_conf upstream "server {
    $listens
    location / {
      default_type application/json;
      return 200 '{\"database\":\"ok\",\"version\":\"11.3.0\",\"commit\":\"bench\"}';
    }
  }"

start() { # name port extra-args…
  local name=$1 port=$2; shift 2
  "$bin" --upstream "127.0.0.1:$UP_PORT" --listen "127.0.0.1:$port" --tenants "$AWAKE" --upstream-ports "$AWAKE" --snapshot 1 --poll-all "${POLL_ALL:-0}" "$@" \
    > "$work/$name.out" 2> "$work/$name.err" &
  pids+=($!)
  echo $! > "$work/$name.pid"
}
start small $SMALL_PORT
start big $BIG_PORT --sleeping "$SLEEPING"
for name in small big; do
  for _ in $(seq 1 3000); do
    grep -q '^ready' "$work/$name.out" 2>/dev/null && break
    sleep 0.1
  done
  grep -q '^ready' "$work/$name.out" || { echo "$name did not start:" >&2; cat "$work/$name.err" >&2; exit 1; }
done

lua=$work/paths.lua
{
  printf 'local paths = {'
  for i in $(seq 0 $((AWAKE - 1))); do printf '"/t/t%04d/api/health",' "$i"; done
  echo '}'
  cat <<'LUA'
local n = 0
local tid = 0
function setup(thread) tid = tid + 1; thread:set("off", tid * 7919) end
function init(args) n = off end
function request() n = n + 1; return wrk.format("GET", paths[(n % #paths) + 1]) end
function done(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d\n", latency:percentile(50), latency:percentile(99),
    summary.requests, summary.duration, summary.errors.status))
end
LUA
} > "$lua"

# CPU ticks (utime + stime) of pid's threads: "<request threads> <the rest>".
ticks() {
  local http=0 rest=0 t comm u s
  for t in /proc/"$1"/task/*; do
    comm=$(cat "$t/comm" 2>/dev/null) || continue
    read -r u s < <(awk '{ sub(/^.*\) /, ""); print $12, $13 }' "$t/stat" 2>/dev/null) || continue
    if [[ $comm == pug-http-* ]]; then http=$((http + u + s)); else rest=$((rest + u + s)); fi
  done
  echo "$http $rest"
}
hz=$(getconf CLK_TCK)
measure() { # name port
  local name=$1 port=$2 pid before after out
  pid=$(cat "$work/$name.pid")
  local cookie; cookie=$(sed -n 's/^cookie=//p' "$work/$name.out")
  wrk -t2 -c"$CONNECTIONS" -d2s -H "Cookie: $cookie" -s "$lua" "http://127.0.0.1:$port" > /dev/null
  before=$(ticks "$pid")
  out=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" -H "Cookie: $cookie" -s "$lua" --timeout 10s "http://127.0.0.1:$port")
  after=$(ticks "$pid")
  echo "$out" | awk -v name="$name" -v b="$before" -v a="$after" -v hz="$hz" '/^RESULT/ {
    split(b, x, " "); split(a, y, " "); n = $4
    printf "| %-5s | %8.0f | %5.2f | %5.2f | %6.1f | %6.1f | %d |\n", name, n / ($5 / 1e6), $2 / 1000, $3 / 1000,
      (y[1] - x[1]) / hz * 1e6 / n, (y[2] - x[2]) / hz * 1e6 / n, $6 }'
}

echo "gateway scale (POLL_ALL=${POLL_ALL:-0}): $AWAKE awake tenants (small) vs the same + $SLEEPING asleep (big); wrk -t2 -c$CONNECTIONS -d$DURATION over the awake ones; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| server | requests/s | p50 ms | p99 ms | request threads µs/req | other threads µs/req | non-2xx |"
echo "|---|---|---|---|---|---|---|"
for r in $(seq 1 "$ROUNDS"); do
  measure small $SMALL_PORT
  measure big $BIG_PORT
done
echo "RSS: small $(awk '/VmRSS/ {print $2}' /proc/"$(cat "$work/small.pid")"/status) KiB, big $(awk '/VmRSS/ {print $2}' /proc/"$(cat "$work/big.pid")"/status) KiB"
if [ -n "${PERF:-}" ]; then
  # perf record -g of BIG's request threads under the same load, for $PERF seconds.
  cookie=$(sed -n 's/^cookie=//p' "$work/big.out")
  wrk -t2 -c"$CONNECTIONS" -d"$((PERF + 2))s" -H "Cookie: $cookie" -s "$lua" "http://127.0.0.1:$BIG_PORT" > /dev/null &
  load=$!
  sleep 1
  perf record -F 999 -g -o "${PERF_OUT:-/tmp/gw-scale.perf}" -p "$(cat "$work/big.pid")" -- sleep "$PERF" 2> /dev/null
  wait "$load" # (a bare wait would wait for the servers too)
  echo "perf data: ${PERF_OUT:-/tmp/gw-scale.perf}"
fi
