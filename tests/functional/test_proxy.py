"""The proxy through real sockets: forwarding, headers, framing, upstream failures."""

from __future__ import annotations

import asyncio
import gzip
import socket

import aiohttp
import pytest
from aiohttp import web

from gateway.app import Gateway
from gateway.auth.forward import IdentityHeaders
from gateway.limits import Limits
from gateway.obs.access import AccessLog
from gateway.obs.metrics import Metrics
from gateway.obs.redact import Redactor
from gateway.proxy.handler import HandlerSettings, ProxyHandler, Runtime
from gateway.proxy.headers import ForwardedFor
from gateway.proxy.server import make_server
from gateway.proxy.upstream import UpstreamPool
from gateway.routing import CompiledRoute, RouteTable
from tests.conftest import GatewayFactory, Upstream
from tests.rawhttp import get, raw_request


def policy(upstream: Upstream, extra: str = "", server: str = "") -> str:
    return f"""
    {server}
    routes:
      - name: slow
        match: {{prefix: /slow}}
        upstream: {upstream.url}
        timeouts: {{read: 300ms}}
        auth: public
      - name: catalog
        match: {{prefix: /catalog}}
        upstream: {upstream.url}/v1
        strip_prefix: true
        auth: public
      - name: exact
        match: {{path: /only, methods: [GET, HEAD, POST]}}
        upstream: {upstream.url}
        auth: public
    {extra}
    """


def base(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.public_port}"


async def test_forwards_with_prefix_strip_and_query_unchanged(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(policy(upstream))
    resp = await raw_request(gw.public_port, get("/catalog/items/7?x=1&y=%2F&z=..%2f&t"))
    assert resp.status == 200
    assert upstream.last.raw_path == "/v1/items/7?x=1&y=%2F&z=..%2f&t"
    assert upstream.last.method == "GET"


async def test_unmatched_is_404_json_and_never_forwarded(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(policy(upstream))
    for target, method in [("/nowhere", "GET"), ("/catalogue", "GET"), ("/only", "DELETE"), ("/only/x", "GET")]:
        resp = await raw_request(gw.public_port, get(target, method=method))
        assert resp.status == 404, target
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.body == b'{"error": "not_found", "error_description": "no route matches this request"}'
    assert upstream.seen == []


async def test_first_match_wins(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(
        f"""
        routes:
          - {{name: a, match: {{prefix: /x/special}}, upstream: "{upstream.url}/first", auth: public}}
          - {{name: b, match: {{prefix: /x}}, upstream: "{upstream.url}/second", auth: public}}
        """
    )
    await raw_request(gw.public_port, get("/x/special/1"))
    await raw_request(gw.public_port, get("/x/specialist"))
    assert [s.raw_path for s in upstream.seen] == ["/first/x/special/1", "/second/x/specialist"]


async def test_path_forwarded_is_the_path_matched(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(
        f"""
        routes:
          - {{name: pub, match: {{prefix: /public}}, upstream: "{upstream.url}", auth: public}}
        """
    )
    cases = {
        "/public/./a//b/%7Ex/%61": "/public/a/b/~x/a",
        "/public/a/../b": "/public/b",
        "//public/x": "/public/x",
        "/public/a%20b/%c3%a9": "/public/a%20b/%C3%A9",
        "/public/a;v=1/b": "/public/a;v=1/b",
    }
    for sent, forwarded in cases.items():
        resp = await raw_request(gw.public_port, get(sent))
        assert resp.status == 200, sent
        assert upstream.last.raw_path == forwarded, sent
    # Climbing out of the public prefix lands on an unrouted path: refused, not forwarded.
    count = len(upstream.seen)
    for sent in ["/public/../admin", "/public/%2e%2e/admin", "/public/.%2E/admin"]:
        resp = await raw_request(gw.public_port, get(sent))
        assert resp.status == 404, sent
    assert len(upstream.seen) == count


async def test_ambiguous_targets_are_400_and_never_forwarded(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(
        f"""
        routes:
          - {{name: all, match: {{prefix: /}}, upstream: "{upstream.url}", auth: public}}
        """
    )
    targets = [
        "/a%2Fb",
        "/a%2fb",
        "/a%5Cb",
        "/a\\b",
        "/a%00b",
        "/..",
        "/a/../../b",
        "/%2e%2e/x",
        "/a/..;/b",
        "/a%zz",
        "http://evil.example/admin",
        "*",
    ]
    for target in targets:
        resp = await raw_request(gw.public_port, get(target))
        assert resp.status == 400, target
        assert b"evil" not in resp.body
    assert upstream.seen == []
    # The connection-level parser refuses a raw control byte before we see it; either
    # way the answer is 400 and nothing is forwarded.
    resp = await raw_request(gw.public_port, get("/a\x01b"))
    assert resp.status == 400
    assert upstream.seen == []


async def test_hop_by_hop_removed_both_ways(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    async def hoppy(request: web.Request) -> web.StreamResponse:
        resp = web.Response(text="hi")
        resp.headers["Connection"] = "X-Resp-Hop"
        resp.headers["X-Resp-Hop"] = "secret-hop"
        resp.headers["Keep-Alive"] = "timeout=5"
        resp.headers["Proxy-Authenticate"] = "Basic"
        resp.headers["Upgrade"] = "h2c"
        resp.headers["X-End-To-End"] = "kept"
        return resp

    upstream.routes["/v1/hop"] = hoppy
    gw = await make_gateway(policy(upstream))
    # Send with our own Connection header naming a custom hop-by-hop header.
    request = (
        b"GET /catalog/x HTTP/1.1\r\nHost: g\r\nConnection: close, X-Custom-Hop\r\nX-Custom-Hop: 1\r\n"
        b"Keep-Alive: timeout=1\r\nTE: trailers\r\nUpgrade: websocket\r\n"
        b"Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\nX-End-To-End: yes\r\n\r\n"
    )
    resp = await raw_request(gw.public_port, request)
    assert resp.status == 200
    seen = upstream.last.headers
    for name in ["x-custom-hop", "te", "upgrade", "proxy-authorization", "proxy-connection"]:
        assert name not in seen, name
    assert seen.get("keep-alive") is None
    assert seen["x-end-to-end"] == ["yes"]

    resp = await raw_request(gw.public_port, get("/catalog/hop"))
    assert resp.status == 200
    for name in ["X-Resp-Hop", "Keep-Alive", "Proxy-Authenticate", "Upgrade"]:
        assert name not in resp.headers, name
    assert resp.headers["X-End-To-End"] == "kept"
    assert resp.body == b"hi"


async def test_forwarded_headers_untrusted_peer(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(policy(upstream))
    await raw_request(
        gw.public_port,
        get(
            "/catalog/x",
            "X-Forwarded-For: 6.6.6.6",
            "X-Forwarded-Proto: https",
            "X-Forwarded-Host: evil.example",
            "Forwarded: for=6.6.6.6",
            "X-Real-IP: 6.6.6.6",
        ),
    )
    seen = upstream.last.headers
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == ["gateway.test"]
    assert "forwarded" not in seen
    assert "x-real-ip" not in seen


async def test_forwarded_headers_trusted_peer(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(policy(upstream, server="server: {trusted_proxies: [127.0.0.0/8]}"))
    await raw_request(
        gw.public_port,
        get("/catalog/x", "X-Forwarded-For: 6.6.6.6", "X-Forwarded-Proto: https", "X-Forwarded-Host: api.example"),
    )
    seen = upstream.last.headers
    assert seen["x-forwarded-for"] == ["6.6.6.6, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-host"] == ["api.example"]


async def test_spoofed_identity_headers_and_aliases_are_stripped(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(policy(upstream))
    await raw_request(
        gw.public_port,
        get(
            "/catalog/x",
            "X-Auth-Subject: admin",
            "x-auth-scopes: all",
            "X_Auth_Subject: admin",
            "X.Auth.Role: root",
            "X-Authority: kept",
        ),
    )
    seen = upstream.last.headers
    assert not [k for k in seen if k.replace("_", "-").replace(".", "-").startswith("x-auth-")]
    assert seen["x-authority"] == ["kept"]


async def test_redirects_cookies_and_encodings_pass_through(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    payload = gzip.compress(b"compressed body " * 100)

    async def redirect(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": "/v1/elsewhere"})

    async def login(request: web.Request) -> web.StreamResponse:
        resp = web.Response(text="in")
        resp.headers.add("Set-Cookie", "session=abc; Path=/")
        resp.headers.add("Set-Cookie", "other=def; Path=/")
        return resp

    async def zipped(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        return web.Response(body=payload, headers={"Content-Encoding": "gzip", "X-Got": str(len(body))})

    upstream.routes |= {"/v1/redirect": redirect, "/v1/login": login, "/v1/zip": zipped}
    gw = await make_gateway(policy(upstream))

    resp = await raw_request(gw.public_port, get("/catalog/redirect"))
    assert resp.status == 302
    assert resp.headers["Location"] == "/v1/elsewhere"
    assert upstream.seen == []  # not followed

    resp = await raw_request(gw.public_port, get("/catalog/login"))
    assert resp.headers.getall("Set-Cookie") == ["session=abc; Path=/", "other=def; Path=/"]
    await raw_request(gw.public_port, get("/catalog/next"))
    assert "cookie" not in upstream.last.headers  # no jar: never replayed to the next caller

    body = gzip.compress(b"request body " * 50)
    request = (
        b"POST /catalog/zip HTTP/1.1\r\nHost: g\r\nConnection: close\r\nContent-Encoding: gzip\r\n"
        b"Accept-Encoding: gzip\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    resp = await raw_request(gw.public_port, request)
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.body == payload
    assert resp.headers["X-Got"] == str(len(body))  # the upstream read the compressed bytes


async def test_request_framing(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(policy(upstream))
    await raw_request(gw.public_port, get("/catalog/plain"))
    seen = upstream.last.headers
    assert "content-type" not in seen
    assert "transfer-encoding" not in seen
    assert "user-agent" not in seen  # aiohttp's own default headers are not added
    assert upstream.last.body == b""

    request = b"POST /catalog/cl HTTP/1.1\r\nHost: g\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
    await raw_request(gw.public_port, request)
    assert upstream.last.headers["content-length"] == ["5"]
    assert upstream.last.body == b"hello"

    request = (
        b"POST /catalog/chunked HTTP/1.1\r\nHost: g\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    await raw_request(gw.public_port, request)
    assert upstream.last.headers["transfer-encoding"] == ["chunked"]
    assert upstream.last.body == b"hello world"


async def test_expect_100_continue(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(policy(upstream))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    writer.write(
        b"POST /catalog/up HTTP/1.1\r\nHost: g\r\nConnection: close\r\n"
        b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"data")
    rest = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 200")
    assert upstream.last.body == b"data"
    assert "expect" not in upstream.last.headers


async def test_head_204_304(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    async def empty(request: web.Request) -> web.StreamResponse:
        status = int(request.query["s"])
        return web.Response(status=status, headers={"ETag": '"v1"'})

    upstream.routes["/v1/empty"] = empty
    gw = await make_gateway(policy(upstream))
    for status in (204, 304):
        resp = await raw_request(gw.public_port, get(f"/catalog/empty?s={status}"))
        assert resp.status == status
        assert resp.body == b""
        assert resp.headers["ETag"] == '"v1"'
    async with aiohttp.ClientSession() as client:
        async with client.head(f"{base(gw)}/only") as r:
            assert r.status == 200
            assert r.headers["Content-Length"] == str(len(b'{"ok": true, "path": "/only"}'))
            assert await r.read() == b""
        # The connection stays usable after a HEAD (no stray body bytes on the wire).
        async with client.get(f"{base(gw)}/only") as r:
            assert await r.json() == {"ok": True, "path": "/only"}


async def test_unreachable_502_slow_504_and_keeps_serving(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2)
        return web.Response(text="late")

    upstream.routes["/slow"] = slow
    # A port that was free a moment ago: nothing listens there.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    gw = await make_gateway(
        policy(upstream)
        + f"""
      - name: dead
        match: {{prefix: /dead}}
        upstream: http://127.0.0.1:{dead_port}
        auth: public
        """
    )
    resp = await raw_request(gw.public_port, get("/dead/x"))
    assert resp.status == 502
    assert resp.body == b'{"error": "bad_gateway", "error_description": "the upstream service could not be reached"}'
    resp = await raw_request(gw.public_port, get("/slow"))
    assert resp.status == 504
    assert (
        resp.body == b'{"error": "gateway_timeout", "error_description": "the upstream service did not answer in time"}'
    )
    resp = await raw_request(gw.public_port, get("/catalog/fine"))
    assert resp.status == 200


async def test_upstream_dying_mid_body_cuts_the_client(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    async def dies(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000000"})
        await resp.prepare(request)
        await resp.write(b"x" * 1000)
        assert request.transport is not None
        request.transport.abort()
        return resp

    upstream.routes["/v1/dies"] = dies
    gw = await make_gateway(policy(upstream))
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{base(gw)}/catalog/dies") as r:
            assert r.status == 200
            try:
                await r.read()
            except aiohttp.ClientPayloadError:
                pass
            else:
                raise AssertionError("a truncated body was delivered as complete")
        async with client.get(f"{base(gw)}/catalog/after") as r:
            assert r.status == 200


class _BrokenTable(RouteTable):
    """A route table with a bug in it: the handler must fail closed, not open."""

    error: type[Exception] = RuntimeError

    def match(self, method: str, host: str, path: str) -> CompiledRoute | None:
        raise self.error(f"bug while matching {path}")


class _ResetTable(_BrokenTable):
    # A connection error that is not the client's: not to be taken for a client leaving.
    error = ConnectionResetError


@pytest.mark.parametrize("table", [_BrokenTable, _ResetTable])
async def test_unexpected_error_fails_closed_without_leaking(
    upstream: Upstream, caplog: pytest.LogCaptureFixture, table: type[_BrokenTable]
) -> None:
    pool = UpstreamPool()
    settings = HandlerSettings(ForwardedFor(()), IdentityHeaders.of("X-Auth-", ()), "gateway", 8192)
    metrics = Metrics()
    runtime = Runtime.build(table(()), settings, AccessLog("json", True, Redactor()), metrics)
    server = make_server(ProxyHandler(runtime, pool, metrics), Limits())
    listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
    try:
        resp = await raw_request(listener.sockets[0].getsockname()[1], get("/x?api_key=SECRET123"))
        # The listener keeps serving after our bug.
        again = await raw_request(listener.sockets[0].getsockname()[1], get("/y"))
    finally:
        listener.close()
        await server.shutdown(1.0)
        await listener.wait_closed()
        pool.close()
    assert again.status == 500
    assert resp.status == 500
    assert resp.body == b'{"error": "internal_error", "error_description": "the gateway failed to handle this request"}'
    assert upstream.seen == []
    request_id = resp.headers["X-Request-Id"]
    assert f"internal error request_id={request_id} {table.error.__name__}" in caplog.text
    assert "SECRET123" not in caplog.text


async def test_small_bodies_failing_before_the_end_get_a_clean_error(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    async def stalls(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"x" * 10)
        await asyncio.sleep(2)
        return resp

    async def aborts(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"x" * 10)
        assert request.transport is not None
        request.transport.abort()
        return resp

    upstream.routes |= {"/slow/stalls": stalls, "/v1/aborts": aborts}
    gw = await make_gateway(policy(upstream))
    resp = await raw_request(gw.public_port, get("/slow/stalls"))
    assert resp.status == 504
    resp = await raw_request(gw.public_port, get("/catalog/aborts"))
    assert resp.status == 502
    assert b"x" * 10 not in resp.body
