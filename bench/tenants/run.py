#!/usr/bin/env python3
"""Creates N tenants (replicas 1, grafana-standin as Grafana) through pug's API and reports the
time until all are ready, pug's RSS, and API latency p50/p99 for create and list.

Usage: python3 bench/tenants/run.py [--tenants 1000] [--clients 8]
Needs release builds: cargo build --release -p pug -p grafana-standin
Writes bench/tenants/results.md and prints the same table.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PUG = os.path.join(ROOT, "target/release/pug")
STANDIN = os.path.join(ROOT, "target/release/grafana-standin")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, token, method="GET", body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data:
        req.add_header("Content-Type", "application/json")
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        payload = resp.read()
    return time.perf_counter() - start, payload


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def kill_instances(data_dir):
    root = os.path.join(data_dir, "tenants")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"--pidfile" in args:
            i = args.index(b"--pidfile")
            if i + 1 < len(args) and args[i + 1].decode(errors="replace").startswith(root):
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    for path in (PUG, STANDIN):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run cargo build --release -p pug -p grafana-standin")

    tmp = tempfile.mkdtemp(prefix="pug-bench-")
    data = os.path.join(tmp, "pug-data")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update({
        "PUG_PROCESS_GRAFANA_BIN": STANDIN,
        "PUG_PROCESS_PORT_MIN": "30000",
        "PUG_PROCESS_PORT_MAX": "39999",
        "PUG_LOG": "warn",
    })
    log = open(os.path.join(tmp, "serve.log"), "w")
    pug = subprocess.Popen([PUG, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}"],
                           env=env, stdout=log, stderr=log, cwd=tmp)
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1).read()
                break
            except (urllib.error.URLError, ConnectionError):
                if time.time() > deadline:
                    sys.exit("pug did not start")
                time.sleep(0.05)
        token = open(os.path.join(data, "local.token")).read().strip()
        rss_idle = rss_kib(pug.pid)

        create_lat = []
        lock = threading.Lock()
        ids = [f"t{i:05d}" for i in range(args.tenants)]
        started = time.perf_counter()

        def worker(chunk):
            for tid in chunk:
                took, _ = call(url + "/api/v1/tenants", token, "POST", {"id": tid, "version": "11.3.0"})
                with lock:
                    create_lat.append(took)

        threads = [threading.Thread(target=worker, args=(ids[i::args.clients],)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        created = time.perf_counter() - started

        list_lat = []
        peak_rss = rss_kib(pug.pid)
        ready = 0
        while True:
            took, payload = call(url + "/api/v1/status", token)
            ready = json.loads(payload)["tenants_by_phase"].get("ready", 0)
            peak_rss = max(peak_rss, rss_kib(pug.pid))
            if ready >= args.tenants:
                break
            if time.perf_counter() - started > args.timeout:
                break
            time.sleep(0.2)
        all_ready = time.perf_counter() - started

        for _ in range(50):
            took, payload = call(url + "/api/v1/tenants", token)
            list_lat.append(took)
        assert len(json.loads(payload)) == args.tenants
        peak_rss = max(peak_rss, rss_kib(pug.pid))
        hwm = rss_kib(pug.pid, "VmHWM")

        rows = [
            ("tenants", f"{args.tenants} (replicas 1, {args.clients} API clients)"),
            ("ready", f"{ready}/{args.tenants}"),
            ("time until all created (API)", f"{created:.2f} s"),
            ("time until all ready", f"{all_ready:.2f} s" if ready >= args.tenants else f"not all ready after {all_ready:.0f} s"),
            ("create latency p50 / p99", f"{pct(create_lat, 50) * 1000:.1f} ms / {pct(create_lat, 99) * 1000:.1f} ms"),
            (f"list latency p50 / p99 ({args.tenants} tenants)", f"{pct(list_lat, 50) * 1000:.1f} ms / {pct(list_lat, 99) * 1000:.1f} ms"),
            ("pug RSS idle / peak (VmHWM)", f"{rss_idle / 1024:.1f} MiB / {hwm / 1024:.1f} MiB"),
        ]
        table = "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
        out = (f"# bench/tenants\n\n`python3 bench/tenants/run.py --tenants {args.tenants}` on "
               f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}.\n\n{table}\n\n"
               "Targets (core issue): all 1,000 ready in under 60 s; pug under 150 MiB RSS.\n")
        print(out)
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.md"), "w") as f:
            f.write(out)
    finally:
        pug.send_signal(signal.SIGKILL)
        pug.wait()
        kill_instances(data)
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
