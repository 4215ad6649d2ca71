"""What one client connection, and the process, may hold (gateway/limits.py, framing.py).

The heads are refused before either aiohttp parser buffers them (431, 414 for the
request line), the heads read ahead of the one being answered are bounded in bytes,
the open connections in number (503 past it), and the resident memory of a gateway
process under the attack that used to take it from 62 to 951 MiB stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import weakref
from pathlib import Path

import pytest
from aiohttp import web

from gateway.app import Gateway
from gateway.limits import Limits
from gateway.policy import ConfigError, load_policy
from gateway.proxy.downstream import ClientConnection
from gateway.proxy.guards import RequestGuard
from tests.conftest import GatewayFactory, Upstream
from tests.metrics_parse import scrape
from tests.procs import running_gateway
from tests.rawhttp import get, raw_request


def _head(*headers: str, path: str = "/open/x") -> bytes:
    """A request with `headers` plus Host and Connection (two more fields)."""
    return get(path, *headers)


HEAD_CASES = [
    ("an ordinary header line over 8 KiB", _head("X-Big: " + "a" * 8200), 431),
    ("101 header fields", _head(*(f"X-H{i}: 1" for i in range(99))), 431),
    ("a head over 64 KiB in 8 KiB lines", _head(*(f"X-H{i}: " + "a" * 8000 for i in range(9))), 431),
    ("a request line over 8190 bytes", _head(path="/open/" + "a" * 8200), 414),
    # The Authorization line may be twice the token cap, so that an oversized token is
    # answered by the handler (401 token_too_large), not refused as a header.
    ("an Authorization line of 12 KiB", _head("Authorization: Bearer " + "a" * 12_000), 200),
    ("100 header fields in 60 KiB", _head(*(f"X-H{i}: " + "a" * 600 for i in range(98))), 200),
]


def _open_routes(upstream: Upstream) -> str:
    return f"""
        - {{name: open, match: {{prefix: /open}}, upstream: "{upstream.url}", auth: public}}
        """


def _hold_slow(upstream: Upstream) -> asyncio.Event:
    """`/open/slow` answers only once the returned event is set."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 30)
        return web.Response(text="late")

    upstream.routes["/open/slow"] = slow
    return release


# The defect's attack: heads of 120 headers x 17 KB, pipelined behind a request the
# upstream holds. Before the limits each connection held ~110 MiB, for good.
_ATTACK_HEAD = _head(*(f"X-H{i}: " + "a" * 17_000 for i in range(120))).replace(b"Connection: close\r\n", b"")
# The largest heads the limits let through (8 x 8 000-byte lines, under 64 KiB).
_LARGEST_HEAD = _head(*(f"X-H{i}: " + "a" * 8000 for i in range(7))).replace(b"Connection: close\r\n", b"")


async def _pipeline(port: int, heads: bytes, copies: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A request the upstream holds, then `copies` heads, sent as far as the gateway reads."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/open/slow").replace(b"Connection: close\r\n", b""))
    for _ in range(copies):
        writer.write(heads)
    with contextlib.suppress(TimeoutError):
        # The gateway stops reading at its budget: the rest stays in our buffers.
        await asyncio.wait_for(writer.drain(), 1)
    return reader, writer


@pytest.mark.parametrize("parser", ["c", "python"])
async def test_head_limits_and_memory_under_each_parser(tmp_path: Path, upstream: Upstream, parser: str) -> None:
    release = _hold_slow(upstream)
    env = {"AIOHTTP_NO_EXTENSIONS": "1"} if parser == "python" else {}
    async with running_gateway(tmp_path, _open_routes(upstream), env=env) as gw:
        for what, request, status in HEAD_CASES:
            resp = await raw_request(gw.port, request, wait=5)
            assert resp.status == status, (parser, what)
            if status >= 400:
                assert json.loads(resp.body)["error"] == "invalid_request"

        # A long Authorization line split across reads: the Python parser used to
        # refuse any unfinished line over 8190 bytes (400), llhttp took it (200).
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        request = _head("Authorization: Bearer " + "a" * 12_000)
        writer.write(request[:9000])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(request[9000:])
        assert (await asyncio.wait_for(reader.read(-1), 5)).startswith(b"HTTP/1.1 200 "), parser
        writer.close()

        before = gw.rss_kib()
        conns = await asyncio.gather(
            *(_pipeline(gw.port, _ATTACK_HEAD, 32) for _ in range(8)),
            *(_pipeline(gw.port, _LARGEST_HEAD, 64) for _ in range(8)),
        )
        await asyncio.sleep(0.5)
        grown_mib = (gw.rss_kib("VmHWM") - before) / 1024
        print(f"{parser}: peak RSS grew by {grown_mib:.1f} MiB")
        # (The attack's 431 is answered in turn, after the request the upstream holds.)
        for _, writer in conns:
            # abort, not close: a close waits to send the pipelined bytes the gateway
            # does not read, and the socket outlived the test (an unclosed-socket warning
            # in a later test).
            writer.transport.abort()
        release.set()
        # 16 connections at the limits: SECURITY.md puts the worst case at about
        # 1.3 MiB each; the old code took 8 of these to ~900 MiB.
        assert grown_mib < 16 * Limits().worst_case_bytes() / 2**20 + 40, (parser, grown_mib)


def _the_connection(gw: Gateway) -> tuple[ClientConnection, RequestGuard]:
    """The gateway's one client connection and its request guard."""
    assert gw._server is not None
    (conn,) = gw._server.connections
    assert isinstance(conn, ClientConnection)
    assert isinstance(conn._requests, RequestGuard)
    return conn, conn._requests


async def test_pipelined_heads_are_bounded_in_bytes(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    release = _hold_slow(upstream)
    gw = await make_gateway("routes:" + _open_routes(upstream).replace("\n        -", "\n  -"))
    _reader, writer = await _pipeline(gw.public_port, _LARGEST_HEAD, 64)
    await asyncio.sleep(0.2)
    _, guard = _the_connection(gw)
    queued = guard._framer.pending
    # One head past the budget at most; the rest of the 64 heads is still unread.
    assert queued <= Limits().max_pipelined_bytes + len(_LARGEST_HEAD)
    assert len(guard._held) <= 256 * 1024
    writer.close()
    release.set()


async def test_pipelined_bodies_count_with_their_heads(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    """Uploads queued behind a held request: each complete one stayed buffered (a
    100 KB body is under the body buffer's pause mark), 32 of them per connection."""
    release = _hold_slow(upstream)
    gw = await make_gateway("routes:" + _open_routes(upstream).replace("\n        -", "\n  -"))
    upload = b"POST /open/up HTTP/1.1\r\nHost: g\r\nContent-Length: 100000\r\n\r\n" + b"u" * 100_000
    reader, writer = await _pipeline(gw.public_port, upload, 32)
    await asyncio.sleep(0.2)
    conn, guard = _the_connection(gw)
    # Read ahead: up to the budget, inside the first queued upload; the rest unread.
    assert guard._framer.pending <= Limits().max_pipelined_bytes
    assert len(conn._queue) <= 1
    release.set()
    # Then every upload is read and answered, in order.
    data = b""
    while data.count(b"HTTP/1.1 200 ") < 33:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk
        data += chunk
    assert [s.raw_path for s in upstream.seen].count("/open/up") == 32
    writer.close()


async def test_connections_past_max_connections_get_503(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    routes = "routes:" + _open_routes(upstream).replace("\n        -", "\n  -")
    gw = await make_gateway("server: {max_connections: 3}\n" + routes)
    idle = [await asyncio.open_connection("127.0.0.1", gw.public_port) for _ in range(3)]
    refused = await raw_request(gw.public_port, get("/open/x"))
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "1"
    assert json.loads(refused.body)["error"] == "temporarily_unavailable"
    assert upstream.seen == []
    metrics = await scrape(gw.admin_port)
    assert metrics.get("gateway_connections_refused_total") == 1
    assert metrics.get("gateway_client_connections") == 3
    # A slot freed is a slot taken again.
    idle[0][1].close()
    for _ in range(50):
        assert gw._server is not None
        if gw._server.open < 3:
            break
        await asyncio.sleep(0.02)
    ok = await raw_request(gw.public_port, get("/open/x"))
    assert ok.status == 200
    for _, writer in idle[1:]:
        writer.close()


async def test_limits_are_policy_settings(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    routes = "routes:" + _open_routes(upstream).replace("\n        -", "\n  -")
    gw = await make_gateway("server: {max_headers: 10, max_header_line: 2048}\n" + routes)
    assert (await raw_request(gw.public_port, _head(*(f"X-H{i}: 1" for i in range(8))))).status == 200
    assert (await raw_request(gw.public_port, _head(*(f"X-H{i}: 1" for i in range(9))))).status == 431
    assert (await raw_request(gw.public_port, _head("X-Big: " + "a" * 2100))).status == 431


def test_a_head_budget_too_small_for_a_token_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\nserver: {max_head_bytes: 8192}\nroutes:\n"
        '  - {name: o, match: {prefix: /}, upstream: "http://127.0.0.1:1", auth: public}\n'
    )
    with pytest.raises(ConfigError, match=r"gateway.yaml:2: server.max_head_bytes: 8192 .* expected at least"):
        load_policy(str(path))


async def test_a_reload_applies_new_limits_to_new_connections(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    routes = "routes:" + _open_routes(upstream).replace("\n        -", "\n  -")
    gw = await make_gateway(routes)
    eleven_fields = _head(*(f"X-H{i}: 1" for i in range(9)))
    assert (await raw_request(gw.public_port, eleven_fields)).status == 200
    text = "listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\nserver: {max_headers: 10}\n" + routes
    await asyncio.to_thread(Path(gw.policy.source).write_text, text)
    assert await gw.reload()
    assert (await raw_request(gw.public_port, eleven_fields)).status == 431


async def test_after_a_burst_past_max_connections_the_gateway_serves_again(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    """Under uvloop (as the workers run) a refused connection was never closed nor
    uncounted (an assert on asyncio's transport class failed): after one burst past
    the limit, every later connection was lost (found by review)."""
    routes = "routes:" + _open_routes(upstream).replace("\n        -", "\n  -")
    gw = await make_gateway("server: {max_connections: 2}\n" + routes)
    socks = [socket.create_connection(("127.0.0.1", gw.public_port)) for _ in range(6)]
    await asyncio.sleep(0.3)
    for sock in socks:
        sock.close()
    server = gw._server
    assert server is not None
    for _ in range(100):
        if server.open == 0:
            break
        await asyncio.sleep(0.03)
    assert server.open == 0
    assert (await raw_request(gw.public_port, get("/open/x"))).status == 200


async def test_a_refused_connection_holds_nothing_once_it_is_closed(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    """A connection refused 431 lingers (reads and drops) for up to 5 s; its timer kept
    the connection, with the head it refused, alive for those 5 s after the client had
    gone. Many clients refused in turn then made the process hold the rate of refusals
    times 5 s times 64 KiB (370 MiB in 5 s at 1 000 refusals a second), far past the
    bound for the connections open (found by test_hostile_clients.py)."""
    gw = await make_gateway("routes:" + _open_routes(upstream).replace("\n        -", "\n  -"))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    writer.write(HEAD_CASES[2][1])  # a head over 64 KiB
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 431 ")
    conn, _ = _the_connection(gw)
    gone = weakref.ref(conn)
    del conn
    writer.close()
    server = gw._server
    assert server is not None
    for _ in range(100):
        if not server.connections:
            break
        await asyncio.sleep(0.02)
    gc.collect()
    assert gone() is None
