"""Rendering cells of several workers: sums, per-worker gauges, retired counts, format."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.errors import Reason
from gateway.obs.cells import CellStore, read_cells
from gateway.obs.exposition import fold, render
from gateway.obs.families import CATALOGUE, key
from gateway.obs.metrics import Metrics, SupervisorMetrics
from tests.metrics_parse import Scrape, promtool_check
from tests.procs import python_child as child


def worker(path: Path, requests: int, keys: int, route: str = "orders") -> Metrics:
    """A worker's metrics in a file store, with `requests` answered on `route`."""
    metrics = Metrics(CellStore(path))
    r = metrics.route(route)
    for n in range(requests):
        r.answered("GET", 200, "allowed", 0.003 * (n + 1), 0.001)
    r.answered("BREW", 418, "denied", 0.0005, None)
    r.auth_failure(Reason.EXPIRED)
    metrics.cache_hits.inc()
    metrics.in_flight(2)
    provider = metrics.provider("corp")
    provider.fetched(True)
    provider.keys(keys, loaded=True)
    metrics.revocations("corp")(True, 5)
    metrics.client_connections.set_function(lambda: 3)
    tls = metrics.tls("proxy")
    tls.handshake("1.3")
    tls.handshake_failed("not_tls")
    tls.reloaded(True)
    tls.expiry(1_800_000_000.0 + keys)
    metrics.sample()  # as a worker does when the supervisor asks
    return metrics


def sources(tmp_path: Path) -> tuple[SupervisorMetrics, Metrics, Metrics]:
    supervisor = SupervisorMetrics()
    supervisor.workers.set(2)
    supervisor.worker_restarts.inc()
    supervisor.config_reloads.labels("success").inc()
    return supervisor, worker(tmp_path / "w1", 3, keys=3), worker(tmp_path / "w2", 4, keys=2)


def test_counters_and_histograms_are_summed_and_gauges_aggregated_as_catalogued(tmp_path: Path) -> None:
    supervisor, _, _ = sources(tmp_path)
    live = [(None, supervisor.cells()), ("1", read_cells(tmp_path / "w1")), ("2", read_cells(tmp_path / "w2"))]
    text = render(live, {}).decode()
    s = Scrape(text)
    ok = {"route": "orders", "method": "GET", "status_class": "2xx", "outcome": "allowed"}
    assert s.get("gateway_requests_total", **ok) == 7
    assert s.get("gateway_requests_total", **{**ok, "method": "OTHER", "status_class": "4xx", "outcome": "denied"}) == 2
    assert s.get("gateway_request_duration_seconds_count", route="orders") == 9
    assert s.get("gateway_request_duration_seconds_bucket", route="orders", le="0.005") == 4  # 0.0005, 0.003 twice
    assert s.get("gateway_request_duration_seconds_sum", route="orders") == pytest.approx(0.001 + 0.003 * (6 + 10))
    assert s.get("gateway_upstream_duration_seconds_count", route="orders") == 7
    assert s.get("gateway_auth_failures_total", route="orders", reason=Reason.EXPIRED.ident) == 2
    assert s.get("gateway_token_cache_hits_total") == 2
    # Gauges: summed where the sum means something, per worker where it does not.
    assert s.get("gateway_in_flight_requests") == 4
    assert s.get("gateway_client_connections") == 6
    assert s.get("gateway_jwks_keys", provider="corp", worker="1") == 3
    assert s.get("gateway_jwks_keys", provider="corp", worker="2") == 2
    assert s.get("gateway_revoked_tokens", provider="corp", worker="2") == 5
    assert s.get("gateway_tls_handshakes_total", listener="proxy", version="1.3") == 2
    assert s.get("gateway_tls_handshake_failures_total", listener="proxy", reason="not_tls") == 2
    assert s.get("gateway_tls_certificate_expiry_seconds", listener="proxy", worker="1") == 1_800_000_003.0
    assert s.get("gateway_tls_certificate_expiry_seconds", listener="proxy", worker="2") == 1_800_000_002.0
    assert not [k for k in s.samples if k[0] == "gateway_jwks_keys" and "worker" not in dict(k[1])]
    assert [s.samples[k] for k in s.samples if k[0] == "gateway_build_info"] == [1]  # once, not three times
    # The supervisor's own.
    assert s.get("gateway_workers") == 2
    assert s.get("gateway_worker_restarts_total") == 1
    assert s.get("gateway_config_reloads_total", result="success") == 1
    assert s.get("gateway_config_reloads_total", result="failure") == 0


def test_exposition_is_promtool_clean_and_typed_as_the_catalogue_says(tmp_path: Path) -> None:
    supervisor, _, _ = sources(tmp_path)
    dead = worker(tmp_path / "w3", 1, keys=1, route='we"ird\\route\nname')
    retired: dict[str, float] = {}
    fold(retired, dead.cells())
    live = [(None, supervisor.cells()), ("1", read_cells(tmp_path / "w1")), ("2", read_cells(tmp_path / "w2"))]
    text = render(live, retired).decode()
    promtool_check(text)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # prometheus-client's parser names a counter family without `_total`.
    assert {name: f.type for name, f in families.items()} == {f.name: f.kind for f in CATALOGUE}
    for family in families.values():
        assert not [s for s in family.samples if s.name.endswith("_created")]
    routes = {s.labels.get("route") for s in families["gateway_requests"].samples}
    assert routes == {"orders", 'we"ird\\route\nname'}  # escaped, and read back as it was


def test_a_single_unlabelled_source_has_no_worker_label_and_matches_metrics_exposition() -> None:
    metrics = Metrics()
    metrics.provider("corp").keys(3, loaded=False)
    text = render([(None, metrics.cells())], {})
    assert text == metrics.exposition()
    assert b'gateway_jwks_keys{provider="corp"} 3.0\n' in text
    assert b"worker" not in text


def test_rendering_is_deterministic_whatever_order_the_cells_come_in(tmp_path: Path) -> None:
    sources(tmp_path)
    one, two = read_cells(tmp_path / "w1"), read_cells(tmp_path / "w2")
    reversed_one = dict(reversed(list(one.items())))
    assert render([("a", one), ("b", two)], {}) == render([("b", two), ("a", reversed_one)], {})


def test_a_worker_folded_into_retired_never_makes_a_counter_go_backwards(tmp_path: Path) -> None:
    supervisor, _, _ = sources(tmp_path)
    w1, w2 = read_cells(tmp_path / "w1"), read_cells(tmp_path / "w2")
    before = Scrape(render([(None, supervisor.cells()), ("1", w1), ("2", w2)], {}).decode())
    # Worker 2 dies (its file is final now) and is folded; its replacement starts afresh.
    retired: dict[str, float] = {}
    fold(retired, w2)
    replacement = worker(tmp_path / "w2-again", 1, keys=2)
    after = Scrape(render([(None, supervisor.cells()), ("1", w1), ("2", replacement.cells())], retired).decode())
    gauges = {f.exposed for f in CATALOGUE if f.kind == "gauge"}
    compared = 0
    for (name, labels), value in before.samples.items():
        if name in gauges:
            continue
        compared += 1
        assert after.samples[(name, labels)] >= value, (name, labels)
    assert compared > 40
    ok = {"route": "orders", "method": "GET", "status_class": "2xx", "outcome": "allowed"}
    assert after.get("gateway_requests_total", **ok) == 3 + 4 + 1  # exact: counts never lost either
    assert after.get("gateway_in_flight_requests") == 4  # the dead worker's 2 are gone with it
    assert not [k for k in retired if k.startswith('["gateway_in_flight')]


def test_unknown_keys_are_skipped_and_worker_labels_must_be_distinct() -> None:
    cells = {key("gateway_requests_total", "r", "GET", "2xx", "allowed"): 1.0, "not json": 1.0}
    cells[key("gateway_no_such_thing")] = 1.0
    cells[key("gateway_requests_total", "too", "few")] = 1.0
    cells[key("gateway_request_duration_seconds_bucket", "r", "0.7")] = 1.0  # no such bound
    text = render([(None, cells)], {}).decode()
    assert text.count("\ngateway_") == 1
    with pytest.raises(ValueError, match="distinct"):
        render([("1", {}), ("1", {})], {})


def test_requests_answered_by_a_worker_then_sigkilled_are_all_counted(tmp_path: Path) -> None:
    code = """
        import sys
        from gateway.obs.cells import CellStore
        from gateway.obs.metrics import Metrics
        metrics = Metrics(CellStore(sys.argv[1]))
        route = metrics.route("orders")
        for n in range(1, 100_000_000):
            route.answered("GET", 200, "allowed", 0.002, 0.001)
            if n % 1000 == 0:
                print(n, flush=True)
                if sys.stdin.readline() != "more\\n":
                    break
        """
    with child(code, str(tmp_path / "w")) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        for _ in range(7):
            answered = int(proc.stdout.readline())
            proc.stdin.write("more\n")
            proc.stdin.flush()
        answered = int(proc.stdout.readline())  # it waits for a line now: nothing after this
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    retired: dict[str, float] = {}
    fold(retired, read_cells(tmp_path / "w"))
    s = Scrape(render([], retired).decode())
    ok = {"route": "orders", "method": "GET", "status_class": "2xx", "outcome": "allowed"}
    assert s.get("gateway_requests_total", **ok) == answered == 8000
    assert s.get("gateway_request_duration_seconds_count", route="orders") == answered
    assert s.get("gateway_upstream_duration_seconds_bucket", route="orders", le="0.001") == answered
