"""The proxy listener's own HTTP/1.1 connection handling (`gateway/proxy/downstream.py`),
over real sockets: pipelining, Upgrade, unread uploads, idle and header timeouts,
HTTP/1.0 framing and clients that leave early."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from tests.conftest import GatewayFactory, Upstream
from tests.rawhttp import parse_response


def open_policy(upstream: Upstream, server: str = "") -> str:
    return f"""
    {server}
    routes:
      - name: open
        match: {{prefix: /open}}
        upstream: {upstream.url}
        auth: public
    """


def req(path: str, *extra: str, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway.test", *extra, "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def split_responses(data: bytes) -> list[bytes]:
    """Cut a byte stream of length-delimited responses into responses."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        out.append(head + sep + rest[:length])
        data = rest[length:]
    return out


async def exchange(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Write `data`, read until the gateway closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), wait)
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(open_policy(upstream))
    data = await exchange(gw.public_port, req("/open/1") + req("/open/2") + req("/open/3", "Connection: close"))
    responses = [parse_response(r) for r in split_responses(data)]
    assert [r.status for r in responses] == [200, 200, 200]
    assert [json.loads(r.body)["path"] for r in responses] == ["/open/1", "/open/2", "/open/3"]
    assert responses[-1].headers["Connection"] == "close"
    assert [s.raw_path for s in upstream.seen] == ["/open/1", "/open/2", "/open/3"]


async def test_upgrade_is_never_switched_and_nothing_after_it_is_read(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    """h2c / websocket smuggling: bytes after an Upgrade request must not reach anyone."""
    gw = await make_gateway(open_policy(upstream))
    data = await exchange(
        gw.public_port,
        req("/open/up", "Connection: Upgrade", "Upgrade: h2c") + req("/open/smuggled"),
    )
    responses = split_responses(data)
    assert len(responses) == 1
    assert parse_response(responses[0]).status == 200
    assert [s.raw_path for s in upstream.seen] == ["/open/up"]
    assert "upgrade" not in upstream.last.headers


async def test_refused_request_body_is_never_parsed_as_a_request(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(open_policy(upstream))
    smuggled = req("/open/smuggled")
    data = await exchange(
        gw.public_port,
        # 404: refused without reading the body, which holds a whole request.
        req("/nowhere", f"Content-Length: {len(smuggled)}", method="POST", body=smuggled)
        + req("/open/after", "Connection: close"),
    )
    responses = [parse_response(r) for r in split_responses(data)]
    assert [r.status for r in responses] == [404, 200]
    assert [s.raw_path for s in upstream.seen] == ["/open/after"]


async def test_large_refused_upload_gets_its_answer_then_a_close(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    """The 404 must reach a client still sending: the gateway reads and drops the rest
    for a while (lingering close) instead of resetting the connection under it."""
    gw = await make_gateway(open_policy(upstream))
    size = 8 * 1024 * 1024
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    try:
        writer.write(req("/nowhere", f"Content-Length: {size}", method="POST"))
        chunk = b"x" * 65536
        for _ in range(size // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
    resp = parse_response(data)
    assert resp.status == 404
    assert resp.headers["Connection"] == "close"
    assert upstream.seen == []


async def test_idle_connections_and_trickled_heads_are_closed(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(open_policy(upstream, "server: {keepalive_timeout: 300ms}"))
    # Idle after a response: closed by the gateway.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    writer.write(req("/open/1"))
    await writer.drain()
    t0 = time.monotonic()
    data = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert parse_response(data).status == 200
    assert 0.2 < time.monotonic() - t0 < 3
    # A head sent a few bytes at a time never completes: cut off too (slowloris).
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    t0 = time.monotonic()
    closed = False
    for byte in b"GET /open/slow HTTP/1.1\r\nHost: g\r\nX-Pad: " + b"a" * 40:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            closed = True
            break
        if reader.at_eof():
            closed = True
            break
        await asyncio.sleep(0.05)
    else:
        closed = await asyncio.wait_for(reader.read(-1), 5) == b""
    writer.close()
    assert closed
    assert time.monotonic() - t0 < 3
    assert all(s.raw_path != "/open/slow" for s in upstream.seen)


async def test_http_1_0_framing(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    async def unsized(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"no length ")
        await resp.write(b"declared")
        await resp.write_eof()
        return resp

    upstream.routes["/open/unsized"] = unsized
    gw = await make_gateway(open_policy(upstream))
    # HTTP/1.1 client: re-chunked.
    resp = parse_response(await exchange(gw.public_port, req("/open/unsized", "Connection: close")))
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert resp.body == b"no length declared"
    # HTTP/1.0 client: no chunking (it cannot read it); the body ends at close.
    data = await exchange(gw.public_port, b"GET /open/unsized HTTP/1.0\r\nHost: g\r\n\r\n")
    resp = parse_response(data)
    assert "Transfer-Encoding" not in resp.headers
    assert resp.headers["Connection"] == "close"
    assert resp.body == b"no length declared"
    # HTTP/1.0 keep-alive with a sized body: kept alive, said so.
    data = await exchange(
        gw.public_port,
        b"GET /open/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /open/b HTTP/1.0\r\n\r\n",
    )
    first, second = (parse_response(r) for r in split_responses(data))
    assert first.headers["Connection"] == "keep-alive"
    assert second.headers["Connection"] == "close"
    assert json.loads(second.body)["path"] == "/open/b"


async def test_client_leaving_early_is_logged_and_the_gateway_keeps_serving(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="late")

    upstream.routes["/open/slow"] = slow
    gw = await make_gateway(open_policy(upstream))
    _, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    writer.write(req("/open/slow"))
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await asyncio.sleep(0.1)
    release.set()
    await asyncio.sleep(0.2)
    resp = parse_response(await exchange(gw.public_port, req("/open/fine", "Connection: close")))
    assert resp.status == 200
    # Counted as nginx counts it: 499, an error, not a 200 nobody received.
    left = gw.metrics.registry.get_sample_value(
        "gateway_requests_total", {"route": "open", "method": "GET", "status_class": "4xx", "outcome": "error"}
    )
    assert left == 1.0
    assert gw.metrics.registry.get_sample_value("gateway_in_flight_requests") == 0.0
