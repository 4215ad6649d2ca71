"""The catalogue of metric families, and how a cell's key names its series.

A cell key is the JSON array `[sample name, label values...]`: `gateway_requests_total`
for a counter, the family name for a gauge, `<name>_bucket` (the `le` value last) and
`<name>_sum` for a histogram, whose `_count` is the sum of its buckets. The catalogue
says everything else (type, help, label names, how gauges of several workers combine),
so rendering needs nothing but keys and values.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Literal

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family. `aggregation` says how a gauge reported by several workers is
    shown: `sum`; `max` (the same value in every process: one series, not N); or `worker`,
    one series per worker with a `worker` label, where a sum means nothing."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...] = ()
    aggregation: Literal["sum", "max", "worker"] = "sum"
    buckets: tuple[float, ...] = ()

    @property
    def exposed(self) -> str:
        """The name in HELP and TYPE lines (a counter's ends in `_total`, as
        prometheus-client writes format 0.0.4)."""
        return f"{self.name}_total" if self.kind == "counter" else self.name

    @property
    def bounds(self) -> tuple[str, ...]:
        """A histogram's `le` values, `+Inf` last."""
        return (*(repr(float(b)) for b in self.buckets), "+Inf")


def _f(name: str, kind: Literal["counter", "gauge", "histogram"], text: str, *labels: str) -> Family:
    return Family(name, kind, text, labels)


REQUESTS = _f(
    "gateway_requests", "counter",
    "Requests answered, by route, method, status class and outcome (allowed/denied/error).",
    "route", "method", "status_class", "outcome",
)  # fmt: skip
REQUEST_DURATION = Family(
    "gateway_request_duration_seconds", "histogram",
    "Time from request to the end of the response, by route.", ("route",), buckets=LATENCY_BUCKETS,
)  # fmt: skip
UPSTREAM_DURATION = Family(
    "gateway_upstream_duration_seconds", "histogram",
    "Time from sending a request upstream to receiving its response headers, by route.", ("route",),
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
IN_FLIGHT = _f("gateway_in_flight_requests", "gauge", "Requests being handled now.")
CACHE_HITS = _f("gateway_token_cache_hits", "counter", "Verified-token cache hits.")
CACHE_MISSES = _f("gateway_token_cache_misses", "counter", "Verified-token cache misses.")
AUTH_FAILURES = _f(
    "gateway_auth_failures", "counter", "Requests refused by authentication, by route and reason.", "route", "reason"
)
JWKS_FETCHES = _f(
    "gateway_jwks_fetches", "counter", "Remote key set fetches, by provider and result.", "provider", "result"
)
# Each worker loads its own keys and revocation list: a sum would hide the one lagging.
JWKS_KEYS = Family(
    "gateway_jwks_keys", "gauge", "Verification keys in use, by provider.", ("provider",), aggregation="worker"
)
JWKS_LAST_SUCCESS = Family(
    "gateway_jwks_last_success_timestamp_seconds", "gauge",
    "Unix time keys were last loaded successfully, by provider.", ("provider",), aggregation="worker",
)  # fmt: skip
CLIENT_CONNECTIONS = _f("gateway_client_connections", "gauge", "Open client connections on the public listener.")
CONNECTIONS_REFUSED = _f(
    "gateway_connections_refused", "counter",
    "Client connections answered 503 and closed: server.max_connections was reached.",
)  # fmt: skip
CONFIG_RELOADS = _f("gateway_config_reloads", "counter", "Policy reloads (SIGHUP), by result.", "result")
# Every process runs the same build: one series, whatever the number of workers, so
# that `* on(instance) group_left(version) gateway_build_info` joins still match once.
BUILD_INFO = Family(
    "gateway_build_info", "gauge", "Build information; always 1.", ("version", "python", "aiohttp"), aggregation="max"
)
REVOCATION_RELOADS = _f(
    "gateway_revocation_reloads", "counter",
    "Revocation list loads, by provider and result (failure: the last good list stays).", "provider", "result",
)  # fmt: skip
REVOKED_TOKENS = Family(
    "gateway_revoked_tokens", "gauge", "Token ids on the revocation list in force, by provider.", ("provider",),
    aggregation="worker",
)  # fmt: skip
CACHE_ENTRIES = _f("gateway_token_cache_entries", "gauge", "Tokens in the verified-token cache.")
WORKER_RESTARTS = _f(
    "gateway_worker_restarts", "counter", "Worker processes the supervisor started again after they died."
)
WORKERS = _f("gateway_workers", "gauge", "Worker processes serving now.")
TLS_HANDSHAKES = _f(
    "gateway_tls_handshakes", "counter", "TLS handshakes completed, by listener and protocol version.",
    "listener", "version",
)  # fmt: skip
TLS_HANDSHAKE_FAILURES = _f(
    "gateway_tls_handshake_failures", "counter", "TLS handshakes that failed, by listener and reason.",
    "listener", "reason",
)  # fmt: skip
TLS_CERTIFICATE_RELOADS = _f(
    "gateway_tls_certificate_reloads", "counter",
    "Certificate loads after the files changed, by listener and result (failure: the one in force stays).",
    "listener", "result",
)  # fmt: skip
# Each worker loads the files itself: a sum means nothing, and a worker left behind shows.
TLS_CERTIFICATE_EXPIRY = Family(
    "gateway_tls_certificate_expiry_seconds", "gauge",
    "Unix time the certificate in force expires (notAfter), by listener.", ("listener",), aggregation="worker",
)  # fmt: skip
WEBSOCKETS_OPEN = _f("gateway_websockets_open", "gauge", "WebSocket connections open now (handshakes in progress too).")

# Exposition order.
CATALOGUE = (
    REQUESTS, REQUEST_DURATION, UPSTREAM_DURATION, IN_FLIGHT, CACHE_HITS, CACHE_MISSES, AUTH_FAILURES,
    JWKS_FETCHES, JWKS_KEYS, JWKS_LAST_SUCCESS, CLIENT_CONNECTIONS, CONNECTIONS_REFUSED, CONFIG_RELOADS,
    BUILD_INFO, REVOCATION_RELOADS, REVOKED_TOKENS, CACHE_ENTRIES, WORKER_RESTARTS, WORKERS,
    TLS_HANDSHAKES, TLS_HANDSHAKE_FAILURES, TLS_CERTIFICATE_RELOADS, TLS_CERTIFICATE_EXPIRY, WEBSOCKETS_OPEN,
)  # fmt: skip


def key(sample: str, *values: str) -> str:
    return json.dumps([sample, *values], separators=(",", ":"))


def scalar_key(family: Family, *values: str) -> str:
    """The key of a counter's or a gauge's one cell."""
    return key(family.exposed, *values)


def histogram_keys(family: Family, *values: str) -> tuple[str, ...]:
    """The keys of a histogram's cells: one per bucket (not cumulative), then the sum."""
    name = family.name
    return (*(key(f"{name}_bucket", *values, le) for le in family.bounds), key(f"{name}_sum", *values))


# sample name -> its family, and what the sample is
_SAMPLES: dict[str, tuple[Family, Literal["value", "bucket", "sum"]]] = {}
for _family in CATALOGUE:
    if _family.kind == "histogram":
        _SAMPLES[f"{_family.name}_bucket"] = (_family, "bucket")
        _SAMPLES[f"{_family.name}_sum"] = (_family, "sum")
    else:
        _SAMPLES[_family.exposed] = (_family, "value")


@functools.lru_cache(maxsize=1 << 16)
def parse_key(text: str) -> tuple[Family, int, tuple[str, ...]] | None:
    """(family, cell, label values without `le`), or None for a key that is not in the
    catalogue or not well formed. `cell` is -1 for a counter's or a gauge's value, else
    the index in `histogram_keys`."""
    try:
        decoded = json.loads(text)
    except ValueError:
        return None
    if not isinstance(decoded, list) or not decoded or not all(isinstance(v, str) for v in decoded):
        return None
    found = _SAMPLES.get(decoded[0])
    if found is None:
        return None
    family, sample = found
    values = tuple(decoded[1:])
    index = -1 if sample == "value" else len(family.bounds)
    if sample == "bucket":  # its `le` comes last
        try:
            index = family.bounds.index(values[-1])
        except (IndexError, ValueError):
            return None
        values = values[:-1]
    if len(values) != len(family.labels):
        return None
    return family, index, values
