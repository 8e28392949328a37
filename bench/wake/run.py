#!/usr/bin/env python3
"""Wake overhead of a sleeping tenant, process backend, in one run (issue 16).

For each sample: a tenant with a 1 s idle timeout falls asleep; its instance's own cold start is
measured directly (the same command line, environment and port pug used, started by this script
and polled at /api/health every 2 ms until 200, then stopped); then one signed-in request goes
through the gateway to the sleeping tenant and is timed until its 200. Overhead = gateway
first-200 minus the direct cold start. Beside it, the Sablier default model on the same cold
starts: its blocking strategy re-inspects every 5 s, so the first 200 comes at the first 5 s tick
after the instance is ready (ceil(cold / 5 s) * 5 s).

Usage: python3 bench/wake/run.py [--tenants 4] [--rounds 5] [--bin-dir target/release] [--backend docker]
Needs: cargo build --release --workspace --bins (or --bin-dir target/debug). With --backend docker: a
Docker engine and the test images (crates/pug-docker/tests/images/build.sh makes pug-test/grafana:*,
grafana-standin laid out like grafana/grafana); a sleeping tenant's container is stopped and kept, so
its direct cold start is `docker start` of that container until /api/health answers 200 (then it is
stopped again), and the wake through the gateway is pug starting that same container.
Bounded: tenants x rounds samples, each round waits at most 60 s for the tenants to sleep.
"""

import argparse
import http.client
import json
import math
import shutil
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def request(url, method="GET", token=None, cookie=None, body=None, form=None, timeout=90):
    data, ctype = None, None
    if body is not None:
        data, ctype = json.dumps(body).encode(), "application/json"
    if form is not None:
        data, ctype = urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded"
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if cookie:
        req.add_header("Cookie", cookie)
    if ctype:
        req.add_header("Content-Type", ctype)
    req.add_header("Accept", "application/json")
    try:
        with OPENER.open(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def cookie_of(headers, name):
    for v in headers.get_all("Set-Cookie") or []:
        first = v.split(";", 1)[0]
        if first.startswith(name + "=") and len(first) > len(name) + 1:
            return first
    return None


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def instance_of(data, tenant):
    """(argv, cwd, env, port, pid) of the running instance of `tenant`, from /proc."""
    root = os.path.join(data, "tenants", tenant) + "/"
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode() for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        pidfile = next((a.split("=", 1)[1] for a in argv if a.startswith("--pidfile=")), None)
        if pidfile is None and "--pidfile" in argv:
            pidfile = argv[argv.index("--pidfile") + 1]
        if not pidfile or not pidfile.startswith(root):
            continue
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(kv.decode().split("=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        cwd = os.readlink(f"/proc/{pid}/cwd")
        port = int(os.path.basename(pidfile).split("-", 1)[0])
        return argv, cwd, env, port, int(pid)
    return None


def healthy_after(url, start, failed):
    """Polls `url` every 2 ms until it answers 200: seconds since `start`. `failed()` says why
    to give up (or None to go on)."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        why = failed()
        if why:
            raise SystemExit(why)
        time.sleep(0.002)


def cold_start(inst, path):
    """Starts the instance's command directly and polls /api/health every 2 ms: seconds to 200."""
    argv, cwd, env, port, _ = inst
    start = time.perf_counter()
    p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}{path}/api/health"
    try:
        return healthy_after(url, start, lambda: p.poll() is not None
                             and f"the instance exited during its direct start: {argv}")
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def docker(*args):
    out = subprocess.run(["docker", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def container_of(namespace, tenant):
    """The tenant's container (id), running or stopped, or None."""
    ids = docker("ps", "-aq", "--filter", f"label=pug.namespace={namespace}",
                 "--filter", f"label=pug.tenant={tenant}").split()
    return ids[0] if ids else None


def running(container):
    return docker("inspect", "--format", "{{.State.Running}}", container) == "true"


class DockerApi(http.client.HTTPConnection):
    """The engine's API on its unix socket: the direct start is timed without CLI processes
    (pug talks to the same API)."""

    def __init__(self):
        super().__init__("localhost", timeout=60)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect("/var/run/docker.sock")

    def call(self, method, path):
        self.request(method, path)
        r = self.getresponse()
        body = r.read()
        if r.status >= 300:
            raise SystemExit(f"docker API {method} {path}: {r.status} {body[:200]!r}")
        return json.loads(body) if body else None


def docker_cold_start(container, network, path):
    """Starts the stopped container through the engine's API, polling /api/health every 2 ms:
    seconds to 200. Stopped again after."""
    api = DockerApi()
    start = time.perf_counter()
    api.call("POST", f"/containers/{container}/start")
    info = api.call("GET", f"/containers/{container}/json")
    ip = info["NetworkSettings"]["Networks"][network]["IPAddress"]
    port = info["Config"]["Labels"]["pug.port"]
    url = f"http://{ip}:{port}{path}/api/health"
    try:
        return healthy_after(url, start, lambda: time.perf_counter() - start > 60
                             and f"{container} did not answer {url} within 60 s")
    finally:
        api.close()
        docker("stop", "-t", "10", container)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--backend", choices=["process", "docker"], default="process")
    args = ap.parse_args()
    on_docker = args.backend == "docker"
    args.bin_dir = os.path.abspath(args.bin_dir)
    pug_bin = os.path.join(args.bin_dir, "pug")
    standin = os.path.join(args.bin_dir, "grafana-standin")
    for b in (pug_bin, standin):
        if not os.access(b, os.X_OK):
            sys.exit(f"{b} not found: cargo build --release --workspace --bins (or --bin-dir)")

    work = tempfile.mkdtemp(prefix="pug-wake-")
    os.chmod(work, 0o711)
    data = os.path.join(work, "data")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update({
        "PUG_PROCESS_GRAFANA_BIN": standin,
        "PUG_PROCESS_ISOLATION": "off",
        "PUG_PROCESS_PORT_MIN": "28500",
        "PUG_PROCESS_PORT_MAX": "28599",
        "PUG_RENDERER_MODE": "off",
        "PUG_LOG": "warn",
    })
    namespace = f"pugwake{os.getpid()}"
    network = f"{namespace}-net"
    if on_docker:
        docker("image", "inspect", "pug-test/grafana:11.3.0")  # the test images (see the docstring)
        env.update({
            "PUG_BACKEND": "docker",
            "PUG_DOCKER_NETWORK": network,
            "PUG_DOCKER_NAMESPACE": namespace,
            "PUG_DOCKER_IMAGE": "pug-test/grafana:{version}",
            "PUG_DOCKER_HEALTHCHECK": '["CMD", "/usr/bin/healthcheck", "http://127.0.0.1:{port}{path}api/health"]',
        })
    env.pop("PUG_URL", None)
    env.pop("PUG_TOKEN", None)
    log = open(os.path.join(work, "serve.log"), "w")
    serve = subprocess.Popen([pug_bin, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}"],
                             env=env, stdout=log, stderr=log)
    try:
        for _ in range(300):
            try:
                if request(f"{url}/healthz", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        token = open(os.path.join(data, "local.token")).read().strip()
        tenants = [f"w{i}" for i in range(args.tenants)]
        for t in tenants:
            s, _, b = request(f"{url}/api/v1/tenants", "POST", token, body={
                "id": t, "version": "11.3.0", "idle_timeout_secs": 1})
            assert s == 201, b
        s, _, b = request(f"{url}/api/v1/users", "POST", token, body={
            "name": "bench", "email": "bench@example.com", "password": "bench-password"})
        assert s in (200, 201), b
        for t in tenants:
            s, _, b = request(f"{url}/api/v1/users/bench/tenants/{t}", "PUT", token, body={"role": "Viewer"})
            assert s in (200, 201, 204), b
        s, h, _ = request(f"{url}/login")
        csrf = cookie_of(h, "pug_csrf")
        s, h, _ = request(f"{url}/login", "POST", cookie=csrf, form={
            "user": "bench", "password": "bench-password", "csrf": csrf.split("=", 1)[1], "next": "/"})
        session = cookie_of(h, "pug_session")
        assert session, f"sign-in failed ({s})"

        # Each tenant's instance, captured while it runs (the first time it is ready).
        insts = {}
        deadline = time.time() + 90
        while len(insts) < len(tenants) and time.time() < deadline:
            for t in tenants:
                if t not in insts:
                    i = container_of(namespace, t) if on_docker else instance_of(data, t)
                    if i:
                        insts[t] = i
            time.sleep(0.05)
        assert len(insts) == len(tenants), "instances did not start"

        def phase(t):
            return json.loads(request(f"{url}/api/v1/tenants/{t}", token=token)[2])["status"]["phase"]

        samples = []
        for rnd in range(args.rounds):
            deadline = time.time() + 60
            while time.time() < deadline and not all(phase(t) == "sleeping" for t in tenants):
                time.sleep(0.05)
            for t in tenants:
                assert phase(t) == "sleeping", f"{t} did not fall asleep"
                if on_docker:
                    assert container_of(namespace, t) == insts[t], f"{t}'s container was not kept"
                    while running(insts[t]):
                        time.sleep(0.01)
                    cold = docker_cold_start(insts[t], network, f"/t/{t}")
                else:
                    while instance_of(data, t):
                        time.sleep(0.01)
                    cold = cold_start(insts[t], f"/t/{t}")
                start = time.perf_counter()
                s, _, b = request(f"{url}/t/{t}/api/health", cookie=session)
                wake = time.perf_counter() - start
                assert s == 200, (s, b)
                samples.append((cold, wake))
                print(f"round {rnd + 1} {t}: cold start {cold * 1000:.0f} ms, first 200 through the "
                      f"gateway {wake * 1000:.0f} ms, overhead {(wake - cold) * 1000:.0f} ms", file=sys.stderr)

        colds = [c for c, _ in samples]
        wakes = [w for _, w in samples]
        over = [w - c for c, w in samples]
        sab = [math.ceil(c / 5.0) * 5.0 for c in colds]
        sab_over = [s - c for s, c in zip(sab, colds)]
        ms = lambda v: f"{v * 1000:.0f} ms"
        print(f"\nwake overhead, {args.backend} backend, {len(samples)} wakes ({args.tenants} tenants x {args.rounds} rounds), "
              f"binaries {args.bin_dir}\n")
        print("| | p50 | p99 | max |")
        print("|---|---|---|---|")
        print(f"| instance cold start (direct) | {ms(pct(colds, 50))} | {ms(pct(colds, 99))} | {ms(max(colds))} |")
        print(f"| pug: first 200 through the gateway | {ms(pct(wakes, 50))} | {ms(pct(wakes, 99))} | {ms(max(wakes))} |")
        print(f"| **pug: overhead** (first 200 − cold start) | **{ms(pct(over, 50))}** | **{ms(pct(over, 99))}** | {ms(max(over))} |")
        print(f"| Sablier default model: first 200 (5 s poll tick) | {ms(pct(sab, 50))} | {ms(pct(sab, 99))} | {ms(max(sab))} |")
        print(f"| Sablier default model: overhead | {ms(pct(sab_over, 50))} | {ms(pct(sab_over, 99))} | {ms(max(sab_over))} |")
        print(f"\ntarget: overhead p50 < 100 ms, p99 < 250 ms; mean overhead {ms(statistics.mean(over))}")
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(15)
        except subprocess.TimeoutExpired:
            serve.kill()
        # The instances pug started (they outlive pug by design): containers, network, volumes
        # on docker; processes, by their pids.
        if on_docker:
            ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=pug.namespace={namespace}"],
                                 capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
            vols = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"name={namespace}-"],
                                  capture_output=True, text=True).stdout.split()
            if vols:
                subprocess.run(["docker", "volume", "rm", *vols], capture_output=True)
            subprocess.run(["docker", "network", "rm", network], capture_output=True)
        for t in [] if on_docker else [f"w{i}" for i in range(args.tenants)]:
            i = instance_of(data, t)
            if i:
                try:
                    os.kill(i[4], signal.SIGKILL)
                except OSError:
                    pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
