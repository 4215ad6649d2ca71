"""Metrics through real requests, read back by parsing /metrics."""

from __future__ import annotations

from gateway.errors import Reason
from tests.factories import SigningKey, claims, sign
from tests.functional.auth_env import PEM_ISSUER, AuthEnv
from tests.metrics_parse import promtool_check, scrape
from tests.rawhttp import get, raw_request


async def test_counters_move_as_requests_happen(env: AuthEnv, rsa: SigningKey, rsa_pem: SigningKey) -> None:
    before = await scrape(env.gateway.admin_port)
    ok = sign(rsa, claims(env.idp.issuer))
    for _ in range(2):
        assert (await env.call("/orders/1", ok)).status == 200
    assert (await env.call("/orders/1", sign(rsa_pem, claims(PEM_ISSUER), kid=None), method="POST")).status == 200
    assert (await env.call("/orders/1")).status == 401
    assert (await env.call("/orders/1", sign(rsa, claims(env.idp.issuer, ttl=-600)))).status == 401
    assert (await env.call("/admin", ok)).status == 403
    assert (await env.call("/nowhere/secret-path-123")).status == 404
    assert (await raw_request(env.gateway.public_port, get("/a%2Fb"))).status == 400
    after = await scrape(env.gateway.admin_port)

    def delta(name: str, **labels: str) -> float:
        return after.get(name, **labels) - before.get(name, **labels)

    req = "gateway_requests_total"
    assert delta(req, route="orders", method="GET", status_class="2xx", outcome="allowed") == 2
    assert delta(req, route="orders", method="POST", status_class="2xx", outcome="allowed") == 1
    assert delta(req, route="orders", method="GET", status_class="4xx", outcome="denied") == 2
    assert delta(req, route="admin", method="GET", status_class="4xx", outcome="denied") == 1
    assert delta(req, route="_unmatched", method="GET", status_class="4xx", outcome="denied") == 2
    fail = "gateway_auth_failures_total"
    assert delta(fail, route="orders", reason=Reason.TOKEN_MISSING.ident) == 1
    assert delta(fail, route="orders", reason=Reason.EXPIRED.ident) == 1
    assert delta(fail, route="admin", reason=Reason.INSUFFICIENT_SCOPE.ident) == 1
    assert delta("gateway_request_duration_seconds_count", route="orders") == 5
    assert delta("gateway_upstream_duration_seconds_count", route="orders") == 3
    assert delta("gateway_upstream_duration_seconds_count", route="admin") == 0
    assert after.get("gateway_in_flight_requests") == 0
    # Label values come from config and closed vocabularies, never from the request.
    assert after.label_values("route") <= {"_unmatched", "orders", "admin"} | {
        r.name for r in env.gateway.policy.table.routes
    }
    assert "secret-path-123" not in after.text


async def test_key_metrics(env: AuthEnv) -> None:
    s = await scrape(env.gateway.admin_port)
    assert s.get("gateway_jwks_fetches_total", provider="corp", result="success") == 1
    assert s.get("gateway_jwks_fetches_total", provider="corp-at", result="success") == 1
    assert s.get("gateway_jwks_fetches_total", provider="corp", result="failure") == 0
    assert s.get("gateway_jwks_keys", provider="corp") == 3
    assert s.get("gateway_jwks_keys", provider="pem") == 1
    assert s.get("gateway_jwks_keys", provider="shared") == 1
    for provider in ("corp", "corp-at", "pem", "shared"):
        assert s.get("gateway_jwks_last_success_timestamp_seconds", provider=provider) > 1.7e9
    assert s.get("gateway_config_reloads_total", result="success") == 0
    assert s.get("gateway_config_reloads_total", result="failure") == 0
    info = [k for k in s.samples if k[0] == "gateway_build_info"]
    assert len(info) == 1
    assert s.samples[info[0]] == 1


async def test_failed_fetches_are_counted(env: AuthEnv, rsa: SigningKey) -> None:
    env.idp.fail = True
    token = sign(rsa, claims(env.idp.issuer), kid="rotated-away")
    assert (await env.call("/orders", token)).status == 401
    s = await scrape(env.gateway.admin_port)
    assert s.get("gateway_jwks_fetches_total", provider="corp", result="failure") == 1
    assert s.get("gateway_jwks_keys", provider="corp") == 3  # the last good keys stay


async def test_promtool_finds_nothing_to_complain_about(env: AuthEnv, rsa: SigningKey) -> None:
    await env.call("/orders", sign(rsa, claims(env.idp.issuer)))
    await env.call("/orders")
    promtool_check((await scrape(env.gateway.admin_port)).text)
