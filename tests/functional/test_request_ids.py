"""Request IDs through a real gateway: made or taken from a trusted proxy, forwarded,
returned (on the gateway's own answers too) and in the access log and the log lines
about the request; a client's own value never reaches the upstream or a log."""

from __future__ import annotations

import json
import logging
import re

import pytest
from aiohttp import web

from gateway.app import Gateway
from tests.conftest import GatewayFactory, Upstream
from tests.procs import free_port
from tests.rawhttp import RawResponse, get, raw_request

GENERATED = re.compile(r"[0-9a-f]{32}")


def _policy(upstream: Upstream, server: str = "") -> str:
    return f"""
    {server}
    routes:
      - {{name: app, match: {{prefix: /app}}, upstream: "{upstream.url}", auth: public}}
      - {{name: down, match: {{prefix: /down}}, upstream: "http://127.0.0.1:{free_port()}", auth: public}}
      - {{name: token, match: {{prefix: /token}}, upstream: "{upstream.url}", auth: {{any_of: [p]}}}}
    providers:
      p: {{issuer: https://p.test, audiences: [a], algorithms: [HS256], keys: [{{hmac_secret: {{env: RID_SECRET}}}}]}}
    """


@pytest.fixture
async def make(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> GatewayFactory:
    monkeypatch.setenv("RID_SECRET", "s" * 32)
    caplog.set_level(logging.INFO, logger="gateway.access")
    caplog.set_level(logging.INFO, logger="gateway.proxy")
    return make_gateway


def _access(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]


async def _call(gw: Gateway, path: str, *headers: str) -> RawResponse:
    return await raw_request(gw.public_port, get(path, *headers))


async def test_generated_forwarded_returned_and_logged(
    make: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await make(_policy(upstream))
    first = await _call(gw, "/app/1")
    second = await _call(gw, "/app/2")
    ids = [first.headers["X-Request-Id"], second.headers["X-Request-Id"]]
    assert all(GENERATED.fullmatch(i) for i in ids)
    assert ids[0] != ids[1]
    assert [s.headers["x-request-id"] for s in upstream.seen] == [[ids[0]], [ids[1]]]
    assert [r["request_id"] for r in _access(caplog)] == ids


async def test_an_untrusted_peers_id_is_replaced_in_every_spelling(
    make: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await make(_policy(upstream))
    resp = await _call(
        gw,
        "/app",
        "X-Request-Id: spoofed-1",
        "x_request_id: spoofed-2",
        "X.Request.Id: spoofed-3",
        "HTTP_X_REQUEST_ID: s4",
    )
    rid = resp.headers["X-Request-Id"]
    assert GENERATED.fullmatch(rid)
    seen = upstream.last.headers
    assert seen["x-request-id"] == [rid]
    assert not [v for vs in seen.values() for v in vs if "spoofed" in v or v == "s4"]
    assert "spoofed" not in caplog.text
    assert _access(caplog)[0]["request_id"] == rid


async def test_a_trusted_proxys_well_formed_id_is_kept(
    make: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await make(_policy(upstream, "server: {trusted_proxies: [127.0.0.1/32]}"))
    sent = "0f8e2c1a-9b7d-4e3f-a2c1-d4e5f6a7b8c9"
    resp = await _call(gw, "/app", f"X-Request-Id: {sent}")
    assert resp.headers["X-Request-Id"] == sent
    assert upstream.last.headers["x-request-id"] == [sent]
    assert _access(caplog)[-1]["request_id"] == sent


@pytest.mark.parametrize(
    "headers",
    [
        ("X-Request-Id: has space",),
        ('X-Request-Id: quote"d',),
        ("X-Request-Id: key=value",),
        ("X-Request-Id: " + "a" * 129,),
        ("X-Request-Id: caf\u00c3\u00a9",),  # UTF-8 é, as get() writes latin-1
        ("X-Request-Id: ",),
        ("X-Request-Id: one", "X-Request-Id: two"),  # which? neither
        ("X_Request_Id: other-spelling",),  # only the configured spelling is taken
    ],
)
async def test_a_malformed_id_from_a_trusted_proxy_is_replaced(
    make: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture, headers: tuple[str, ...]
) -> None:
    gw = await make(_policy(upstream, "server: {trusted_proxies: [127.0.0.1/32]}"))
    resp = await raw_request(gw.public_port, get("/app", *headers))
    rid = resp.headers["X-Request-Id"]
    assert GENERATED.fullmatch(rid), rid
    assert upstream.last.headers["x-request-id"] == [rid]
    assert [k for k in upstream.last.headers if k.replace("_", "-") == "x-request-id"] == ["x-request-id"]
    assert _access(caplog)[-1]["request_id"] == rid


async def test_a_custom_header_name(make: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture) -> None:
    async def answers_with_its_own(request: web.Request) -> web.StreamResponse:
        return web.json_response({}, headers={"X-Correlation-Id": "upstream-made", "X-Request-Id": "kept"})

    upstream.routes["/app/own"] = answers_with_its_own
    gw = await make(
        _policy(upstream, "server: {trusted_proxies: [127.0.0.1/32], request_id: {header: X-Correlation-Id}}")
    )
    resp = await _call(gw, "/app/1", "X-Correlation-Id: from-the-lb", "X-Request-Id: another")
    assert resp.headers["X-Correlation-Id"] == "from-the-lb"
    # The default name is an ordinary header now: passed on as sent.
    assert upstream.last.headers["x-correlation-id"] == ["from-the-lb"]
    assert upstream.last.headers["x-request-id"] == ["another"]
    # The upstream's own value of the gateway's header is replaced, not doubled.
    resp = await _call(gw, "/app/own")
    assert resp.headers.getall("X-Correlation-Id") != ["upstream-made"]
    assert len(resp.headers.getall("X-Correlation-Id")) == 1
    assert resp.headers["X-Request-Id"] == "kept"
    assert [r["request_id"] for r in _access(caplog)] == ["from-the-lb", resp.headers["X-Correlation-Id"]]


async def test_the_gateways_own_answers_and_log_lines_carry_it(
    make: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await make(_policy(upstream))
    answers = [
        await _call(gw, "/nowhere"),  # 404
        await _call(gw, "/token"),  # 401
        await _call(gw, "/app/%2F"),  # 400
        await _call(gw, "/down"),  # 502, with an operator's log line about it
    ]
    assert [a.status for a in answers] == [404, 401, 400, 502]
    ids = [a.headers["X-Request-Id"] for a in answers]
    assert all(GENERATED.fullmatch(i) for i in ids)
    assert [r["request_id"] for r in _access(caplog)] == ids
    operator = [r.getMessage() for r in caplog.records if r.name == "gateway.proxy"]
    assert [line.split()[1] for line in operator] == [f"request_id={ids[2]}", f"request_id={ids[3]}"]
    assert "reason=bad_path" in operator[0]
    assert "reason=upstream_unreachable" in operator[1]
    assert upstream.seen == []


async def test_an_unparseable_request_is_logged_with_a_fresh_id(
    make: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await make(_policy(upstream, "server: {trusted_proxies: [127.0.0.1/32]}"))
    resp = await raw_request(
        gw.public_port, b"GET /app HTTP/1.1\r\nHost: g\r\nX-Request-Id: mine\r\nBad Header\r\n\r\n"
    )
    assert resp.status == 400
    (record,) = _access(caplog)
    assert isinstance(record["request_id"], str)
    assert GENERATED.fullmatch(record["request_id"])
