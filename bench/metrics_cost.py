"""What the metric updates of one request cost, three ways.

    python bench/metrics_cost.py [--requests 200000] [--rounds 7]

One request's updates, as the handler and the token cache make them: in flight +1, a
cache hit, a request counter, a duration and an upstream observation, in flight -1.

  (a) before  the lock-free `_HotPath` of commit 7808ba9 (plain dicts and lists in one
              process; its hot-path code is copied below, unchanged)
  (b) cells   gateway.obs.metrics today: values in a CellStore, shared with a supervisor
              (anonymous, and file-backed in a temporary directory)
  (c) prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR), prebound
              children, in a subprocess since the variable is read at import

Rounds are interleaved (a b a b ...); the figure is the best round, less the cost of
the same loop doing nothing. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.obs.cells import CellStore  # noqa: E402
from gateway.obs.families import LATENCY_BUCKETS  # noqa: E402
from gateway.obs.metrics import Metrics  # noqa: E402

# Durations spread over the buckets, so the bisection is not always the same.
DURATIONS = [0.0004, 0.0013, 0.003, 0.0075, 0.02, 0.06, 0.3, 1.5]
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# --- (a): the hot path of gateway/obs/metrics.py at 7808ba9, without its collector ----
class _Histogram:
    __slots__ = ("buckets", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


class _HotPath:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.duration: dict[str, _Histogram] = {}
        self.upstream: dict[str, _Histogram] = {}
        self.in_flight = 0
        self.cache_hits = _Count()


class _OldMetrics:
    def __init__(self) -> None:
        self.hot = _HotPath()
        self.cache_hits = self.hot.cache_hits

    def in_flight(self, delta: int) -> None:
        self.hot.in_flight += delta


class _OldRoute:
    __slots__ = ("_hot", "_name", "_requests", "duration", "upstream")

    def __init__(self, metrics: _OldMetrics, name: str) -> None:
        self._name = name
        hot = self._hot = metrics.hot
        self.duration = hot.duration.setdefault(name, _Histogram())
        self.upstream = hot.upstream.setdefault(name, _Histogram())
        self._requests: dict[tuple[str, int, str], tuple[str, str, str, str]] = {}

    def request(self, method: str, status: int, outcome: str) -> None:
        label = method if method in METHODS else "OTHER"
        key = (label, status // 100, outcome)
        series = self._requests.get(key)
        if series is None:
            series = self._requests[key] = (self._name, label, f"{status // 100}xx", outcome)
        requests = self._hot.requests
        requests[series] = requests.get(series, 0) + 1


class _OldRouteOneCall(_OldRoute):
    """Not in 7808ba9: (a) with the handler's three calls merged into one, as (b) does,
    to tell what the merge saves from what the cells cost."""

    __slots__ = ()

    def answered(self, method: str, status: int, outcome: str, seconds: float, upstream: float | None) -> None:
        label = method if method in METHODS else "OTHER"
        key = (label, status // 100, outcome)
        series = self._requests.get(key)
        if series is None:
            series = self._requests[key] = (self._name, label, f"{status // 100}xx", outcome)
        requests = self._hot.requests
        requests[series] = requests.get(series, 0) + 1
        duration = self.duration
        duration.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        duration.sum += seconds
        if upstream is not None:
            histogram = self.upstream
            histogram.buckets[bisect.bisect_left(LATENCY_BUCKETS, upstream)] += 1
            histogram.sum += upstream


# --- the measurement --------------------------------------------------------------------
Loop = Callable[[list[float]], None]


def loop_for(metrics: _OldMetrics | Metrics) -> Loop:
    route = _OldRoute(metrics, "orders") if isinstance(metrics, _OldMetrics) else metrics.route("orders")
    in_flight, hit, request = metrics.in_flight, metrics.cache_hits.inc, route.request
    duration, upstream = route.duration.observe, route.upstream.observe

    def run(durations: list[float]) -> None:
        for seconds in durations:
            in_flight(1)
            hit()
            request("GET", 200, "allowed")
            duration(seconds)
            upstream(seconds)
            in_flight(-1)

    return run


def answered_loop(metrics: _OldMetrics | Metrics) -> Loop:
    route = _OldRouteOneCall(metrics, "orders") if isinstance(metrics, _OldMetrics) else metrics.route("orders")
    in_flight, hit, answered = metrics.in_flight, metrics.cache_hits.inc, route.answered

    def run(durations: list[float]) -> None:
        for seconds in durations:
            in_flight(1)
            hit()
            answered("GET", 200, "allowed", seconds, seconds)
            in_flight(-1)

    return run


def empty_loop(durations: list[float]) -> None:
    for _ in durations:
        pass


def best_ns(loops: dict[str, Loop], requests: int, rounds: int) -> dict[str, float]:
    durations = (DURATIONS * (requests // len(DURATIONS) + 1))[:requests]
    best = {name: float("inf") for name in loops}
    for _ in range(rounds):
        for name, run in loops.items():
            start = time.perf_counter_ns()
            run(durations)
            best[name] = min(best[name], (time.perf_counter_ns() - start) / requests)
    empty = best.pop("empty")
    return {name: ns - empty for name, ns in best.items()}


def prometheus_multiprocess(requests: int, rounds: int) -> float:
    """Runs in the child, with PROMETHEUS_MULTIPROC_DIR set before the import."""
    from prometheus_client import Counter, Gauge, Histogram

    labels = ("route", "method", "status_class", "outcome")
    request = Counter("gateway_requests", "x", labels).labels("orders", "GET", "2xx", "allowed").inc
    duration = Histogram("gateway_request_duration_seconds", "x", ["route"], buckets=LATENCY_BUCKETS)
    upstream = Histogram("gateway_upstream_duration_seconds", "x", ["route"], buckets=LATENCY_BUCKETS)
    observe_duration, observe_upstream = duration.labels("orders").observe, upstream.labels("orders").observe
    in_flight = Gauge("gateway_in_flight_requests", "x", multiprocess_mode="livesum")
    hit = Counter("gateway_token_cache_hits", "x").inc

    def run(durations: list[float]) -> None:
        for seconds in durations:
            in_flight.inc()
            hit()
            request()
            observe_duration(seconds)
            observe_upstream(seconds)
            in_flight.dec()

    return best_ns({"prometheus": run, "empty": empty_loop}, requests, rounds)["prometheus"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--prometheus-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prometheus_child:
        print(json.dumps(prometheus_multiprocess(args.requests, args.rounds)))
        return
    with tempfile.TemporaryDirectory(prefix="gateway-metrics-cost-") as tmp:
        file_store = CellStore(Path(tmp, "worker-0.cells"))
        loops = {
            "before": loop_for(_OldMetrics()),
            "before_one_call": answered_loop(_OldMetrics()),
            "cells_calls": loop_for(Metrics()),
            "cells": answered_loop(Metrics()),
            "cells_file": answered_loop(Metrics(file_store)),
            "empty": empty_loop,
        }
        ns = best_ns(loops, args.requests, args.rounds)
        prom_dir = Path(tmp, "prometheus")
        prom_dir.mkdir()
        child = subprocess.run(  # noqa: S603 - this script, with our own arguments
            [sys.executable, __file__, "--prometheus-child", f"--requests={args.requests // 4}",
             f"--rounds={args.rounds}"],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom_dir)},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        ns["prometheus_multiprocess"] = float(child.stdout)
        file_store.close()
    print(f"Python {platform.python_version()}, {platform.machine()}; {args.requests} requests x {args.rounds} rounds")
    print("metric updates of one request (in flight +1/-1, cache hit, request counter, 2 observations),")
    print("less the empty loop; ratio to (a) as the handler called it at 7808ba9:")
    base = ns["before"]
    for name, label in (
        ("before", "(a) before: _HotPath, dicts and lists"),
        ("before_one_call", "(a) before, merged into 1 call"),
        ("cells_calls", "(b) cells, as (a): 3 calls"),
        ("cells", "(b) cells, answered(): 1 call"),
        ("cells_file", "(b) cells, answered(), file-backed"),
        ("prometheus_multiprocess", "(c) prometheus-client multiprocess"),
    ):
        print(f"  {label:40} {ns[name]:7.0f} ns   x{ns[name] / base:.2f}")


if __name__ == "__main__":
    main()
