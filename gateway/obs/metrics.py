"""Prometheus metrics, every value a cell in a `CellStore`, with cells bound per route.

Label values come only from the policy (route and provider names) and from closed
vocabularies (methods, status classes, outcomes, reasons), never from request data, so
no client can grow the exposition.

Counters and histograms are updated in place in the store, so a worker's counts are in
shared memory the moment they are made (cells.py). Gauges matter only when scraped: a
function gauge, and the in-flight count, are written to their cells by `sample()`,
which the in-process admin calls before rendering and a worker before the supervisor
reads its file.
"""

from __future__ import annotations

import platform
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Generic, TypeVar

import aiohttp

from gateway import __version__
from gateway.errors import Reason
from gateway.obs import families as f
from gateway.obs.cells import CellStore
from gateway.obs.exposition import render
from gateway.obs.families import LATENCY_BUCKETS as _LATENCY_BUCKETS
from gateway.obs.families import Family, histogram_keys, scalar_key

# The TLS label values (gateway/tls/handshake.py keeps to these; a test checks).
TLS_VERSIONS = ("1.2", "1.3", "other")
TLS_FAILURE_REASONS = (
    "protocol_version", "not_tls", "no_shared_cipher", "certificate_refused", "no_client_cert",
    "bad_client_cert", "timeout", "closed", "other",
)  # fmt: skip
UNMATCHED = "_unmatched"  # route names must start with a letter or digit: no collision
PUBLISHED_JWKS = "_jwks"  # the published API-token key set
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SUM = len(_LATENCY_BUCKETS) + 1  # a histogram's sum cell, after its buckets


class Count:
    """A counter's cell. No lock: one writer per store (the event-loop thread), and
    `inc()` takes no amount, so it never goes backwards."""

    __slots__ = ("_i", "_v")

    def __init__(self, series: _Series, family: Family, values: tuple[str, ...] = ()) -> None:
        self._i = series.bind((scalar_key(family, *values),))
        self._v = series.store.values

    def inc(self) -> None:
        # 1.0, not 1: float + float is an add the interpreter specialises (float + int
        # is not), about 10 ns of the ~60 an update costs.
        self._v[self._i] += 1.0


class Level:
    """A gauge's cell: set directly, or by a function evaluated at `sample()`."""

    __slots__ = ("_function", "_i", "_series", "_v")

    def __init__(self, series: _Series, family: Family, values: tuple[str, ...] = ()) -> None:
        self._i = series.bind((scalar_key(family, *values),))
        self._v = series.store.values
        self._series = series
        self._function: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self._v[self._i] = value

    def set_to_current_time(self) -> None:
        self._v[self._i] = time.time()

    def set_function(self, function: Callable[[], float]) -> None:
        """Replaces the previous function (a reload rebuilds what it reads)."""
        if self._function is None:
            self._series.sampled.append(self)
        self._function = function

    def sample(self) -> None:
        if self._function is not None:
            self._v[self._i] = self._function()


class Histogram:
    """One histogram series: a cell per bucket (not cumulative), then the sum."""

    __slots__ = ("_sum", "_v", "first")

    def __init__(self, series: _Series, family: Family, *values: str) -> None:
        assert family.buckets == _LATENCY_BUCKETS  # observe() bisects these
        self.first = series.bind(histogram_keys(family, *values))
        self._sum = self.first + _SUM
        self._v = series.store.values

    def observe(self, seconds: float) -> None:
        v = self._v
        v[self.first + bisect_left(_LATENCY_BUCKETS, seconds)] += 1.0
        v[self._sum] += seconds


C = TypeVar("C", Count, Level)


class Labelled(Generic[C]):
    """A family with labels: `labels(*values)` binds (once) and returns a child."""

    __slots__ = ("_children", "_family", "_make", "_series")

    def __init__(self, series: _Series, family: Family, make: type[C]) -> None:
        self._series, self._family = series, family
        self._make: type[C] = make
        self._children: dict[tuple[str, ...], C] = {}

    def labels(self, *values: str) -> C:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._family.labels):
                raise ValueError(f"{self._family.name} takes labels {self._family.labels}, not {values}")
            child = self._children[values] = self._make(self._series, self._family, values)
        return child


class _Series:
    """Cells bound by key in one store: a series is made once and shared after that."""

    def __init__(self, store: CellStore | None) -> None:
        self.store = store if store is not None else CellStore()
        self._index: dict[str, int] = {}
        self.sampled: list[Level] = []
        info = Labelled(self, f.BUILD_INFO, Level)
        info.labels(__version__, platform.python_version(), aiohttp.__version__).set(1)

    def bind(self, keys: tuple[str, ...]) -> int:
        """The index in `store.values` of the first of these cells, made if new."""
        index = self._index.get(keys[0])
        if index is None:
            index = self._index[keys[0]] = self.store.add(keys)
        return index

    def sample(self) -> None:
        """Evaluate the function gauges into their cells."""
        for level in self.sampled:
            level.sample()

    def cells(self) -> dict[str, float]:
        """Every cell, the function gauges sampled now: what `render` takes."""
        self.sample()
        return self.store.cells()

    def exposition(self) -> bytes:
        """This process's metrics alone (the in-process admin's /metrics)."""
        return render([(None, self.cells())], {})


class Metrics(_Series):
    """Every metric a gateway process exports. With `CellStore(path)`, a worker's: the
    supervisor then counts policy reloads, and the worker must not."""

    def __init__(self, store: CellStore | None = None) -> None:
        super().__init__(store)
        self._in_flight = 0
        self._in_flight_cell = Level(self, f.IN_FLIGHT)
        self.auth_failures = Labelled(self, f.AUTH_FAILURES, Count)
        self.jwks_fetches = Labelled(self, f.JWKS_FETCHES, Count)
        self.jwks_keys = Labelled(self, f.JWKS_KEYS, Level)
        self.jwks_last_success = Labelled(self, f.JWKS_LAST_SUCCESS, Level)
        self.client_connections = Level(self, f.CLIENT_CONNECTIONS)
        self.connections_refused = Count(self, f.CONNECTIONS_REFUSED)
        self.config_reloads = Labelled(self, f.CONFIG_RELOADS, Count)
        self.revocation_reloads = Labelled(self, f.REVOCATION_RELOADS, Count)
        self.revoked_tokens = Labelled(self, f.REVOKED_TOKENS, Level)
        self.cache_hits = Count(self, f.CACHE_HITS)
        self.cache_misses = Count(self, f.CACHE_MISSES)
        self.cache_entries = Level(self, f.CACHE_ENTRIES)
        self.websockets_open = Level(self, f.WEBSOCKETS_OPEN)
        for result in ("success", "failure"):
            self.config_reloads.labels(result)

    def route(self, name: str) -> RouteMetrics:
        return RouteMetrics(self, name)

    def in_flight(self, delta: int) -> None:
        # A plain number, written to its cell by sample(): a gauge is only read at a
        # scrape, and a dead worker's gauges are dropped, so it needs no shared write.
        self._in_flight += delta

    def sample(self) -> None:
        self._in_flight_cell.set(self._in_flight)
        super().sample()

    def provider(self, name: str) -> ProviderMetrics:
        return ProviderMetrics(self, name)

    def tls(self, listener: str) -> TlsMetrics:
        return TlsMetrics(self, listener)

    def revocations(self, provider: str) -> Callable[[bool, int], None]:
        ok = self.revocation_reloads.labels(provider, "success")
        failed = self.revocation_reloads.labels(provider, "failure")
        gauge = self.revoked_tokens.labels(provider)

        def report(success: bool, count: int) -> None:
            (ok if success else failed).inc()
            gauge.set(count)

        return report


class SupervisorMetrics(_Series):
    """The supervisor's own series, rendered beside its workers' cells."""

    def __init__(self, store: CellStore | None = None) -> None:
        super().__init__(store)
        self.worker_restarts = Count(self, f.WORKER_RESTARTS)
        self.workers = Level(self, f.WORKERS)
        self.config_reloads = Labelled(self, f.CONFIG_RELOADS, Count)
        for result in ("success", "failure"):
            self.config_reloads.labels(result)


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


class TlsMetrics:
    """One listener's TLS series, every label value bound at once (closed sets), so
    that a rate over a reason that never happened is 0, not absent."""

    __slots__ = ("_expiry", "_failed", "_handshakes", "_reloads")

    def __init__(self, metrics: Metrics, listener: str) -> None:
        handshakes = Labelled(metrics, f.TLS_HANDSHAKES, Count)
        failures = Labelled(metrics, f.TLS_HANDSHAKE_FAILURES, Count)
        reloads = Labelled(metrics, f.TLS_CERTIFICATE_RELOADS, Count)
        self._handshakes = {v: handshakes.labels(listener, v) for v in TLS_VERSIONS}
        self._failed = {r: failures.labels(listener, r) for r in TLS_FAILURE_REASONS}
        self._reloads = {ok: reloads.labels(listener, "success" if ok else "failure") for ok in (True, False)}
        self._expiry = Labelled(metrics, f.TLS_CERTIFICATE_EXPIRY, Level).labels(listener)

    def handshake(self, version: str) -> None:
        self._handshakes.get(version, self._handshakes["other"]).inc()

    def handshake_failed(self, reason: str) -> None:
        self._failed.get(reason, self._failed["other"]).inc()

    def reloaded(self, ok: bool) -> None:
        self._reloads[ok].inc()

    def expiry(self, not_after: float) -> None:
        self._expiry.set(not_after)


class RouteMetrics:
    """One route's series: histograms bound now (so they are exported from the start),
    request counters on first use. Series are shared by name across policy reloads."""

    __slots__ = ("_auth", "_duration", "_metrics", "_name", "_requests", "_upstream", "_v", "duration", "upstream")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self._metrics = metrics
        self._name = name
        self.duration = Histogram(metrics, f.REQUEST_DURATION, name)
        self.upstream = Histogram(metrics, f.UPSTREAM_DURATION, name)
        self._duration, self._upstream = self.duration.first, self.upstream.first
        # Cells by (method, status, outcome) as the handler passes them: the fast path
        # is one dict lookup. Bounded: unknown methods are keyed as "OTHER", and a status
        # is three digits.
        self._requests: dict[tuple[str, int, str], int] = {}
        self._v = metrics.store.values
        self._auth: dict[Reason, Count] = {}

    def request(self, method: str, status: int, outcome: str) -> None:
        index = self._requests.get((method, status, outcome))
        if index is None:
            index = self._bind(method, status, outcome)
        self._v[index] += 1.0

    def answered(self, method: str, status: int, outcome: str, seconds: float, upstream: float | None) -> None:
        """`request()`, `duration.observe(seconds)` and, unless None,
        `upstream.observe(upstream)`, in one call: the handler's, once per request."""
        index = self._requests.get((method, status, outcome))
        if index is None:
            index = self._bind(method, status, outcome)
        v = self._v
        v[index] += 1.0
        first = self._duration
        v[first + bisect_left(_LATENCY_BUCKETS, seconds)] += 1.0
        v[first + _SUM] += seconds
        if upstream is not None:
            first = self._upstream
            v[first + bisect_left(_LATENCY_BUCKETS, upstream)] += 1.0
            v[first + _SUM] += upstream

    def _bind(self, method: str, status: int, outcome: str) -> int:
        # Keyed by the label, never the raw method: clients choose methods freely.
        label = method if method in METHODS else "OTHER"
        index = self._requests.get((label, status, outcome))
        if index is None:
            index = self._metrics.bind((scalar_key(f.REQUESTS, self._name, label, f"{status // 100}xx", outcome),))
            self._requests[(label, status, outcome)] = index
            # The newest view covers every cell made so far (cells.py): this one too.
            self._v = self._metrics.store.values
        return index

    def auth_failure(self, reason: Reason) -> None:
        child = self._auth.get(reason)
        if child is None:
            child = self._auth[reason] = self._metrics.auth_failures.labels(self._name, reason.ident)
        child.inc()
