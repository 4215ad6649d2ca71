"""The lock-free per-request metrics export what prometheus-client's own types would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.obs.metrics import _LATENCY_BUCKETS, Metrics


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name.startswith(name) and not s.name.endswith("_created"):
                out[(("name", s.name), *sorted(s.labels.items()))] = s.value
    return out


def test_histogram_matches_prometheus_client_on_and_between_bucket_bounds() -> None:
    values = [0.0, 0.0005, 0.00051, 0.001, 0.3, 30.0, 31.0, *(b / 2 for b in _LATENCY_BUCKETS)]
    ours = Metrics()
    route = ours.route("r")
    reference = CollectorRegistry()
    theirs = Histogram("gateway_request_duration_seconds", "x", ["route"], buckets=_LATENCY_BUCKETS, registry=reference)
    for v in values:
        route.duration.observe(v)
        theirs.labels("r").observe(v)
    assert samples(ours.registry, "gateway_request_duration_seconds") == samples(
        reference, "gateway_request_duration_seconds"
    )


def test_series_are_shared_across_reloads_and_counts_are_exact() -> None:
    metrics = Metrics()
    first, again = metrics.route("r"), metrics.route("r")  # a reload rebuilds RouteMetrics
    first.request("GET", 200, "allowed")
    again.request("GET", 204, "allowed")
    again.request("BREW", 418, "denied")
    metrics.in_flight(1)
    metrics.cache_hits.inc()
    got = samples(metrics.registry, "gateway_")
    assert got[(("name", "gateway_requests_total"), ("method", "GET"), ("outcome", "allowed"), ("route", "r"),
                ("status_class", "2xx"))] == 2  # fmt: skip
    assert got[(("name", "gateway_requests_total"), ("method", "OTHER"), ("outcome", "denied"), ("route", "r"),
                ("status_class", "4xx"))] == 1  # fmt: skip
    assert got[(("name", "gateway_in_flight_requests"),)] == 1
    assert got[(("name", "gateway_token_cache_hits_total"),)] == 1
    assert got[(("name", "gateway_token_cache_misses_total"),)] == 0
