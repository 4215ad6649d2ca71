"""Soak: the gateway under mixed load for ten minutes at about 80 % of its maximum.

    python bench/soak.py [--minutes 10] [--rate N] [--share 0.8] [--json bench/soak.json]

Starts, on loopback only, what bench/run.py starts for its pinned gateway: an nginx
backend, and the gateway (`gateway run`, one worker, bench/run.py's generated policy
and real keys) pinned to core 0; the load generator (bench/loadgen.py, its own
process) and the backend share core 1. Then:

1. measures the generator alone against the backend (3 s, full speed), which is what it
   can offer at most, and the gateway's maximum (`--measure-seconds`, full speed, the
   same mix), unless `--rate` gives the rate to hold;
2. runs `--minutes` at `--share` of that maximum, open-loop (a fixed schedule), mixing
   public, reused-token, unique-token (more than the token cache holds), bad-signature
   (401) and upload requests;
3. prints, at the start, each minute and the end, requests by outcome, the rate
   achieved, the gateway's RSS and open descriptors (supervisor and workers, /proc);
4. checks the targets of issue 14 and exits 1 if one is missed.

Every process started is stopped by PID, on error, Ctrl-C and SIGTERM too. Figures also go to
bench/soak.json (not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from run import (
    ROOT,
    Procs,
    children,
    free_port,
    gateway_policy,
    keys_and_tokens,
    need,
    nginx_conf,
    rss_kib,
    wait_http,
    workdir,
)

GATEWAY_CORE, LOAD_CORE = "0", "1"
LOADGEN = Path(__file__).with_name("loadgen.py")
# After the load stops: upstream connections idle this long are closed (3 s idle
# timeout and a 1 s sweep, gateway/proxy/upstream.py), client ones at once.
SETTLE_SECONDS = 6.0
RSS_GROWTH = 0.05  # the target
# Connections being replaced at the moment of a sample (the generator closes each after
# 100 requests and opens another at once; the gateway may accept the new one before it
# has seen the old one close): each may count twice, client and upstream side.
RECYCLING = 8


@dataclass(frozen=True)
class Sample:
    """The gateway's processes at one moment, from /proc."""

    rss_kib: dict[int, int]
    fds: dict[int, int]

    @property
    def rss(self) -> int:
        return sum(self.rss_kib.values())

    @property
    def fd_total(self) -> int:
        return sum(self.fds.values())


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0  # gone


def rss_or_zero(pid: int) -> int:
    try:
        return rss_kib(pid)
    except OSError:
        return 0  # gone: a dead gateway must fail the checks, not stop the soak


def sample(supervisor: int) -> Sample:
    pids = [supervisor, *children(supervisor)]
    return Sample({p: rss_or_zero(p) for p in pids}, {p: fd_count(p) for p in pids})


def idle_fds(supervisor: int) -> int:
    """The fewest descriptors over three looks 0.5 s apart: a key-file refresh or a
    metrics scrape may hold one for a moment; a leaked one stays in all three."""
    counts = []
    for _ in range(3):
        counts.append(sample(supervisor).fd_total)
        time.sleep(0.5)
    return min(counts)


def loadgen(procs: Procs, port: int, tokens: Path, seconds: float, **opts: object) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(LOADGEN), str(port), str(tokens), "--seconds", str(seconds)]
    for name, value in opts.items():
        flag = "--" + name.replace("_", "-")
        cmd += [flag] if value is True else [flag, str(value)]
    return procs.start(cmd, LOAD_CORE, stdout=subprocess.PIPE, start_new_session=True)


def lines(proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    """Every report of a generator run that is over (it prints little)."""
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"soak: the load generator failed ({proc.returncode})")
    return [json.loads(line) for line in out.splitlines()]


def relay(proc: subprocess.Popen[bytes], to: queue.Queue[bytes | None]) -> None:
    """Each line the process prints, then None at its end."""
    for raw in proc.stdout or ():
        to.put(raw)
    to.put(None)


def errors(outcomes: dict[str, dict[str, int]]) -> dict[str, int]:
    """Every outcome but "ok", summed over the kinds of request."""
    found: dict[str, int] = {}
    for per_kind in outcomes.values():
        for outcome, n in per_kind.items():
            if outcome != "ok":
                found[outcome] = found.get(outcome, 0) + n
    return found


def row(label: str, report: dict[str, Any] | None, s: Sample) -> dict[str, Any]:
    """Print one line of the table and return its figures."""
    if report is None:
        done, due, rate, p50, p99, errs = 0, 0.0, 0.0, None, None, {}
    else:
        interval = report["interval"]
        done, rate, p50, p99 = report["completed"], interval["rate"], interval["p50_ms"], interval["p99_ms"]
        # Offered (due) against achieved: an open-loop schedule falling behind shows here.
        due = interval["due"] / max(interval["seconds"], 1e-9)
        errs = errors(report["outcomes"])

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    err_text = ", ".join(f"{k} {v}" for k, v in sorted(errs.items())) or "0"
    print(
        f"{label:>6} {done:>10} {due:>7.0f} {rate:>7.0f} {fmt(p50):>7} {fmt(p99):>7}"
        f" {s.rss / 1024:>8.1f} {s.fd_total:>5}  {err_text}",
        flush=True,
    )
    return {
        "at": label,
        "completed": done,
        "due_rate": round(due, 1),
        "rate": rate,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": errs,
        "rss_kib": s.rss,
        "rss_kib_by_pid": {str(p): v for p, v in s.rss_kib.items()},
        "fds": s.fd_total,
        "fds_by_pid": {str(p): v for p, v in s.fds.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=0.0, help="hold this rate; default: --share of the measured maximum")
    ap.add_argument("--share", type=float, default=0.8)
    ap.add_argument("--measure-seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--report-every", type=float, default=60.0, help="seconds between rows")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "soak.json")
    args = ap.parse_args()
    nginx = need("nginx", "nginx-light")
    need("taskset", "util-linux")
    procs = Procs()

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # the same way out as Ctrl-C: through `finally`

    signal.signal(signal.SIGTERM, stop)
    with workdir() as work:
        try:
            return soak(args, work, procs, nginx)
        except KeyboardInterrupt:
            print("\nsoak: interrupted; stopping what it started", file=sys.stderr)
            return 130
        finally:
            procs.stop_all()


def soak(args: argparse.Namespace, work: Path, procs: Procs, nginx: str) -> int:
    backend, port, admin = free_port(), free_port(), free_port()
    conf = nginx_conf(
        work,
        "backend",
        f"""server {{
    listen 127.0.0.1:{backend} reuseport backlog=4096;
    client_max_body_size 0;
    location / {{ return 200 "ok\\n"; }}
  }}""",
    )
    # Own sessions: Ctrl-C reaches this script alone, which then stops each by PID,
    # the generator first, instead of every process at once in no order.
    procs.start([nginx, "-c", str(conf), "-e", str(work / "backend.stderr")], LOAD_CORE, start_new_session=True)
    minted = keys_and_tokens(work)
    reused = minted["reused"]
    assert isinstance(reused, dict)
    tokens = work / "tokens.json"
    tokens.write_text(json.dumps({"reused": list(reused.values()), "unique": minted["unique"], "bad": minted["bad"]}))
    policy = gateway_policy(work, port, admin, backend, routes=1)
    log = (work / "gateway.log").open("wb")
    gw = procs.start(
        [sys.executable, "-m", "gateway", "run", "--config", str(policy), "--log-level", "warning"],
        GATEWAY_CORE,
        stdout=subprocess.DEVNULL,  # the access log: a line per request, not what a soak measures
        stderr=log,
        cwd=str(ROOT),
        start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{admin}/readyz")
    wait_http(f"http://127.0.0.1:{backend}/")
    if gw.poll() is not None:
        # The work directory goes with this process: show the log's end, not its path.
        tail = (work / "gateway.log").read_text(errors="replace").splitlines()[-20:]
        raise SystemExit("\n".join([f"soak: the gateway exited ({gw.returncode}):", *tail]))
    gen = dict(connections=args.connections, report_every=3600)

    # What the generator can offer, against the backend alone: every answer counts.
    alone = lines(loadgen(procs, backend, tokens, 3, any_status=True, **gen))[-1]
    capacity = alone["completed"] / alone["interval"]["seconds"]
    print(f"load generator alone (against the backend, 3 s): {capacity:.0f} req/s")
    if args.rate:
        rate, maximum = args.rate, None
        lines(loadgen(procs, port, tokens, 3, rate=rate, **gen))  # warm-up: keys, pools, caches
    else:
        full = lines(loadgen(procs, port, tokens, args.measure_seconds, **gen))[-1]
        maximum = full["completed"] / full["interval"]["seconds"]
        rate = args.share * maximum
        print(
            f"gateway maximum (mixed load, {args.measure_seconds:g} s, {args.connections} connections): "
            f"{maximum:.0f} req/s, errors {errors(full['outcomes']) or 0}"
        )
        if maximum > 0.9 * capacity:
            print("  warning: close to what the generator alone can do; the maximum may be the generator's")
    print(f"soak: {args.minutes:g} min at {rate:.0f} req/s, {args.connections} connections, open-loop")
    if rate > 0.9 * capacity:
        print("  warning: above 90 % of what the generator alone can do; it may fall behind (rows: due/s, req/s)")

    time.sleep(SETTLE_SECONDS)
    fds_before = idle_fds(gw.pid)
    workers_before = sorted(children(gw.pid))
    print(
        f"\n{'at':>6} {'requests':>10} {'due/s':>7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'RSS MiB':>8}"
        f" {'fds':>5}  errors"
    )
    rows = [row("start", None, sample(gw.pid))]
    run = loadgen(procs, port, tokens, args.minutes * 60, rate=rate, **{**gen, "report_every": args.report_every})
    assert run.stdout is not None
    reports: list[dict[str, Any]] = []
    # The generator's lines arrive through a thread, so that this one samples the
    # gateway every second meanwhile (the peak of descriptors under load falls between
    # rows) and stays the one that Ctrl-C interrupts.
    pending: queue.Queue[bytes | None] = queue.Queue()
    threading.Thread(target=relay, args=(run, pending), daemon=True).start()
    started = time.monotonic()
    series: list[tuple[float, int, int]] = []  # seconds into the soak, RSS KiB, descriptors
    while True:
        try:
            raw = pending.get(timeout=1.0)
        except queue.Empty:
            now = sample(gw.pid)
            series.append((round(time.monotonic() - started, 1), now.rss, now.fd_total))
            continue
        if raw is None:
            break
        report = json.loads(raw)
        reports.append(report)
        t = report["t"]
        label = "end" if report["final"] else f"{t / 60:.0f} min" if args.report_every % 60 == 0 else f"{t:.0f} s"
        rows.append({**row(label, report, sample(gw.pid)), "t": t, "interval": report["interval"]})
    if run.wait() != 0 or not reports or not reports[-1]["final"]:
        raise SystemExit(f"soak: the load generator failed ({run.returncode})")
    time.sleep(SETTLE_SECONDS)
    fds_after = idle_fds(gw.pid)
    workers_after = sorted(children(gw.pid))
    final = reports[-1]

    # The targets. RSS: the end row (sampled as the load ends) against the first row a
    # minute or more into the load (with --minutes 1, the same row); growth only.
    first = next((r for r in rows[1:] if r["t"] >= 60), rows[-1])
    growth = rows[-1]["rss_kib"] / first["rss_kib"] - 1 if first["rss_kib"] else float("inf")
    errs = errors(final["outcomes"])
    under_load = max((fds for _, _, fds in series), default=0)
    # Flat, at idle: exactly the count before the soak (tolerance 0), since then the
    # gateway holds no connection at all (SETTLE_SECONDS). Under load: each client
    # connection is one descriptor and holds at most one upstream connection (one
    # origin here), plus those being replaced. Beyond either, a descriptor outlived
    # its connection.
    fd_bound = fds_before + 2 * (args.connections + RECYCLING)
    checks = {
        "0 errors": (not errs, f"{sum(errs.values())} of {final['completed']} requests"),
        f"RSS within {RSS_GROWTH:.0%} of minute 1": (
            growth <= RSS_GROWTH,
            f"{first['rss_kib'] / 1024:.1f} -> {rows[-1]['rss_kib'] / 1024:.1f} MiB ({growth:+.1%})",
        ),
        "descriptors flat at idle": (fds_after == fds_before, f"{fds_before} before the soak, {fds_after} after"),
        "descriptors under load bounded": (
            under_load <= fd_bound,
            f"at most {under_load} in {len(series)} samples, 1 s apart; bound {fds_before} idle"
            f" + 2 x ({args.connections} connections + {RECYCLING} being replaced) = {fd_bound}",
        ),
        "no worker restarted": (workers_after == workers_before, f"workers {workers_before} -> {workers_after}"),
    }
    print()
    for name, (ok, detail) in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    print("requests by kind and outcome:", json.dumps(final["outcomes"]))
    report_json = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {
            "minutes": args.minutes,
            "rate": round(rate, 1),
            "share": args.share if maximum is not None else None,
            "connections": args.connections,
        },
        "generator_alone_rps": round(capacity, 1),
        "gateway_maximum_rps": round(maximum, 1) if maximum is not None else None,
        "rows": rows,
        "series": {"fields": ["seconds", "rss_kib", "fds"], "samples": series},
        "outcomes": final["outcomes"],
        "fds_idle": {"before": fds_before, "after": fds_after},
        "checks": {name: {"pass": ok, "detail": detail} for name, (ok, detail) in checks.items()},
    }
    args.json.write_text(json.dumps(report_json, indent=2) + "\n")
    print(f"JSON: {args.json}")
    return 0 if all(ok for ok, _ in checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
