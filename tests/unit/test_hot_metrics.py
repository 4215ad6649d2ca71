"""The per-request metrics (cells, no lock) export what prometheus-client's own types would."""

from __future__ import annotations

import mmap

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.obs.cells import CellStore
from gateway.obs.families import LATENCY_BUCKETS as _LATENCY_BUCKETS
from gateway.obs.metrics import Metrics


def samples(exposition: bytes, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(exposition.decode()):
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
    assert samples(ours.exposition(), "gateway_request_duration_seconds") == samples(
        generate_latest(reference), "gateway_request_duration_seconds"
    )


def test_series_are_shared_across_reloads_and_counts_are_exact() -> None:
    metrics = Metrics()
    first, again = metrics.route("r"), metrics.route("r")  # a reload rebuilds RouteMetrics
    first.request("GET", 200, "allowed")
    again.request("GET", 204, "allowed")
    again.request("BREW", 418, "denied")
    metrics.in_flight(1)
    metrics.cache_hits.inc()
    got = samples(metrics.exposition(), "gateway_")
    assert got[(("name", "gateway_requests_total"), ("method", "GET"), ("outcome", "allowed"), ("route", "r"),
                ("status_class", "2xx"))] == 2  # fmt: skip
    assert got[(("name", "gateway_requests_total"), ("method", "OTHER"), ("outcome", "denied"), ("route", "r"),
                ("status_class", "4xx"))] == 1  # fmt: skip
    assert got[(("name", "gateway_in_flight_requests"),)] == 1
    assert got[(("name", "gateway_token_cache_hits_total"),)] == 1
    assert got[(("name", "gateway_token_cache_misses_total"),)] == 0


def test_answered_updates_exactly_what_the_three_calls_do() -> None:
    one_call, three_calls = Metrics(), Metrics()
    for method, status, outcome, seconds, upstream in (
        ("GET", 200, "allowed", 0.003, 0.001),
        ("BREW", 418, "denied", 0.0005, None),
        ("POST", 502, "error", 31.0, 30.0),
    ):
        one_call.route("r").answered(method, status, outcome, seconds, upstream)
        route = three_calls.route("r")
        route.request(method, status, outcome)
        route.duration.observe(seconds)
        if upstream is not None:
            route.upstream.observe(upstream)
    assert one_call.cells() == three_calls.cells()


def test_route_metrics_bound_before_the_store_grew_still_count_into_the_shared_series() -> None:
    metrics = Metrics(CellStore(capacity=mmap.PAGESIZE))
    old = metrics.route("r")  # the running policy's, bound in the first page
    old.request("GET", 200, "allowed")
    for n in range(200):  # a reload with many routes: the store is mapped again, larger
        metrics.route(f"route-{n}").request("GET", 200, "allowed")
    new = metrics.route("r")
    new.request("GET", 500, "error")
    old.request("GET", 500, "error")  # a request of the old policy, still in flight
    old.answered("GET", 200, "allowed", 0.01, None)
    got = samples(metrics.exposition(), "gateway_requests_total")
    assert got[(("name", "gateway_requests_total"), ("method", "GET"), ("outcome", "error"), ("route", "r"),
                ("status_class", "5xx"))] == 2  # fmt: skip
    assert got[(("name", "gateway_requests_total"), ("method", "GET"), ("outcome", "allowed"), ("route", "r"),
                ("status_class", "2xx"))] == 2  # fmt: skip
    assert len(got) == 202
