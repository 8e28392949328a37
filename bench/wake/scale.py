#!/usr/bin/env python3
"""Scale part of issue 16, process backend, grafana-standin as Grafana, in one run.

  A. a pug with only --awake M tenants registered (idle timeout 0: always awake): gateway latency
     (wrk, signed-in GET /t/<id>/api/health spread over the M tenants, --duration S) and RSS;
  B. the same pug grown to --registered N tenants: the N-M new ones are created with a 1 s idle
     timeout and fall asleep; the same measurement for the M awake ones, and p99(B)/p99(A);
  C. --sleepers K of the sleeping tenants are woken (API) with idle timeout 0, then all get a 1 s
     idle timeout at once (their deadline has passed): time until all K are `sleeping` with no
     instance process;
  D. --wakers W other sleeping tenants get W concurrent signed-in requests: each one's time to
     its 200.

Usage: python3 bench/wake/scale.py --registered 10000 --awake 500 --sleepers 1000 --wakers 100 \
           --bin-dir target/debug --duration 20
Bounded: every wait has a deadline (--create-budget for phase B's creations; if it runs out the
run goes on with the tenants created so far and says so). Cleans up pug, the instances it
started (by pid) and the temp dir, also on Ctrl-C or an exception.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import ROOT, cookie_of, free_port, pct, request  # noqa: E402

PORT_MIN, PORT_MAX = 20000, 32000  # below the ephemeral range (32768-60999), > 10,000 ports
LOCK = threading.Lock()
LOCKED = {}  # method: API calls answered 500 (pug's log: "database is locked"), retried


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Conn:
    """One keep-alive HTTP/1.1 connection for API calls (reconnects on error)."""

    def __init__(self, port, token):
        self.port, self.token, self.c = port, token, None

    def call(self, method, path, body=None, timeout=60):
        """One call; a 500 "database is locked" (SQLite busy, seen under concurrent writes) is
        retried up to 20 times and counted in LOCKED; a retried POST that then meets 409 had
        been written: it counts as 201."""
        for i in range(20):
            s, b = self._call(method, path, body, timeout)
            if s == 500 and b"internal error" in b:
                with LOCK:
                    LOCKED[method] = LOCKED.get(method, 0) + 1
                time.sleep(0.05 * (i + 1))
                continue
            if s == 409 and i > 0 and method == "POST":
                return 201, b
            return s, b
        return s, b

    def _call(self, method, path, body, timeout):
        for attempt in range(3):
            try:
                if self.c is None:
                    self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
                headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
                data = None
                if body is not None:
                    data = json.dumps(body).encode()
                    headers["Content-Type"] = "application/json"
                self.c.request(method, path, body=data, headers=headers)
                r = self.c.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                if self.c:
                    self.c.close()
                self.c = None
                if attempt == 2:
                    raise
                time.sleep(0.2)


def parallel(items, fn, threads, port, token, deadline=None):
    """fn(conn, item) over items from `threads` threads; returns (done count, failures)."""
    lock = threading.Lock()
    it = iter(items)
    done, fails = [0], []

    def worker():
        c = Conn(port, token)
        while True:
            if deadline and time.time() > deadline:
                return
            with lock:
                item = next(it, None)
            if item is None:
                return
            try:
                err = fn(c, item)
            except Exception as e:  # noqa: BLE001
                err = repr(e)
            with lock:
                if err:
                    fails.append((item, err))
                else:
                    done[0] += 1

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return done[0], fails


def instance_pids(data):
    """{tenant: [pid]} of every instance process pug started under data/tenants (one /proc scan)."""
    root = os.path.join(data, "tenants") + "/"
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        pidfile = next((a.split("=", 1)[1] for a in argv if a.startswith("--pidfile=")), None)
        if pidfile is None and "--pidfile" in argv[:-1]:
            pidfile = argv[argv.index("--pidfile") + 1]
        if not pidfile or not pidfile.startswith(root):
            continue
        tenant = pidfile[len(root):].split("/", 1)[0]
        out.setdefault(tenant, []).append(int(pid))
    return out


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_s(pid):
    """utime + stime of `pid` in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_split_s(pid):
    """(request threads, other threads) CPU seconds of `pid`: its gateway threads (`pug-http-*`,
    which also serve pug's API) apart from the rest (controller, store, pollers)."""
    http = other = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        t = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if comm.startswith("pug-http"):
            http += t
        else:
            other += t
    return http, other


def mib(kib):
    return f"{kib / 1024:.0f} MiB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--registered", type=int, default=10000)
    ap.add_argument("--awake", type=int, default=500)
    ap.add_argument("--sleepers", type=int, default=1000)
    ap.add_argument("--wakers", type=int, default=100)
    ap.add_argument("--duration", type=int, default=20, help="seconds of each latency measurement")
    ap.add_argument("--connections", type=int, default=4, help="wrk connections (2 threads)")
    ap.add_argument("--create-threads", type=int, default=4)
    ap.add_argument("--create-budget", type=int, default=600, help="seconds for phase B's creations")
    ap.add_argument("--max-instances", type=int, default=600,
                    help="phase B pauses creating while this many instances run (memory)")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (serve.log)")
    args = ap.parse_args()
    N, M, K, W = args.registered, args.awake, args.sleepers, args.wakers
    assert N >= M + K + W, "--registered must cover awake + sleepers + wakers"
    assert N <= PORT_MAX - PORT_MIN, "more tenants than ports"
    args.bin_dir = os.path.abspath(args.bin_dir)
    pug_bin = os.path.join(args.bin_dir, "pug")
    standin = os.path.join(args.bin_dir, "grafana-standin")
    for b in (pug_bin, standin):
        if not os.access(b, os.X_OK):
            sys.exit(f"{b} not found: cargo build --workspace --bins (and --bin-dir)")

    work = tempfile.mkdtemp(prefix="pug-scale-")
    os.chmod(work, 0o711)
    # Private copies: others rebuild target/ while this runs.
    os.makedirs(os.path.join(work, "bin"))
    for b in (pug_bin, standin):
        shutil.copy2(b, os.path.join(work, "bin"))
    pug_bin = os.path.join(work, "bin", "pug")
    standin = os.path.join(work, "bin", "grafana-standin")
    data = os.path.join(work, "data")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update({
        "PUG_PROCESS_GRAFANA_BIN": standin,
        "PUG_PROCESS_ISOLATION": "off",
        "PUG_PROCESS_PORT_MIN": str(PORT_MIN),
        "PUG_PROCESS_PORT_MAX": str(PORT_MAX),
        "PUG_RENDERER_MODE": "off",
        "PUG_LOG": "warn",
    })
    env.pop("PUG_URL", None)
    env.pop("PUG_TOKEN", None)
    serve_log = os.path.join(work, "serve.log")
    logf = open(serve_log, "w")
    serve = subprocess.Popen([pug_bin, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}"],
                             env=env, stdout=logf, stderr=logf, start_new_session=True)
    stop = threading.Event()
    samples = []  # (t, pug rss KiB, instance count, instance rss KiB)
    res = {}

    def restore_sigint(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, restore_sigint)

    def sampler():
        while not stop.is_set():
            pids = [p for ps in instance_pids(data).values() for p in ps]
            samples.append((time.time(), rss_kib(serve.pid), len(pids), sum(rss_kib(p) for p in pids)))
            stop.wait(1)

    def snapshot():
        pids = [p for ps in instance_pids(data).values() for p in ps]
        return rss_kib(serve.pid), len(pids), sum(rss_kib(p) for p in pids)

    try:
        for _ in range(300):
            try:
                if request(f"{url}/healthz", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if serve.poll() is not None:
                sys.exit(f"pug serve exited: see {serve_log}")
            time.sleep(0.1)
        token = open(os.path.join(data, "local.token")).read().strip()
        threading.Thread(target=sampler, daemon=True).start()
        api = Conn(port, token)

        def fleet():
            s, b = api.call("GET", "/api/v1/status")
            assert s == 200, b
            return json.loads(b)

        def wait_fleet(cond, what, limit):
            start = time.time()
            last = 0
            while time.time() - start < limit:
                f = fleet()
                if cond(f["tenants_by_phase"]):
                    return time.time() - start, f
                if time.time() - last > 15:
                    log(f"waiting for {what}: {f['tenants_by_phase']}, queue {f.get('queue_depth')}")
                    last = time.time()
                time.sleep(0.5)
            f = fleet()
            log(f"gave up waiting for {what} after {limit}s: {f['tenants_by_phase']}")
            return None, f

        def create(idle):
            def fn(c, t):
                s, b = c.call("POST", "/api/v1/tenants", {"id": t, "version": "11.3.0", "idle_timeout_secs": idle})
                return None if s == 201 else f"{s} {b[:200]!r}"
            return fn

        def grant(c, t):
            s, b = c.call("PUT", f"/api/v1/users/bench/tenants/{t}", {"role": "Viewer"})
            return None if s in (200, 201, 204) else f"{s} {b[:200]!r}"

        def sign_in(user="bench"):
            s, h, _ = request(f"{url}/login")
            csrf = cookie_of(h, "pug_csrf")
            s, h, _ = request(f"{url}/login", "POST", cookie=csrf, form={
                "user": user, "password": "bench-password", "csrf": csrf.split("=", 1)[1], "next": "/"})
            session = cookie_of(h, "pug_session")
            assert session, f"sign-in failed ({s})"
            return session

        s, _, b = request(f"{url}/api/v1/users", "POST", token, body={
            "name": "bench", "email": "bench@example.com", "password": "bench-password"})
        assert s in (200, 201), b

        # ---- phase A: M tenants, all awake
        awake = [f"a{i}" for i in range(M)]
        t0 = time.time()
        n, fails = parallel(awake, create(0), args.create_threads, port, token)
        assert not fails, fails[:5]
        n, fails = parallel(awake, grant, args.create_threads, port, token)
        assert not fails, fails[:5]
        took, f = wait_fleet(lambda p: p.get("ready", 0) >= M, f"{M} awake tenants ready", 600)
        assert took is not None, "phase A tenants did not get ready"
        res["a_ready_s"] = time.time() - t0
        log(f"phase A: {M} tenants created and ready in {res['a_ready_s']:.1f}s")
        session = sign_in()

        lua = os.path.join(work, "paths.lua")

        def measure(tag):
            for t in awake[:3] + awake[-3:]:
                s, _, b = request(f"{url}/t/{t}/api/health", cookie=session)
                assert s == 200, (t, s, b[:200])
            with open(lua, "w") as fh:
                fh.write("local paths = {" + ",".join(f'"/t/{t}/api/health"' for t in awake) + "}\n")
                fh.write("""
local n = 0
local tid = 0
function setup(thread) tid = tid + 1; thread:set("off", tid * 7919) end
function init(args) n = off end
function request() n = n + 1; return wrk.format("GET", paths[(n % #paths) + 1]) end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d\\n", latency:percentile(50), latency:percentile(99),
    latency.max, summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(90)))
end
""")
            # warm-up, then the measurement
            cmd = ["wrk", "-t2", f"-c{args.connections}", "-H", f"Cookie: {session}", "-s", lua,
                   "--timeout", "10s"]
            subprocess.run(cmd + ["-d3s", url], capture_output=True, timeout=60)
            rss_before = snapshot()
            cpu0, split0 = cpu_s(serve.pid), cpu_split_s(serve.pid)
            out = subprocess.run(cmd + [f"-d{args.duration}s", url], capture_output=True, text=True,
                                 timeout=args.duration + 60).stdout
            cpu1, split1 = cpu_s(serve.pid), cpu_split_s(serve.pid)
            load = open("/proc/loadavg").read().split()[0]
            rss_after = snapshot()
            line = next(l for l in out.splitlines() if l.startswith("RESULT"))
            p50, p99, mx, reqs, dur, errs, non2xx, p90 = map(int, line.split()[1:])
            r = {"p50_ms": p50 / 1000, "p90_ms": p90 / 1000, "p99_ms": p99 / 1000, "max_ms": mx / 1000,
                 "rps": reqs / (dur / 1e6), "reqs": reqs, "errors": errs, "non2xx": non2xx,
                 "pug_rss": max(rss_before[0], rss_after[0]), "inst_n": rss_after[1], "inst_rss": rss_after[2],
                 "cpu_us_per_req": (cpu1 - cpu0) * 1e6 / max(reqs, 1), "load1": load,
                 "cpu_us_per_req_http": (split1[0] - split0[0]) * 1e6 / max(reqs, 1),
                 "cpu_us_per_req_other": (split1[1] - split0[1]) * 1e6 / max(reqs, 1)}
            log(f"phase {tag}: {r}")
            return r

        res["A"] = measure("A")

        # ---- phase B: grow to N; the new ones sleep after 1 s
        rest = [f"s{i}" for i in range(N - M)]
        t0 = time.time()
        done = [0]
        created = []
        lock = threading.Lock()

        def create_count(c, t):
            while samples and samples[-1][2] >= args.max_instances and time.time() < t0 + args.create_budget:
                time.sleep(0.2)
            err = create(1)(c, t)
            if not err:
                with lock:
                    created.append(t)
                    if len(created) % 1000 == 0:
                        f = fleet_in(c)
                        log(f"created {len(created)} in {time.time() - t0:.0f}s: {f['tenants_by_phase']} "
                            f"queue {f.get('queue_depth')}; pug {mib(rss_kib(serve.pid))}, "
                            f"{len(instance_pids(data))} instances")
            return err

        def fleet_in(c):
            s, b = c.call("GET", "/api/v1/status")
            return json.loads(b)

        n, fails = parallel(rest, create_count, args.create_threads, port, token,
                            deadline=time.time() + args.create_budget)
        res["b_create_s"] = time.time() - t0
        res["b_created"] = len(created)
        res["b_create_fails"] = fails[:5]
        log(f"phase B: created {len(created)} of {len(rest)} in {res['b_create_s']:.0f}s "
            f"({len(created) / res['b_create_s']:.1f}/s), {len(fails)} failures {fails[:3]}")
        total = M + len(created)
        took, f = wait_fleet(lambda p: p.get("sleeping", 0) >= len(created) and p.get("ready", 0) >= M,
                             f"{len(created)} sleeping", 600)
        res["b_settle_s"] = time.time() - t0
        res["b_all_asleep"] = took is not None
        res["b_phases"] = f["tenants_by_phase"]
        res["registered"] = f["tenants_total"]
        log(f"phase B: {total} registered, settled after {res['b_settle_s']:.0f}s from the first creation: "
            f"{f['tenants_by_phase']}")
        # instances of sleeping tenants must be gone
        deadline = time.time() + 60
        while time.time() < deadline:
            extra = [t for t in instance_pids(data) if not t.startswith("a")]
            if not extra:
                break
            time.sleep(1)
        res["b_extra_instances"] = len(extra)
        res["B"] = measure("B")

        # ---- C: K sleepers woken, then all given a 1 s idle timeout at once
        sleeping = [t for t in created]
        sleepers = sleeping[:K]
        wakers = sleeping[K:K + W]

        def patch(idle):
            def fn(c, t):
                s, b = c.call("PATCH", f"/api/v1/tenants/{t}", {"idle_timeout_secs": idle})
                return None if s == 200 else f"{s} {b[:200]!r}"
            return fn

        def wake(c, t):
            s, b = c.call("POST", f"/api/v1/tenants/{t}/wake")
            return None if s in (200, 202, 204) else f"{s} {b[:200]!r}"

        if sleepers:
            n, fails = parallel(sleepers, patch(0), args.create_threads, port, token)
            assert not fails, fails[:5]
            t0 = time.time()
            n, fails = parallel(sleepers, wake, args.create_threads, port, token)
            assert not fails, fails[:5]
            took, f = wait_fleet(lambda p: p.get("ready", 0) >= M + len(sleepers),
                                 f"{len(sleepers)} sleepers awake", 600)
            res["c_wake_api_s"] = time.time() - t0
            res["c_awake_ok"] = took is not None
            res["c_awake_snapshot"] = snapshot()
            log(f"C: {len(sleepers)} woken by the API in {res['c_wake_api_s']:.1f}s; {res['c_awake_snapshot']}")
            time.sleep(3)  # every deadline (last use + 1 s + pug's 2 s grace) is in the past once set
            t_first = time.time()
            n, fails = parallel(sleepers, patch(1), args.create_threads, port, token)
            assert not fails, fails[:5]
            t_last = time.time()
            sset = set(sleepers)
            deadline = t_first + 600
            while time.time() < deadline:
                f = fleet()
                if f["tenants_by_phase"].get("ready", 0) <= M and not (sset & set(instance_pids(data))):
                    break
                time.sleep(0.2)
            t_end = time.time()
            res["c_ok"] = t_end < deadline
            res["c_set_s"] = t_last - t_first
            res["c_from_first"] = t_end - t_first
            res["c_from_last"] = t_end - t_last
            log(f"C: {len(sleepers)} asleep {res['c_from_first']:.1f}s after the first timeout was set "
                f"({res['c_from_last']:.1f}s after the last; setting took {res['c_set_s']:.1f}s)")

        # ---- D: W sleeping tenants woken at once by W signed-in requests
        if wakers:
            # A user of their own: the gateway caches a user's memberships, so grants made after
            # "bench" was looked up would not be seen at once.
            s, _, b = request(f"{url}/api/v1/users", "POST", token, body={
                "name": "waker", "email": "waker@example.com", "password": "bench-password"})
            assert s in (200, 201), b

            def grant_w(c, t):
                s, b = c.call("PUT", f"/api/v1/users/waker/tenants/{t}", {"role": "Viewer"})
                return None if s in (200, 201, 204) else f"{s} {b[:200]!r}"
            n, fails = parallel(wakers, grant_w, args.create_threads, port, token)
            assert not fails, fails[:5]
            session2 = sign_in("waker")
            ph = {}
            for t in wakers[:5]:
                s, b = api.call("GET", f"/api/v1/tenants/{t}")
                ph[t] = json.loads(b)["status"]["phase"]
            assert all(p == "sleeping" for p in ph.values()), ph
            barrier = threading.Barrier(len(wakers))
            times = {}

            def one(t):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                c.connect()
                barrier.wait()
                start = time.perf_counter()
                try:
                    c.request("GET", f"/t/{t}/api/health", headers={"Cookie": session2, "Accept": "application/json"})
                    r = c.getresponse()
                    r.read()
                    times[t] = (r.status, time.perf_counter() - start)
                except Exception as e:  # noqa: BLE001
                    times[t] = (repr(e), time.perf_counter() - start)
                finally:
                    c.close()

            ts = [threading.Thread(target=one, args=(t,), daemon=True) for t in wakers]
            for t in ts:
                t.start()
            for t in ts:
                t.join(180)
            ok = [d for s, d in times.values() if s == 200]
            res["d_ok"] = len(ok)
            res["d_statuses"] = sorted({str(s) for s, _ in times.values()})
            res["d"] = (pct(ok, 50), pct(ok, 99), max(ok)) if ok else None
            log(f"D: {len(ok)}/{len(wakers)} got 200: {res['d']} statuses {res['d_statuses']}")

        # ---- report
        A, B = res["A"], res["B"]
        peak = max(samples, key=lambda s: s[1]) if samples else (0, 0, 0, 0)
        peak_inst = max(samples, key=lambda s: s[2]) if samples else (0, 0, 0, 0)
        ratio = B["p99_ms"] / A["p99_ms"] if A["p99_ms"] else float("nan")
        print(f"\nscale, process backend, binaries {args.bin_dir} (copied at start): registered {res['registered']} "
              f"(asked {N}), awake {M}, sleepers {len(sleepers)}, wakers {len(wakers)}; wrk -t2 "
              f"-c{args.connections} -d{args.duration}s over the awake tenants\n")
        print("| | A: only the awake registered | B: all registered |")
        print("|---|---|---|")
        print(f"| tenants registered / awake | {M} / {A['inst_n']} | {res['registered']} / {B['inst_n']} |")
        print(f"| gateway p50 / p90 / p99 / max | {A['p50_ms']:.1f} / {A['p90_ms']:.1f} / {A['p99_ms']:.1f} / "
              f"{A['max_ms']:.0f} ms | {B['p50_ms']:.1f} / {B['p90_ms']:.1f} / {B['p99_ms']:.1f} / {B['max_ms']:.0f} ms |")
        print(f"| requests/s (errors, non-2xx) | {A['rps']:.0f} ({A['errors']}, {A['non2xx']}) | "
              f"{B['rps']:.0f} ({B['errors']}, {B['non2xx']}) |")
        print(f"| pug CPU per request (utime+stime) | {A['cpu_us_per_req']:.0f} µs | {B['cpu_us_per_req']:.0f} µs |")
        print(f"| of which request threads (pug-http-*) / other threads | {A['cpu_us_per_req_http']:.0f} / "
              f"{A['cpu_us_per_req_other']:.0f} µs | {B['cpu_us_per_req_http']:.0f} / {B['cpu_us_per_req_other']:.0f} µs |")
        print(f"| machine load (1 min) at the end | {A['load1']} | {B['load1']} |")
        print(f"| pug RSS (VmRSS) | {mib(A['pug_rss'])} | {mib(B['pug_rss'])} |")
        print(f"| instances' RSS, sum | {mib(A['inst_rss'])} | {mib(B['inst_rss'])} |")
        print()
        print("| | |")
        print("|---|---|")
        print(f"| **p99(B) / p99(A)** | **{ratio:.2f}** |")
        print(f"| phase B creations | {res['b_created']} in {res['b_create_s']:.0f} s "
              f"({res['b_created'] / res['b_create_s']:.1f}/s), all asleep {res['b_settle_s']:.0f} s after the first |")
        print(f"| pug RSS peak during the run | {mib(peak[1])} ({peak[2]} instances then) |")
        print(f"| instances at once, peak | {peak_inst[2]} ({mib(peak_inst[3])}) |")
        if sleepers:
            print(f"| {len(sleepers)} idle tenants fall asleep (all `sleeping`, no process) | "
                  f"{res['c_from_first']:.1f} s from the first deadline, {res['c_from_last']:.1f} s from the last "
                  f"(1 s timeouts set over {res['c_set_s']:.1f} s, each deadline incl. pug's 2 s grace already past) |")
            print(f"| {len(sleepers)} woken by the API, until ready | {res['c_wake_api_s']:.1f} s |")
        if wakers and res.get("d"):
            p50, p99, mx = res["d"]
            print(f"| {len(wakers)} sleeping tenants woken at once: first 200 p50 / p99 / max | "
                  f"{p50 * 1000:.0f} / {p99 * 1000:.0f} / {mx * 1000:.0f} ms ({res['d_ok']}/{len(wakers)} got 200) |")
        print(f"| API calls answered 500 \"database is locked\" (retried) | {LOCKED or 0} |")
        print(f"\ntargets: pug RSS < 250 MiB at {res['registered']} registered: "
              f"{'met' if B['pug_rss'] < 250 * 1024 else 'missed'} ({mib(B['pug_rss'])}, peak {mib(peak[1])}); "
              f"p99(B) <= 1.1 x p99(A): {'met' if ratio <= 1.1 else 'missed'} ({ratio:.2f})")
        with open(serve_log) as fh:
            lines = fh.readlines()
        warn = [l for l in lines if " WARN " in l or " ERROR " in l or "warn" in l[:40].lower() or "error" in l[:40].lower()]
        print(f"serve.log: {len(lines)} lines, {len(warn)} warnings/errors", file=sys.stderr)
        seen = set()
        for l in warn:
            key = l[30:110]
            if key not in seen and len(seen) < 15:
                seen.add(key)
                print("  " + l.rstrip()[:300], file=sys.stderr)
        print("RESULT_JSON " + json.dumps(res, default=str), file=sys.stderr)
    finally:
        stop.set()
        try:
            serve.send_signal(signal.SIGTERM)
            serve.wait(20)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
        except OSError:
            pass
        # The instances pug started (they outlive pug by design), by their pids.
        for _ in range(3):
            pids = [p for ps in instance_pids(data).values() for p in ps]
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.5)
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
