"""Benchmark the gateway against nginx as a plain reverse proxy, in one run.

    python bench/run.py [--rounds 3] [--duration 4] [--connections 32] [--json out.json]

Starts, on loopback only: an nginx backend (small 200, large upload/download), an nginx
plain reverse proxy (the reference), and the gateway with one worker on a generated
policy (plus a second gateway with 1 000 routes). The proxy under test is pinned to
core 0, wrk and the backend to core 1, so figures read "per core". Every scenario runs
as interleaved rounds (A B C … A B C …) and reports its median; each ratio is to the
nginx proxy measured in the same run. Every process started is stopped, by PID, even
on error. Figures are printed, never asserted.

The workers scenario runs two more gateways, `workers: 1` and `workers: 2`, unpinned
(wrk and the backend stay on core 1): requests per second, the CPU time per request of
the whole gateway (supervisor and workers, from /proc), and the share of the machine
each process group took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jwt  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm  # noqa: E402

STREAM_BYTES = 100 * 1024 * 1024
ISSUER = "https://bench.test"
PROXY_CORE, LOAD_CORE = "0", "1"
WORKER_LABEL = {"w1": "1 worker unpinned", "w2": "2 workers unpinned"}


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {tool} (Debian package {package})", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
            check=True,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        path = shutil.which(tool)
    if not path:
        sys.exit(f"bench: {tool} is required (Debian package {package})")
    return path


UNIQUE_TOKENS = 2000


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this run: the kernel may offer a
    port again once the probing socket is closed, before the server given it binds it
    (two gateways were once given the same admin port, and the second one's readiness
    check was answered by the first)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass
class Procs:
    """Every process we start, stopped by PID in reverse order."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, cmd: list[str], core: str | None, **kw: object) -> subprocess.Popen[bytes]:
        """`core` None: unpinned, the scheduler places it."""
        pinned = ["taskset", "-c", core] if core is not None else []
        proc = subprocess.Popen([*pinned, *cmd], **kw)  # type: ignore[call-overload]
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.started):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads (0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15)


def children(pid: int) -> list[int]:
    """The processes `pid` started (a gateway supervisor's workers, nginx's workers)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return found


def machine_idle() -> float:
    """Seconds all CPUs spent idle (idle + iowait), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return (int(fields[3]) + int(fields[4])) / _TICK


def group_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of `pid` and of each process it started, by pid."""
    return {p: cpu_seconds(p) for p in (pid, *children(pid))}


def wait_http(url: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback URL we built
                if r.status < 500:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"bench: {url} did not come up")


def nginx_conf(work: Path, name: str, body: str) -> Path:
    conf = work / f"{name}.conf"
    conf.write_text(
        f"""
daemon off;
worker_processes 1;
pid {work}/{name}.pid;
error_log {work}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/{name}-body;
  proxy_temp_path {work}/{name}-proxy;
  fastcgi_temp_path {work}/{name}-fcgi;
  uwsgi_temp_path {work}/{name}-uwsgi;
  scgi_temp_path {work}/{name}-scgi;
  keepalive_requests 1000000;
  {body}
}}
"""
    )
    return conf


def keys_and_tokens(work: Path) -> dict[str, object]:
    private = {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }
    converters = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}
    jwks = []
    for alg, key in private.items():
        jwk = converters[alg].to_jwk(key.public_key(), as_dict=True)  # type: ignore[attr-defined]
        jwks.append({**jwk, "kid": alg.lower(), "alg": alg, "use": "sig"})
    (work / "jwks.json").write_text(json.dumps({"keys": jwks}))
    now = int(time.time())

    def mint(alg: str, sub: str) -> str:
        claims = {"iss": ISSUER, "aud": "bench", "sub": sub, "iat": now, "exp": now + 3600, "scope": "read"}
        return jwt.encode(claims, private[alg], algorithm=alg, headers={"kid": alg.lower()})

    reused = {alg: mint(alg, "service-client") for alg in private}
    unique = [mint("RS256", f"user-{i}") for i in range(UNIQUE_TOKENS)]
    bad = []
    for token in unique[:500]:
        head, body, sig = token.split(".")
        bad.append(f"{head}.{body}.{sig[:-8]}{'A' * 8 if not sig.endswith('A' * 8) else 'B' * 8}")
    return {"reused": reused, "unique": unique, "bad": bad}


def gateway_policy(work: Path, port: int, admin: int, backend: int, routes: int, workers: int = 1) -> Path:
    lines = [
        f"listen: 127.0.0.1:{port}",
        f"admin: {{listen: 127.0.0.1:{admin}}}",
        f"server: {{workers: {workers}}}",
        "access_log: {format: json}",
        # Half the unique-token pool, which wrk cycles through in order: every unique
        # token is a cache miss (LRU), so that scenario verifies on every request.
        f"token_cache: {{max_entries: {UNIQUE_TOKENS // 2}}}",
        "providers:",
        "  bench:",
        f"    issuer: {ISSUER}",
        "    audiences: [bench]",
        "    algorithms: [RS256, ES256, EdDSA]",
        f"    keys: [{{jwks_file: {work}/jwks.json}}]",
        "routes:",
    ]
    up = f"http://127.0.0.1:{backend}"
    for i in range(routes - 1):
        lines.append(f"  - {{name: filler-{i}, match: {{prefix: /filler/{i}}}, upstream: '{up}', auth: public}}")
    lines += [
        f"  - {{name: public, match: {{prefix: /public}}, upstream: '{up}', auth: public}}",
        f"  - {{name: jwt, match: {{prefix: /jwt}}, upstream: '{up}', auth: {{any_of: [bench], scopes: [read]}}}}",
        f"  - {{name: stream, match: {{prefix: /stream}}, upstream: '{up}', auth: public}}",
    ]
    path = work / f"gateway-{routes}-w{workers}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def lua_header(work: Path, name: str, token: str) -> Path:
    script = work / f"{name}.lua"
    script.write_text(f'wrk.headers["Authorization"] = "Bearer {token}"\n')
    return script


def lua_pool(work: Path, name: str, tokens: list[str]) -> Path:
    pool = work / f"{name}.txt"
    pool.write_text("\n".join(tokens) + "\n")
    script = work / f"{name}.lua"
    script.write_text(
        f"""
local tokens = {{}}
for line in io.lines("{pool}") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format(nil, nil, {{["Authorization"] = "Bearer " .. tokens[(i % #tokens) + 1]}})
end
"""
    )
    return script


_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def cache_misses(admin: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:  # loopback URL we built
        text = r.read().decode()
    found = re.search(r"^gateway_token_cache_misses_total (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else float("nan")


def match_cost(policy: Path) -> float:
    """Microseconds per route lookup of the measured path, in this process."""
    from gateway.policy import load_policy  # only this figure needs the package

    table = load_policy(str(policy)).table
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        table.match("GET", "127.0.0.1", "/public/x")
    return (time.perf_counter() - t0) / n * 1e6


def run_wrk(wrk: str, url: str, duration: int, connections: int, script: Path | None) -> dict[str, float]:
    cmd = ["taskset", "-c", LOAD_CORE, wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    done = subprocess.run([*cmd, url], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench: wrk failed on {url}: {done.stdout.strip()} {done.stderr.strip()}")
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)", out)
        lat[pct] = float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")
    return {
        "rps": rps,
        "requests": total,
        "p50": lat["50"],
        "p99": lat["99"],
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


@dataclass(frozen=True)
class Accounted:
    """Whose CPU a wrk run is charged to: the proxy under test (a process group), the backend."""

    proxy: int
    backend: int


def measured(
    wrk: str, url: str, duration: int, connections: int, script: Path | None, who: Accounted
) -> dict[str, float]:
    """`run_wrk`, plus the CPU seconds each process group used meanwhile: the proxy (its
    supervisor or master and every worker), the backend, and wrk (our only child that
    ends during the run, so the growth of RUSAGE_CHILDREN)."""
    proxy, backend = group_cpu(who.proxy), group_cpu(who.backend)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    idle = machine_idle()
    t0 = time.perf_counter()
    out = run_wrk(wrk, url, duration, connections, script)
    wall = time.perf_counter() - t0
    out["cpu_idle"] = machine_idle() - idle
    kids_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    proxy_after, backend_after = group_cpu(who.proxy), group_cpu(who.backend)
    by_process = {pid: cpu - proxy.get(pid, 0.0) for pid, cpu in proxy_after.items()}
    out["wall"] = wall
    out["cpu_proxy"] = sum(by_process.values())
    out["cpu_proxy_main"] = by_process.get(who.proxy, 0.0)  # supervisor (or nginx master) alone
    # The busiest worker's part of the workers' CPU: 0.5 is an even split of two.
    workers = sorted((cpu for pid, cpu in by_process.items() if pid != who.proxy), reverse=True)
    out["busiest_worker_share"] = workers[0] / sum(workers) if workers and sum(workers) > 0 else float("nan")
    out["cpu_backend"] = sum(backend_after.values()) - sum(backend.values())
    out["cpu_wrk"] = (kids_after.ru_utime + kids_after.ru_stime) - (kids.ru_utime + kids.ru_stime)
    return out


def workers_of(supervisor: int) -> int:
    """The one worker of a `workers: 1` gateway: the process that serves (and so the one
    whose memory the RSS figures are about; the supervisor's is printed apart)."""
    (worker,) = children(supervisor)
    return worker


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def stream(curl: str, url: str, upload: Path | None) -> float:
    """MB/s for one 100 MB transfer through `url`."""
    cmd = ["taskset", "-c", LOAD_CORE, curl, "-s", "-o", "/dev/null", "-w", "%{http_code}"]
    if upload is not None:
        cmd += ["-H", "Expect:", "--data-binary", f"@{upload}"]
    t0 = time.perf_counter()
    code = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    elapsed = time.perf_counter() - t0
    if code != "200":
        raise SystemExit(f"bench: streaming through {url} answered {code}")
    return STREAM_BYTES / elapsed / 1e6


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as d:
        # nginx workers may run as an unprivileged user: they must read the files here.
        os.chmod(d, 0o755)
        yield Path(d)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "3")))
    ap.add_argument("--duration", type=int, default=int(os.environ.get("BENCH_DURATION", "4")))
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results.json")
    args = ap.parse_args()
    wrk = need("wrk", "wrk")
    nginx = need("nginx", "nginx-light")
    curl = need("curl", "curl")
    need("taskset", "util-linux")
    procs = Procs()
    with workdir() as work:
        try:
            return _run(args, work, procs, wrk, nginx, curl)
        finally:
            procs.stop_all()


def _run(args: argparse.Namespace, work: Path, procs: Procs, wrk: str, nginx: str, curl: str) -> int:
    backend, proxy = free_port(), free_port()
    big = work / "big.bin"
    with big.open("wb") as f:
        f.truncate(STREAM_BYTES)
    big.chmod(0o644)
    backend_conf = nginx_conf(
        work,
        "backend",
        f"""server {{
    listen 127.0.0.1:{backend} reuseport backlog=4096;
    client_max_body_size 0;
    location / {{ return 200 "ok\\n"; }}
    location /stream/down {{ alias {big}; }}
    location /stream/up {{ return 200 "ok\\n"; }}
  }}""",
    )
    proxy_conf = nginx_conf(
        work,
        "proxy",
        f"""upstream backend {{ server 127.0.0.1:{backend}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{proxy} reuseport backlog=4096;
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}""",
    )
    backend_proc = procs.start([nginx, "-c", str(backend_conf), "-e", str(work / "backend.stderr")], LOAD_CORE)
    proxy_proc = procs.start([nginx, "-c", str(proxy_conf), "-e", str(work / "proxy.stderr")], PROXY_CORE)
    tokens = keys_and_tokens(work)
    gateways: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    admins: dict[str, int] = {}
    # The pinned gateways (1 and 1 000 routes, one worker), and the unpinned ones of the
    # workers scenario (1 route; one worker, two workers).
    for name, routes, workers, core in (
        ("1", 1, 1, PROXY_CORE),
        ("1000", 1000, 1, PROXY_CORE),
        ("w1", 1, 1, None),
        ("w2", 1, 2, None),
    ):
        port, admin = free_port(), free_port()
        policy = gateway_policy(work, port, admin, backend, routes, workers)
        log = (work / f"gateway-{name}.log").open("wb")
        proc = procs.start(
            [sys.executable, "-m", "gateway", "run", "--config", str(policy), "--log-level", "warning"],
            core,
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=str(ROOT),
        )
        gateways[name] = (port, proc)
        wait_http(f"http://127.0.0.1:{admin}/readyz")
        if proc.poll() is not None:
            raise SystemExit(f"bench: gateway {name} exited ({proc.returncode}); see {work}/gateway-{name}.log")
        admins[name] = admin
    wait_http(f"http://127.0.0.1:{proxy}/")
    # The ceiling: the leanest Python proxy on the same parsers, doing none of the work.
    ceiling = free_port()
    ceiling_proc = procs.start(
        [sys.executable, str(ROOT / "bench" / "ceiling.py"), str(ceiling), str(backend)], PROXY_CORE
    )
    wait_http(f"http://127.0.0.1:{ceiling}/public")
    gw_port, gw = gateways["1"]
    many_port, many = gateways["1000"]
    reused = tokens["reused"]
    assert isinstance(reused, dict)
    rs_reused = lua_header(work, "rs", reused["RS256"])
    scenarios: dict[str, tuple[str, Path | None, int]] = {
        "nginx proxy": (f"http://127.0.0.1:{proxy}/public", None, proxy_proc.pid),
        "bare Python proxy": (f"http://127.0.0.1:{ceiling}/public", None, ceiling_proc.pid),
        "public route": (f"http://127.0.0.1:{gw_port}/public", None, gw.pid),
        # Right after the 1-route run, so each round gives a paired comparison.
        "1000 routes, last": (f"http://127.0.0.1:{many_port}/public", None, many.pid),
        "RS256 reused": (f"http://127.0.0.1:{gw_port}/jwt", rs_reused, gw.pid),
        "RS256 unique": (f"http://127.0.0.1:{gw_port}/jwt", lua_pool(work, "unique", tokens["unique"]), gw.pid),  # type: ignore[arg-type]
        "ES256 reused": (f"http://127.0.0.1:{gw_port}/jwt", lua_header(work, "es", reused["ES256"]), gw.pid),
        "EdDSA reused": (f"http://127.0.0.1:{gw_port}/jwt", lua_header(work, "ed", reused["EdDSA"]), gw.pid),
        "bad signatures": (f"http://127.0.0.1:{gw_port}/jwt", lua_pool(work, "bad", tokens["bad"]), gw.pid),  # type: ignore[arg-type]
    }
    # The workers scenario, unpinned; each pair back to back in every round.
    for path, label in (("/public", "public"), ("/jwt", "RS256 reused")):
        for name in ("w1", "w2"):
            port, proc = gateways[name]
            script = rs_reused if path == "/jwt" else None
            scenarios[f"{WORKER_LABEL[name]}, {label}"] = (f"http://127.0.0.1:{port}{path}", script, proc.pid)
    # Warm up every path once (imports, pools, key parsing).
    for url, script, _ in scenarios.values():
        run_wrk(wrk, url, 1, 8, script)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in scenarios}
    worker = workers_of(gw.pid)
    rss_peak_before = rss_kib(worker, "VmHWM")
    unique_misses = 0.0
    for r in range(args.rounds):
        for name, (url, script, pid) in scenarios.items():
            before = cache_misses(admins["1"])
            who = Accounted(pid, backend_proc.pid)
            samples[name].append(measured(wrk, url, args.duration, args.connections, script, who))
            if name == "RS256 unique":
                unique_misses += cache_misses(admins["1"]) - before
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    rss_before_stream = rss_kib(worker)
    streaming = {
        "nginx upload MB/s": statistics.median(
            stream(curl, f"http://127.0.0.1:{proxy}/stream/up", big) for _ in range(3)
        ),
        "gateway upload MB/s": statistics.median(
            stream(curl, f"http://127.0.0.1:{gw_port}/stream/up", big) for _ in range(3)
        ),
        "nginx download MB/s": statistics.median(
            stream(curl, f"http://127.0.0.1:{proxy}/stream/down", None) for _ in range(3)
        ),
        "gateway download MB/s": statistics.median(
            stream(curl, f"http://127.0.0.1:{gw_port}/stream/down", None) for _ in range(3)
        ),
    }
    rss_after_stream = rss_kib(worker)
    peak = rss_kib(worker, "VmHWM")
    supervisor_rss = rss_kib(gw.pid)

    ref = statistics.median(s["rps"] for s in samples["nginx proxy"])
    results = {}
    print()
    print(
        f"{'scenario':36} {'req/s':>9} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}"
        f" {'CPU us/req':>10} {'of it main':>10}"
    )
    for name, runs in samples.items():
        rps = statistics.median(s["rps"] for s in runs)
        p50 = statistics.median(s["p50"] for s in runs) * 1000
        p99 = statistics.median(s["p99"] for s in runs) * 1000
        non2xx = sum(s["non2xx"] for s in runs)
        # The whole proxy: a gateway's supervisor and workers, nginx's master and worker.
        cpu = statistics.median(s["cpu_proxy"] / s["requests"] for s in runs) * 1e6
        main_cpu = statistics.median(s["cpu_proxy_main"] / s["requests"] for s in runs) * 1e6
        results[name] = {
            "rps": round(rps, 1),
            "ratio": round(rps / ref, 3),
            "p50_ms": round(p50, 3),
            "p99_ms": round(p99, 3),
            "non_2xx": int(non2xx),
            "cpu_us_per_request": round(cpu, 1),
            "main_process_cpu_us_per_request": round(main_cpu, 1),
            "rounds": [round(s["rps"], 1) for s in runs],
        }
        line = f"{name:36} {rps:9.0f} {rps / ref:6.3f} {p50:8.2f} {p99:8.2f} {int(non2xx):8d}"
        print(f"{line} {cpu:10.1f} {main_cpu:10.1f}")
    workers_table = workers_report(samples)
    unique_requests = sum(s["requests"] for s in samples["RS256 unique"])
    print(f"\nRS256 unique: {unique_misses / unique_requests:.1%} of requests were token-cache misses (verified)")
    paired = statistics.median(
        m["rps"] / p["rps"] for m, p in zip(samples["1000 routes, last"], samples["public route"], strict=True)
    )
    match_us = {n: match_cost(work / f"gateway-{n}-w1.yaml") for n in (1, 1000)}
    print(
        f"\n1 000 routes vs 1 route: {paired:.3f} (median of per-round ratios; each pair run back to back); "
        f"route matching alone: {match_us[1]:.2f} us vs {match_us[1000]:.2f} us per request"
    )
    print()
    for name, value in streaming.items():
        print(f"{name:24} {value:8.1f}")
    up_ratio = streaming["gateway upload MB/s"] / streaming["nginx upload MB/s"]
    down_ratio = streaming["gateway download MB/s"] / streaming["nginx download MB/s"]
    print(f"streaming ratio to nginx: upload {up_ratio:.2f}, download {down_ratio:.2f}")
    print(
        f"gateway worker RSS: before streaming {rss_before_stream / 1024:.1f} MiB, "
        f"after {rss_after_stream / 1024:.1f} MiB, "
        f"peak {peak / 1024:.1f} MiB (peak before streaming {rss_peak_before / 1024:.1f} MiB); "
        f"supervisor {supervisor_rss / 1024:.1f} MiB"
    )
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"rounds": args.rounds, "duration_s": args.duration, "connections": args.connections},
        "scenarios": results,
        "unique_cache_miss_share": round(unique_misses / unique_requests, 4),
        "routes_1000_vs_1": {
            "paired_ratio": round(paired, 3),
            "match_us": {str(k): round(v, 3) for k, v in match_us.items()},
        },
        "streaming": {
            **{k: round(v, 1) for k, v in streaming.items()},
            "upload_ratio": round(up_ratio, 3),
            "download_ratio": round(down_ratio, 3),
        },  # fmt: skip
        "rss_kib": {
            "before_stream": rss_before_stream,
            "after_stream": rss_after_stream,
            "peak": peak,
            "supervisor": supervisor_rss,
        },
        "workers": workers_table,
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {args.json}")
    return 0


def workers_report(samples: dict[str, list[dict[str, float]]]) -> dict[str, object]:
    """The workers scenario: 2 workers against 1, unpinned, per route; and what share of
    the machine (CPU seconds / (wall seconds x cores)) each process group took."""
    cores = os.cpu_count() or 1
    report: dict[str, object] = {"cores": cores}
    print(f"\nworkers, unpinned (wrk and the backend on core {LOAD_CORE}; {cores} cores)")
    print(
        f"{'route':14} {'workers':>7} {'req/s':>8} {'2 vs 1':>7} {'CPU us/req':>10} {'growth':>7}"
        f" {'gateway':>8} {'wrk':>6} {'backend':>8} {'idle':>6} {'other':>6} {'busiest worker':>14}"
    )
    for label in ("public", "RS256 reused"):
        one, two = (samples[f"{WORKER_LABEL[w]}, {label}"] for w in ("w1", "w2"))
        row: dict[str, object] = {}
        base_rps = statistics.median(s["rps"] for s in one)
        base_cpu = statistics.median(s["cpu_proxy"] / s["requests"] for s in one)
        # Paired per round (each 2-worker run right after its 1-worker run), as 1 000 routes.
        paired = statistics.median(b["rps"] / a["rps"] for a, b in zip(one, two, strict=True))
        for workers, runs in ((1, one), (2, two)):
            rps = statistics.median(s["rps"] for s in runs)
            cpu = statistics.median(s["cpu_proxy"] / s["requests"] for s in runs)
            share = {
                group: statistics.median(s[f"cpu_{group}"] / (s["wall"] * cores) for s in runs)
                for group in ("proxy", "wrk", "backend", "idle")
            }
            busiest = statistics.median(s["busiest_worker_share"] for s in runs)
            # Busy, but not the gateway, wrk or the backend: other processes on the
            # machine (this script's own, other sessions').
            other = max(0.0, 1 - sum(share.values()))
            row[str(workers)] = {
                "rps": round(rps, 1),
                "cpu_us_per_request": round(cpu * 1e6, 1),
                "machine_share": {
                    **{("gateway" if k == "proxy" else k): round(v, 3) for k, v in share.items()},
                    "other": round(other, 3),
                },
                "busiest_worker_share": round(busiest, 3),
                "rounds": [round(s["rps"], 1) for s in runs],
            }
            ratio = f"{rps / base_rps:7.2f}" if workers == 2 else f"{'':7}"
            growth = f"{cpu / base_cpu - 1:+7.1%}" if workers == 2 else f"{'':7}"
            print(
                f"{label:14} {workers:7d} {rps:8.0f} {ratio} {cpu * 1e6:10.1f} {growth}"
                f" {share['proxy']:8.1%} {share['wrk']:6.1%} {share['backend']:8.1%} {share['idle']:6.1%}"
                f" {other:6.1%} {busiest:14.1%}"
            )
        row["ratio"] = round(statistics.median(s["rps"] for s in two) / base_rps, 3)
        row["ratio_paired"] = round(paired, 3)
        row["cpu_growth"] = round(statistics.median(s["cpu_proxy"] / s["requests"] for s in two) / base_cpu - 1, 3)
        report[label] = row
        print(f"{'':14} 2 vs 1 paired per round: {paired:.2f}")
    print("targets: 2 workers >= 1.5 x one worker; CPU per request at most +10 %")
    return report


if __name__ == "__main__":
    raise SystemExit(main())
