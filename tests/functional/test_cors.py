"""CORS through a real gateway: preflights answered by the gateway alone, grants on every
response of a cors route (the gateway's own 401 included), and routes without `cors`
exactly as before."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from aiohttp import web

from gateway.app import Gateway
from gateway.errors import Reason
from tests.conftest import GatewayFactory, Upstream
from tests.factories import SigningKey, claims, sign, write
from tests.metrics_parse import sample_value
from tests.procs import free_port
from tests.rawhttp import RawResponse, get, raw_request

ISS = "https://cors.test"
APP = "https://app.example.com"
CORS_HEADERS = ("access-control-allow-origin", "access-control-allow-credentials", "access-control-expose-headers")


@pytest.fixture
async def gw(make_gateway: GatewayFactory, upstream: Upstream, rsa: SigningKey, tmp_path: Path) -> Gateway:
    pem = write(tmp_path / "key.pem", rsa.public_pem())
    u = upstream.url
    return await make_gateway(f"""
    providers:
      files: {{issuer: "{ISS}", audiences: [orders-api], algorithms: [RS256], keys: [{{pem_file: "{pem}"}}]}}
    routes:
      - name: orders
        match: {{prefix: /orders, methods: [GET, POST, DELETE]}}
        upstream: "{u}"
        auth: {{any_of: [files]}}
        cors:
          allow_origins: ["{APP}", "http://localhost:3000"]
          allow_methods: [GET, POST, DELETE]
          allow_headers: [Authorization, Content-Type, X-Trace]
          expose_headers: [X-Request-Id, X-Total]
          allow_credentials: true
          max_age: 10m
      - name: open
        match: {{prefix: /open}}
        upstream: "{u}"
        auth: public
        cors: {{allow_origins: ["*"]}}
      - name: plain
        match: {{prefix: /plain}}
        upstream: "{u}"
        auth: {{any_of: [files]}}
    """)


def _preflight(path: str, origin: str | None = APP, method: str | None = "DELETE", *headers: str) -> bytes:
    lines = [f"Origin: {origin}"] if origin is not None else []
    if method is not None:
        lines.append(f"Access-Control-Request-Method: {method}")
    return get(path, *lines, *headers, method="OPTIONS")


async def _send(gw: Gateway, request: bytes) -> RawResponse:
    return await raw_request(gw.public_port, request)


def _cors(resp: RawResponse) -> dict[str, list[str]]:
    return {k.lower(): resp.headers.getall(k) for k in resp.headers if k.lower().startswith("access-control-")}


async def test_preflight_is_answered_without_a_token_and_never_forwarded(gw: Gateway, upstream: Upstream) -> None:
    resp = await _send(
        gw, _preflight("/orders/7", APP, "DELETE", "Access-Control-Request-Headers: authorization,x-trace")
    )
    assert resp.status == 204, resp.body
    assert resp.body == b""
    assert _cors(resp) == {
        "access-control-allow-origin": [APP],
        "access-control-allow-methods": ["GET, POST, DELETE"],
        "access-control-allow-headers": ["Authorization, Content-Type, X-Trace"],
        "access-control-max-age": ["600"],
        "access-control-allow-credentials": ["true"],
    }
    assert "Origin" in resp.headers["Vary"]
    assert resp.headers["X-Request-Id"]
    assert upstream.seen == []


async def test_requested_headers_compare_case_insensitively_across_lines(gw: Gateway) -> None:
    resp = await _send(
        gw,
        _preflight(
            "/orders",
            APP,
            "POST",
            "Access-Control-Request-Headers: Content-Type , ,AUTHORIZATION",
            "Access-Control-Request-Headers: x-TRACE",
        ),
    )
    assert resp.status == 204


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (_preflight("/orders", "https://evil.example"), Reason.CORS_ORIGIN_NOT_ALLOWED),
        # Exact match only: no case folding, no prefix, no trailing slash, no other port.
        (_preflight("/orders", "https://APP.example.com"), Reason.CORS_ORIGIN_NOT_ALLOWED),
        (_preflight("/orders", APP + ".evil.example"), Reason.CORS_ORIGIN_NOT_ALLOWED),
        (_preflight("/orders", APP + "/"), Reason.CORS_ORIGIN_NOT_ALLOWED),
        (_preflight("/orders", "http://localhost:3001"), Reason.CORS_ORIGIN_NOT_ALLOWED),
        (_preflight("/orders", "null"), Reason.CORS_ORIGIN_NOT_ALLOWED),
        (
            _preflight("/orders", APP, "POST", "Access-Control-Request-Headers: content-type, x-admin"),
            Reason.CORS_HEADER_NOT_ALLOWED,
        ),
        (
            _preflight("/orders", APP, "GET", "Access-Control-Request-Headers: cookie"),
            Reason.CORS_HEADER_NOT_ALLOWED,
        ),
    ],
)
async def test_a_preflight_not_granted_is_refused_403_without_cors_headers(
    gw: Gateway, upstream: Upstream, caplog: pytest.LogCaptureFixture, request_: bytes, reason: Reason
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    resp = await _send(gw, request_)
    assert resp.status == 403
    assert json.loads(resp.body) == {"error": "forbidden", "error_description": reason.description}
    assert _cors(resp) == {}
    assert upstream.seen == []
    (line,) = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    record = json.loads(line)
    assert (record["route"], record["outcome"], record["reason"]) == ("orders", "denied", reason.ident)
    labels = {"route": "orders", "reason": reason.ident}
    assert sample_value(gw.metrics, "gateway_auth_failures_total", labels) == 1.0


async def test_a_preflight_for_a_method_the_route_does_not_allow(gw: Gateway, upstream: Upstream) -> None:
    # PUT: the cors route does not take it, so the preflight finds no route with cors:
    # it is an ordinary OPTIONS request, and nothing takes OPTIONS on /orders.
    resp = await _send(gw, _preflight("/orders", APP, "PUT"))
    assert resp.status == 404
    assert _cors(resp) == {}
    assert upstream.seen == []


async def test_a_method_the_route_takes_but_cors_does_not_allow(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(f"""
    routes:
      - name: r
        match: {{prefix: /r}}
        upstream: "{upstream.url}"
        auth: public
        cors: {{allow_origins: ["{APP}"]}}
    """)
    # Without allow_methods or match.methods: the CORS-safelisted methods only.
    ok = await _send(gw, _preflight("/r", APP, "POST"))
    assert ok.status == 204
    assert ok.headers["Access-Control-Allow-Methods"] == "GET, HEAD, POST"
    resp = await _send(gw, _preflight("/r", APP, "DELETE"))
    assert resp.status == 403
    assert json.loads(resp.body)["error_description"] == Reason.CORS_METHOD_NOT_ALLOWED.description
    assert upstream.seen == []


async def test_options_that_is_not_a_preflight_is_authenticated_as_usual(gw: Gateway, upstream: Upstream) -> None:
    # No Access-Control-Request-Method, or no Origin, or either repeated: not a preflight.
    for request in (
        _preflight("/orders", APP, None),
        _preflight("/orders", None, "GET"),
        _preflight("/orders", APP, "GET", f"Origin: {APP}"),
        _preflight("/orders", APP, "GET", "Access-Control-Request-Method: GET"),
    ):
        resp = await _send(gw, request)
        # /orders does not take OPTIONS: no route, and certainly no forwarding.
        assert resp.status == 404, request
    assert upstream.seen == []


async def test_options_on_a_cors_route_that_takes_it_needs_a_token(
    make_gateway: GatewayFactory, upstream: Upstream, rsa: SigningKey, tmp_path: Path
) -> None:
    pem = write(tmp_path / "key.pem", rsa.public_pem())
    gw = await make_gateway(f"""
    providers:
      files: {{issuer: "{ISS}", audiences: [orders-api], algorithms: [RS256], keys: [{{pem_file: "{pem}"}}]}}
    routes:
      - name: r
        match: {{prefix: /r}}
        upstream: "{upstream.url}"
        auth: {{any_of: [files]}}
        cors: {{allow_origins: ["{APP}"], allow_methods: [GET]}}
    """)
    resp = await _send(gw, get("/r", f"Origin: {APP}", method="OPTIONS"))
    assert resp.status == 401
    # The gateway's own refusal carries the grant, so the browser app can read it.
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert upstream.seen == []
    token = sign(rsa, claims(ISS), kid=None)
    resp = await _send(gw, get("/r", f"Origin: {APP}", f"Authorization: Bearer {token}", method="OPTIONS"))
    assert resp.status == 200
    assert upstream.last.method == "OPTIONS"


async def test_real_request_from_an_allowed_origin_gets_the_grant(
    gw: Gateway, upstream: Upstream, rsa: SigningKey
) -> None:
    async def with_cors(request: web.Request) -> web.StreamResponse:
        # An upstream with its own (too generous) CORS policy, and its own Vary.
        return web.json_response(
            {"ok": True},
            headers={
                "Access-Control-Allow-Origin": "*",
                "access_control_allow_credentials": "true",
                "Access-Control-Allow-Methods": "PUT",
                "Access-Control-Expose-Headers": "X-Secret",
                "Vary": "Accept-Encoding",
                "X-Total": "3",
            },
        )

    upstream.routes["/orders/cors"] = with_cors
    token = sign(rsa, claims(ISS), kid=None)
    resp = await _send(gw, get("/orders/cors", f"Origin: {APP}", f"Authorization: Bearer {token}"))
    assert resp.status == 200
    assert _cors(resp) == {
        "access-control-allow-origin": [APP],
        "access-control-allow-credentials": ["true"],
        "access-control-expose-headers": ["X-Request-Id, X-Total"],
    }
    assert "access_control_allow_credentials" not in resp.headers
    assert resp.headers.getall("Vary") == ["Accept-Encoding", "Origin"]
    assert resp.headers["X-Total"] == "3"


async def test_real_request_from_another_origin_is_forwarded_without_a_grant(
    gw: Gateway, upstream: Upstream, rsa: SigningKey
) -> None:
    token = sign(rsa, claims(ISS), kid=None)
    for origin in ("Origin: https://evil.example", None):
        headers = [f"Authorization: Bearer {token}"] + ([origin] if origin else [])
        resp = await _send(gw, get("/orders/1", *headers))
        # CORS is the browser's to enforce on the answer; the request is judged by its token.
        assert resp.status == 200
        assert _cors(resp) == {}
        # The answer depends on Origin: a cache must not give it to an allowed origin.
        assert resp.headers.getall("Vary") == ["Origin"]


async def test_the_gateways_own_401_on_a_cors_route_carries_the_grant(gw: Gateway, upstream: Upstream) -> None:
    resp = await _send(gw, get("/orders/1", f"Origin: {APP}"))
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert resp.headers["Access-Control-Allow-Origin"] == APP
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert resp.headers["Access-Control-Expose-Headers"] == "X-Request-Id, X-Total"
    assert resp.headers["Vary"] == "Origin"
    expired = await _send(gw, get("/orders/1", f"Origin: {APP}", "Authorization: Bearer a.b.c"))
    assert expired.status == 401
    assert expired.headers["Access-Control-Allow-Origin"] == APP
    other = await _send(gw, get("/orders/1", "Origin: https://evil.example"))
    assert other.status == 401
    assert _cors(other) == {}
    assert upstream.seen == []


async def test_any_origin_without_credentials(gw: Gateway, upstream: Upstream) -> None:
    resp = await _send(gw, _preflight("/open/x", "https://anyone.example", "GET"))
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in resp.headers
    for request in (get("/open/x", "Origin: https://anyone.example"), get("/open/x")):
        resp = await _send(gw, request)
        assert resp.status == 200
        assert _cors(resp) == {"access-control-allow-origin": ["*"]}
        assert "Vary" not in resp.headers
    assert [s.method for s in upstream.seen] == ["GET", "GET"]


async def test_a_route_without_cors_is_unchanged(gw: Gateway, upstream: Upstream, rsa: SigningKey) -> None:
    async def with_cors(request: web.Request) -> web.StreamResponse:
        return web.json_response({}, headers={"Access-Control-Allow-Origin": "https://backend.example"})

    upstream.routes["/plain/cors"] = with_cors
    # A preflight to a route without cors is an ordinary OPTIONS: it needs a token.
    resp = await _send(gw, _preflight("/plain/x", APP, "GET"))
    assert resp.status == 401
    assert _cors(resp) == {}
    assert "Vary" not in resp.headers
    assert upstream.seen == []
    token = sign(rsa, claims(ISS), kid=None)
    resp = await _send(gw, _preflight("/plain/x", APP, "GET", f"Authorization: Bearer {token}"))
    assert resp.status == 200
    assert upstream.last.method == "OPTIONS"
    assert upstream.last.headers["access-control-request-method"] == ["GET"]
    # The upstream's own CORS headers pass through untouched.
    resp = await _send(gw, get("/plain/cors", f"Origin: {APP}", f"Authorization: Bearer {token}"))
    assert _cors(resp) == {"access-control-allow-origin": ["https://backend.example"]}


async def test_a_gateway_502_on_a_cors_route_carries_the_grant(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(f"""
    routes:
      - name: down
        match: {{prefix: /down}}
        upstream: "http://127.0.0.1:{free_port()}"
        auth: public
        cors: {{allow_origins: ["{APP}"], expose_headers: [X-Request-Id]}}
    """)
    resp = await _send(gw, get("/down", f"Origin: {APP}"))
    assert resp.status == 502
    assert _cors(resp) == {
        "access-control-allow-origin": [APP],
        "access-control-expose-headers": ["X-Request-Id"],
    }
