"""Requests no route may accept, and headers no client may set, whatever the route."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.proxy.server import silence_aiohttp_echo
from tests.conftest import GatewayFactory, Upstream
from tests.rawhttp import get, raw_request

SECRET = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQifQ.c2lnbmF0dXJlLXNlY3JldA"


def routes(upstream: Upstream, server: str = "") -> str:
    return f"""
    {server}
    routes:
      - name: internal
        match: {{prefix: /internal, host: internal.example.com}}
        upstream: "{upstream.url}"
        auth: public
      - {{name: all, match: {{prefix: /}}, upstream: "{upstream.url}", auth: public}}
    """


@pytest.mark.parametrize("method", ["CONNECT", "TRACE"])
async def test_tunnel_and_trace_methods_are_refused(
    make_gateway: GatewayFactory, upstream: Upstream, method: str
) -> None:
    gw = await make_gateway(routes(upstream))
    request = f"{method} /public/x HTTP/1.1\r\nHost: g\r\nContent-Length: 39\r\nConnection: close\r\n\r\n".encode()
    resp = await raw_request(gw.public_port, request + b"GET /admin/secret HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status == 405
    assert upstream.seen == []


@pytest.mark.parametrize("host", [b"inte\xffrnal.example.com", b"INTERNAL.example.com:evil", b"a b", b"a/b", b"a@b"])
async def test_host_must_be_a_host(make_gateway: GatewayFactory, upstream: Upstream, host: bytes) -> None:
    gw = await make_gateway(routes(upstream))
    resp = await raw_request(
        gw.public_port, b"GET /internal/x HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    )
    assert resp.status == 400
    assert upstream.seen == []


async def test_host_routes_case_insensitively_without_port(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(routes(upstream))
    resp = await raw_request(
        gw.public_port, get("/internal/x").replace(b"Host: gateway.test", b"Host: Internal.Example.COM:8080")
    )
    assert resp.status == 200
    assert upstream.last.headers["x-forwarded-host"] == ["Internal.Example.COM:8080"]


async def test_header_bytes_that_would_be_altered_are_refused(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(routes(upstream))
    resp = await raw_request(gw.public_port, get("/x", "X-Role: ad\xffmin".encode("latin-1").decode("latin-1")))
    assert resp.status == 400
    resp = await raw_request(gw.public_port, get("/x?q=\xff"))
    assert resp.status == 400
    assert upstream.seen == []
    # Valid UTF-8 goes through byte for byte.
    resp = await raw_request(
        gw.public_port, b"GET /x HTTP/1.1\r\nHost: g\r\nX-Name: caf\xc3\xa9\r\nConnection: close\r\n\r\n"
    )
    assert resp.status == 200
    assert upstream.last.headers["x-name"] == ["caf\u00e9"]


@pytest.mark.parametrize("coding", ["gzip, chunked", "foo, chunked", "chunked, chunked"])
async def test_unknown_transfer_codings_are_refused(
    make_gateway: GatewayFactory, upstream: Upstream, coding: str
) -> None:
    gw = await make_gateway(routes(upstream))
    request = f"POST /x HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: {coding}\r\nConnection: close\r\n\r\n0\r\n\r\n"
    resp = await raw_request(gw.public_port, request.encode())
    assert resp.status in (400, 501)
    assert upstream.seen == []


async def test_spoofable_forwarding_and_override_headers_are_dropped(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(routes(upstream))
    spoofs = [
        "X-Forwarded-Port: 443",
        "X-Forwarded-Prefix: /admin",
        "X-Forwarded-Ssl: on",
        "X_Forwarded_For: 6.6.6.7",
        "X_Forwarded_Proto: https",
        "X.Forwarded.Host: admin.example.com",
        "X_Real_IP: 6.6.6.8",
        "True-Client-IP: 6.6.6.9",
        "Client-IP: 6.6.6.9",
        "X-Client-IP: 6.6.6.9",
        "CF-Connecting-IP: 6.6.6.9",
        "Fastly-Client-IP: 6.6.6.9",
        "X-Cluster-Client-IP: 6.6.6.9",
        "X-Forwarded: for=6.6.6.9",
        "Forwarded-For: 6.6.6.9",
        "X-Originating-IP: 6.6.6.9",
        "X-Remote-IP: 6.6.6.9",
        "X-Remote-Addr: 6.6.6.9",
        "X-ProxyUser-Ip: 6.6.6.9",
        "X-Original-For: 6.6.6.9",
        "HTTP_X_FORWARDED_FOR: 6.6.6.9",
        "HTTP_CLIENT_IP: 6.6.6.9",
        "HTTP_X_Auth_Subject: admin",
        "X-Original-URL: /admin",
        "X-Rewrite-URL: /admin",
        "X-HTTP-Method-Override: DELETE",
        "X-Method-Override: DELETE",
        "X_HTTP_Method: DELETE",
        "Transfer_Encoding: chunked",
        "Content_Length: 5",
    ]
    resp = await raw_request(gw.public_port, get("/x", *spoofs))
    assert resp.status == 200
    seen = upstream.last.headers
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == ["gateway.test"]
    # The gateway's own: X-Forwarded-*, and the request ID (tests/functional/test_request_ids.py).
    own = ("host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id")
    leaked = sorted(k for k in seen if k not in own)
    assert leaked == []


OVERRIDES = [
    "X-Envoy-Original-Path: /admin",
    "X_Envoy_Original_Path: /admin",
    "X-Envoy-Original-Dst-Host: 10.0.0.1:22",
    "x-envoy-internal: true",
    "X-Original-URI: /admin",
    "HTTP_X_ORIGINAL_URL: /admin",
    "X-Forwarded-Prefix: /admin",
    "X-Forwarded-Path: /admin",
    "X-Forwarded-Uri: /admin",
    "X-Replaced-Path: /admin",
    "X.Script.Name: /admin",
    "Request-Uri: /admin",
    "X-Forwarded-Method: DELETE",
    "X-Original-Method: DELETE",
    "X-Host: internal.example.com",
    "X-Scheme: https",
]


@pytest.mark.parametrize("trusted", [False, True])
async def test_path_method_host_overrides_are_dropped_from_every_peer(
    make_gateway: GatewayFactory, upstream: Upstream, trusted: bool
) -> None:
    # A trusted proxy passes its client's headers through: trust in it covers the
    # forwarding headers it writes, not a path or method it never saw.
    server = "server: {trusted_proxies: [127.0.0.1/32]}" if trusted else ""
    gw = await make_gateway(routes(upstream, server))
    resp = await raw_request(gw.public_port, get("/x", *OVERRIDES, "X-Kept: yes"))
    assert resp.status == 200
    seen = upstream.last.headers
    assert sorted(seen) == [
        "host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-kept", "x-request-id"
    ]  # fmt: skip
    assert upstream.last.raw_path == "/x"


async def test_trusted_peer_cannot_suppress_the_gateways_own_forwarding_headers(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(routes(upstream, "server: {trusted_proxies: [127.0.0.1/32]}"))
    request = (
        b"GET /x HTTP/1.1\r\nHost: g\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: real.example.com\r\nX_Forwarded_For: 9.9.9.9\r\n"
        b"Connection: close, X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-For\r\n\r\n"
    )
    resp = await raw_request(gw.public_port, request)
    assert resp.status == 200
    seen = upstream.last.headers
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == ["g"]


async def test_unparseable_requests_echo_nothing(
    make_gateway: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await make_gateway(routes(upstream))
    bad = [
        f"GET /x?access_token={SECRET}&x=\x01 HTTP/1.1\r\nHost: g\r\n\r\n".encode(),
        f"GET /x HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {SECRET}\x01\r\n\r\n".encode(),
        f"GET /x HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {SECRET}{'A' * 40000}\r\n\r\n".encode(),
        f"GET /x HTTP/1.1\r\nHost: g\r\nX-Api-Key {SECRET}\r\n\r\n".encode(),
    ]
    for request in bad:
        resp = await raw_request(gw.public_port, request)
        # The over-long Authorization line is refused by the head limits (431).
        assert resp.status == (431 if len(request) > 40000 else 400)
        assert resp.headers["Content-Type"] == "application/json"
        assert SECRET.encode() not in resp.body
    assert upstream.seen == []
    assert "unparseable request" in caplog.text
    assert SECRET not in caplog.text
    assert "signature-secret" not in caplog.text


async def test_expect_is_ignored_for_http_1_0(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(routes(upstream))
    request = b"POST /x HTTP/1.0\r\nHost: g\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi"
    resp = await raw_request(gw.public_port, request)
    assert resp.status == 200
    assert upstream.last.body == b"hi"


async def test_client_address_headers_are_kept_only_from_a_trusted_peer_in_their_standard_spelling(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(routes(upstream, "server: {trusted_proxies: [127.0.0.1/32]}"))
    resp = await raw_request(gw.public_port, get("/x", "True-Client-IP: 1.1.1.1", "True_Client_IP: 6.6.6.6"))
    assert resp.status == 200
    assert upstream.last.headers["true-client-ip"] == ["1.1.1.1"]
    assert "true_client_ip" not in upstream.last.headers


async def test_asyncio_never_logs_the_text_of_an_exception_from_a_protocol(caplog: pytest.LogCaptureFixture) -> None:
    # An exception escaping data_received is logged by asyncio with its text, which can
    # quote request bytes (a token); the gateway keeps the event and its type only.
    silence_aiohttp_echo()

    class Leaky(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            raise ValueError(f"bad request bytes: {data!r}")

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Leaky, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(b"GET / HTTP/1.1\r\nAuthorization: Bearer S3CRETTOKEN\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # asyncio closed it
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert "asyncio reported ValueError" in caplog.text
    assert "S3CRETTOKEN" not in caplog.text
