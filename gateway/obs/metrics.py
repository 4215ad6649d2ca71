"""Prometheus metrics, in a registry per gateway, with label children bound per route.

Label values come only from the policy (route and provider names) and from closed
vocabularies (methods, status classes, outcomes, reasons), never from request data, so
no client can grow the exposition.
"""

from __future__ import annotations

import bisect
import platform
from collections.abc import Callable, Iterator

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.errors import Reason

UNMATCHED = "_unmatched"  # route names must start with a letter or digit: no collision
PUBLISHED_JWKS = "_jwks"  # the published API-token key set
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Every metric the gateway exports."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # The per-request series (requests, durations, in flight) live in `_HotPath`:
        # plain numbers, no lock per update. prometheus-client takes a mutex on every
        # inc() and observe(); the profile put that at about 5 % of a request.
        self.hot = _HotPath()
        r.register(self.hot)
        self.auth_failures = Counter(
            "gateway_auth_failures", "Requests refused by authentication, by route and reason.", ["route", "reason"],
            registry=r,
        )  # fmt: skip
        self.jwks_fetches = Counter(
            "gateway_jwks_fetches", "Remote key set fetches, by provider and result.", ["provider", "result"],
            registry=r,
        )  # fmt: skip
        self.jwks_keys = Gauge("gateway_jwks_keys", "Verification keys in use, by provider.", ["provider"], registry=r)
        self.jwks_last_success = Gauge(
            "gateway_jwks_last_success_timestamp_seconds",
            "Unix time keys were last loaded successfully, by provider.",
            ["provider"],
            registry=r,
        )
        self.client_connections = Gauge(
            "gateway_client_connections", "Open client connections on the public listener.", registry=r
        )
        self.connections_refused = Counter(
            "gateway_connections_refused",
            "Client connections answered 503 and closed: server.max_connections was reached.",
            registry=r,
        )
        self.config_reloads = Counter(
            "gateway_config_reloads", "Policy reloads (SIGHUP), by result.", ["result"], registry=r
        )
        self.build_info = Gauge(
            "gateway_build_info", "Build information; always 1.", ["version", "python", "aiohttp"], registry=r
        )
        self.build_info.labels(__version__, platform.python_version(), aiohttp.__version__).set(1)
        self.revocation_reloads = Counter(
            "gateway_revocation_reloads",
            "Revocation list loads, by provider and result (failure: the last good list stays).",
            ["provider", "result"],
            registry=r,
        )
        self.revoked_tokens = Gauge(
            "gateway_revoked_tokens",
            "Token ids on the revocation list in force, by provider.",
            ["provider"],
            registry=r,
        )
        self.cache_hits = self.hot.cache_hits
        self.cache_misses = self.hot.cache_misses
        self.cache_entries = Gauge("gateway_token_cache_entries", "Tokens in the verified-token cache.", registry=r)
        for result in ("success", "failure"):
            self.config_reloads.labels(result)

    def route(self, name: str) -> RouteMetrics:
        return RouteMetrics(self, name)

    def in_flight(self, delta: int) -> None:
        self.hot.in_flight += delta

    def provider(self, name: str) -> ProviderMetrics:
        return ProviderMetrics(self, name)

    def revocations(self, provider: str) -> Callable[[bool, int], None]:
        ok = self.revocation_reloads.labels(provider, "success")
        failed = self.revocation_reloads.labels(provider, "failure")
        gauge = self.revoked_tokens.labels(provider)

        def report(success: bool, count: int) -> None:
            (ok if success else failed).inc()
            gauge.set(count)

        return report


class ProviderMetrics:
    """One provider's key metrics, reported to by its key sources."""

    __slots__ = ("_fail", "_keys", "_last", "_ok")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self._ok = metrics.jwks_fetches.labels(name, "success")
        self._fail = metrics.jwks_fetches.labels(name, "failure")
        self._keys = metrics.jwks_keys.labels(name)
        self._last = metrics.jwks_last_success.labels(name)

    def fetched(self, ok: bool) -> None:
        (self._ok if ok else self._fail).inc()

    def keys(self, count: int, loaded: bool) -> None:
        """`loaded`: this change is a successful load (not keys going stale)."""
        self._keys.set(count)
        if loaded:
            self._last.set_to_current_time()


class _Histogram:
    """One histogram series as plain numbers: non-cumulative bucket counts, sum."""

    __slots__ = ("buckets", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(_LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def exposition(self) -> tuple[list[tuple[str, float]], float]:
        out, total = [], 0
        for bound, count in zip((*(str(b) for b in _LATENCY_BUCKETS), "+Inf"), self.buckets, strict=True):
            total += count
            out.append((bound, float(total)))
        return out, self.sum


class _Count:
    """A counter without a lock (see `_HotPath`)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


class _HotPath(Collector):
    """The per-request metrics, exported at scrape time.

    No locks: they are updated by the request handler and read by the /metrics
    handler, and both run on the one event loop thread."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, str], int] = {}  # route, method, class, outcome
        self.duration: dict[str, _Histogram] = {}
        self.upstream: dict[str, _Histogram] = {}
        self.in_flight = 0
        self.cache_hits = _Count()
        self.cache_misses = _Count()

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily | GaugeMetricFamily]:
        requests = CounterMetricFamily(
            "gateway_requests",
            "Requests answered, by route, method, status class and outcome (allowed/denied/error).",
            labels=["route", "method", "status_class", "outcome"],
        )
        for labels, count in self.requests.items():
            requests.add_metric(labels, count)
        yield requests
        for name, text, series in (
            (
                "gateway_request_duration_seconds",
                "Time from request to the end of the response, by route.",
                self.duration,
            ),
            (
                "gateway_upstream_duration_seconds",
                "Time from sending a request upstream to receiving its response headers, by route.",
                self.upstream,
            ),
        ):
            family = HistogramMetricFamily(name, text, labels=["route"])
            for route, histogram in series.items():
                buckets, total = histogram.exposition()
                family.add_metric([route], buckets, total)
            yield family
        yield GaugeMetricFamily("gateway_in_flight_requests", "Requests being handled now.", value=self.in_flight)
        yield CounterMetricFamily("gateway_token_cache_hits", "Verified-token cache hits.", value=self.cache_hits.value)
        yield CounterMetricFamily(
            "gateway_token_cache_misses", "Verified-token cache misses.", value=self.cache_misses.value
        )


class RouteMetrics:
    """One route's series: histograms bound now (so they are exported from the start),
    request counters on first use. Series are shared by name across policy reloads."""

    __slots__ = ("_auth", "_hot", "_metrics", "_name", "_requests", "duration", "upstream")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self._metrics = metrics
        self._name = name
        hot = self._hot = metrics.hot
        self.duration = hot.duration.setdefault(name, _Histogram())
        self.upstream = hot.upstream.setdefault(name, _Histogram())
        self._requests: dict[tuple[str, int, str], tuple[str, str, str, str]] = {}
        self._auth: dict[Reason, Counter] = {}

    def request(self, method: str, status: int, outcome: str) -> None:
        # Keyed by the label, never the raw method: clients choose methods freely.
        label = method if method in METHODS else "OTHER"
        key = (label, status // 100, outcome)
        series = self._requests.get(key)
        if series is None:
            series = self._requests[key] = (self._name, label, f"{status // 100}xx", outcome)
        requests = self._hot.requests
        requests[series] = requests.get(series, 0) + 1

    def auth_failure(self, reason: Reason) -> None:
        child = self._auth.get(reason)
        if child is None:
            child = self._auth[reason] = self._metrics.auth_failures.labels(self._name, reason.ident)
        child.inc()
