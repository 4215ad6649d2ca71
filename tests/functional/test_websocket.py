"""WebSockets through a real gateway: aiohttp's client, aiohttp's server as the upstream,
real tokens, real sockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientWebSocketResponse as ClientWs
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from gateway.app import Gateway
from gateway.limits import READ_CHUNK
from gateway.policy import ConfigError, load_policy
from gateway.proxy.websocket import HIGH_WATER, Relay, WebSockets
from gateway.tokens import revocation
from tests.conftest import GatewayFactory
from tests.factories import claims, sign
from tests.functional.auth_env import HMAC_ISSUER, HMAC_SECRET
from tests.tcpserver import Served

# On both loops: the relay takes transports over (`set_protocol`) and drives their flow
# control, where uvloop and asyncio differ (conftest.py).
pytestmark = pytest.mark.asyncio(loop_factories=["uvloop", "asyncio"])

BIG = 3 * 2**20  # a message larger than any buffer on the way


@dataclass
class WsUpstream:
    """An aiohttp WebSocket server: echoes, and records what it saw and how each ended."""

    server: TestServer | None = None
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    ended: list[int | None] = field(default_factory=list)
    ended_event: asyncio.Event = field(default_factory=asyncio.Event)
    flood_sent: int = 0
    received: list[str | bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.raw_path, dict(request.headers)))
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.json_response({"plain": True, "path": request.raw_path})
        if request.path.endswith("/deny"):
            return web.Response(status=403, text="not you")
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        try:
            if request.path.endswith("/flood"):
                sender = asyncio.create_task(self._flood(ws))
                async for _ in ws:
                    pass
                sender.cancel()
            elif request.path.endswith("/bye"):
                await ws.send_str("bye")
                await ws.close(code=4000)
            else:
                async for msg in ws:
                    self.received.append(msg.data)
                    if msg.type == WSMsgType.TEXT:
                        await ws.send_str(msg.data)
                    elif msg.type == WSMsgType.BINARY:
                        await ws.send_bytes(msg.data)
        except ConnectionError:
            pass
        finally:
            self.ended.append(ws.close_code)
            self.ended_event.set()
        return ws

    async def _flood(self, ws: web.WebSocketResponse) -> None:
        chunk = b"x" * 65536
        while not ws.closed:
            await ws.send_bytes(chunk)  # waits while the socket's buffer is full
            self.flood_sent += len(chunk)

    async def wait_ended(self, seconds: float = 5.0) -> int | None:
        async with asyncio.timeout(seconds):
            await self.ended_event.wait()
        return self.ended[-1]


@pytest.fixture
async def ws_upstream() -> AsyncIterator[WsUpstream]:
    up = WsUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", up.handle)
    up.server = TestServer(app, host="127.0.0.1")
    await up.server.start_server()
    yield up
    await up.server.close()


Start = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start(
    make_gateway: GatewayFactory, ws_upstream: WsUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Start:
    monkeypatch.setenv("GATEWAY_TEST_HMAC", HMAC_SECRET.decode())

    async def start_(idle: str = "30s", limit: int = 100, frame_rate: int = 2000) -> Gateway:
        u = ws_upstream.url
        return await make_gateway(f"""
        server:
          websocket_idle_timeout: {idle}
          max_websockets: {limit}
          websocket_max_client_frames_per_second: {frame_rate}
        providers:
          shared:
            issuer: {HMAC_ISSUER}
            audiences: [orders-api]
            algorithms: [HS256]
            leeway: 1s
            keys: [{{hmac_secret: {{env: GATEWAY_TEST_HMAC}}}}]
            revocation_file: "{tmp_path / "revoked.json"}"
        routes:
          - {{name: ws, match: {{prefix: /ws}}, upstream: "{u}", websocket: true, auth: {{any_of: [shared]}}}}
          - name: keep
            match: {{prefix: /keep}}
            upstream: "{u}"
            websocket: true
            websocket_close_on_expiry: false
            auth: {{any_of: [shared]}}
          - {{name: open, match: {{prefix: /open}}, upstream: "{u}", websocket: true, auth: public}}
          - {{name: plain, match: {{prefix: /plain}}, upstream: "{u}", auth: {{any_of: [shared]}}}}
        """)

    return start_


def token(ttl: float = 300, jti: str | None = None) -> str:
    # The provider has a revocation list: its tokens carry a `jti`.
    return sign(HMAC_SECRET, claims(iss=HMAC_ISSUER, ttl=ttl, jti=jti or os.urandom(8).hex()), alg="HS256")


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def url(gw: Gateway, path: str) -> str:
    return f"http://127.0.0.1:{gw.public_port}{path}"


@contextlib.asynccontextmanager
async def connect(gw: Gateway, path: str, tok: str | None = None, **kw: Any) -> AsyncIterator[ClientWs]:
    headers = bearer(tok) if tok is not None else {}
    async with aiohttp.ClientSession() as session, session.ws_connect(url(gw, path), headers=headers, **kw) as ws:
        yield ws


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]


async def until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def relays(gw: Gateway) -> list[Relay]:
    assert gw._handler is not None
    return list(gw._handler.websockets._relays)


async def test_echo_text_binary_and_a_large_message(
    start: Start, ws_upstream: WsUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start()
    payload = os.urandom(BIG)
    async with connect(gw, "/ws/echo?room=1", token(), max_msg_size=0) as ws:
        returned_id = ws._response.headers["X-Request-Id"]
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "hello"
        await ws.send_bytes(b"\x00\x01binary")
        assert (await ws.receive(timeout=5)).data == b"\x00\x01binary"
        await ws.send_bytes(payload)
        msg = await ws.receive(timeout=10)
        assert msg.type == WSMsgType.BINARY
        assert msg.data == payload
        exposition = (await gw.exposition()).decode()
        assert "gateway_websockets_open 1.0" in exposition
        assert "gateway_in_flight_requests 0.0" in exposition  # not a request in flight
        assert gw._server is not None
        assert gw._server.coalescer.busy == 0  # nor one whose writes others could join
    assert await ws_upstream.wait_ended() == 1000
    # The upstream saw the path the policy saw, the identity headers, no token.
    path, headers = ws_upstream.seen[0]
    assert path == "/ws/echo?room=1"
    assert headers["X-Auth-Subject"] == "alice"
    assert "Authorization" not in headers
    assert headers["Upgrade"] == "websocket"
    assert headers["Sec-WebSocket-Version"] == "13"
    await until(lambda: bool(access_records(caplog)))
    [line] = access_records(caplog)
    assert line["status"] == 101
    assert line["route"] == "ws"
    assert line["reason"] == "client_closed"
    assert line["bytes_in"] > BIG
    assert line["bytes_out"] > BIG
    assert line["duration_seconds"] > 0
    # One request ID: sent upstream with the handshake, returned with the 101, logged.
    assert headers["X-Request-ID"] == returned_id == line["request_id"]
    assert "gateway_websockets_open 0.0" in (await gw.exposition()).decode()


async def test_handshake_is_authorized_like_any_request(start: Start, ws_upstream: WsUpstream) -> None:
    gw = await start()
    async with aiohttp.ClientSession() as session:
        for headers in ({}, bearer("not.a.token"), bearer(token(ttl=-60))):
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await session.ws_connect(url(gw, "/ws/echo"), headers=headers)
            assert caught.value.status == 401
            assert caught.value.headers is not None
            assert "Bearer" in caught.value.headers.get("WWW-Authenticate", "")
    assert ws_upstream.seen == []  # never contacted


async def test_a_route_that_did_not_opt_in_drops_the_upgrade(start: Start, ws_upstream: WsUpstream) -> None:
    gw = await start()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(url(gw, "/plain/echo"), headers=bearer(token()))
        assert caught.value.status == 200  # answered as plain HTTP, as before
    path, headers = ws_upstream.seen[0]
    assert path == "/plain/echo"
    assert "Upgrade" not in headers
    assert ws_upstream.ended == []


async def test_h2c_on_a_websocket_route_is_not_switched(start: Start, ws_upstream: WsUpstream) -> None:
    gw = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    writer.write(b"GET /open/x HTTP/1.1\r\nHost: g\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)  # answered, then closed
    writer.close()
    assert data.startswith(b"HTTP/1.1 200 ")
    assert "Upgrade" not in ws_upstream.seen[0][1]


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        (b"Sec-WebSocket-Version: 13\r\n", "no key"),
        (b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n", "old version"),
        (b"Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n", "bad key"),
    ],
)
async def test_a_malformed_handshake_is_400(start: Start, ws_upstream: WsUpstream, lines: bytes, why: str) -> None:
    gw = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    writer.write(b"GET /open/x HTTP/1.1\r\nHost: g\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" + lines + b"\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 400 "), why
    assert ws_upstream.seen == []


async def test_closed_with_1008_when_the_token_expires(
    start: Start, ws_upstream: WsUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start()
    t0 = time.time()
    async with connect(gw, "/ws/echo", token(ttl=2)) as ws:
        await ws.send_str("before")
        assert (await ws.receive(timeout=5)).data == "before"
        msg = await ws.receive(timeout=6)
        assert msg.type == WSMsgType.CLOSE
        assert msg.data == 1008
        assert time.time() - t0 >= 1.0
    assert await ws_upstream.wait_ended() == 1008  # the upstream got a (masked) Close too
    await until(lambda: bool(access_records(caplog)))
    assert access_records(caplog)[0]["reason"] == "token_expired"


async def test_close_on_expiry_can_be_turned_off(start: Start, ws_upstream: WsUpstream) -> None:
    gw = await start()
    async with connect(gw, "/keep/echo", token(ttl=1)) as ws:
        await asyncio.sleep(2.5)
        await ws.send_str("still here")
        assert (await ws.receive(timeout=5)).data == "still here"


async def test_closed_with_1008_when_the_token_is_revoked(
    start: Start, ws_upstream: WsUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start()
    async with connect(gw, "/ws/echo", token(jti="tok-1")) as ws:
        await ws.send_str("before")
        assert (await ws.receive(timeout=5)).data == "before"
        revocation.add(tmp_path / "revoked.json", [{"jti": "tok-1"}])
        t0 = time.monotonic()
        msg = await ws.receive(timeout=6)
        assert msg.type == WSMsgType.CLOSE
        assert msg.data == 1008
        assert time.monotonic() - t0 < 3.5  # the file is polled each second, and so are connections
    assert await ws_upstream.wait_ended() == 1008
    await until(lambda: bool(access_records(caplog)))
    assert access_records(caplog)[0]["reason"] == "revoked"


async def test_a_slow_reader_stalls_the_upstream_not_the_gateways_memory(start: Start, ws_upstream: WsUpstream) -> None:
    gw = await start()
    async with connect(gw, "/ws/flood", token(), max_msg_size=0) as ws:
        await until(lambda: ws_upstream.flood_sent > 0)
        # The client reads nothing: the flood must stop, and the gateway hold little.
        await asyncio.sleep(1.5)
        stalled_at = ws_upstream.flood_sent
        await asyncio.sleep(1.0)
        assert ws_upstream.flood_sent == stalled_at
        [relay] = relays(gw)
        assert relay.client is not None
        assert relay.upstream is not None
        assert relay.client.transport.get_write_buffer_size() <= HIGH_WATER + READ_CHUNK
        assert not relay.upstream.transport.is_reading()  # paused: back-pressure upstream
        # Reading again resumes the flow.
        got = 0
        while got < stalled_at + 4 * 65536:
            msg = await ws.receive(timeout=5)
            assert msg.type == WSMsgType.BINARY
            got += len(msg.data)
        assert ws_upstream.flood_sent > stalled_at


async def test_idle_connections_are_closed(
    start: Start, ws_upstream: WsUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start(idle="1s")
    async with aiohttp.ClientSession() as session, session.ws_connect(url(gw, "/open/echo"), autoping=False) as ws:
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.CLOSE
        assert msg.data == 1001
    await until(lambda: bool(access_records(caplog)))
    assert access_records(caplog)[0]["reason"] == "idle"


async def test_the_open_connection_limit_is_a_503(start: Start, ws_upstream: WsUpstream) -> None:
    gw = await start(limit=2)
    async with aiohttp.ClientSession() as session:
        a = await session.ws_connect(url(gw, "/open/echo"))
        b = await session.ws_connect(url(gw, "/open/echo"))
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(url(gw, "/open/echo"))
        assert caught.value.status == 503
        await a.close()
        await until(lambda: "gateway_websockets_open 1.0" in gw.metrics.exposition().decode())
        c = await session.ws_connect(url(gw, "/open/echo"))  # room again
        await c.send_str("ok")
        assert (await c.receive(timeout=5)).data == "ok"
        await b.close()
        await c.close()


async def test_the_upstream_closing_closes_the_client(
    start: Start, ws_upstream: WsUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start()
    async with aiohttp.ClientSession() as session, session.ws_connect(url(gw, "/open/bye")) as ws:
        assert (await ws.receive(timeout=5)).data == "bye"
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.CLOSE
        assert msg.data == 4000
    await until(lambda: bool(access_records(caplog)))
    assert access_records(caplog)[0]["reason"] == "upstream_closed"


def _handshake(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: g\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _raw_ws(gw: Gateway, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    writer.write(_handshake(path))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


async def test_a_client_half_close_is_passed_on(
    start: Start, ws_upstream: WsUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start()
    reader, writer = await _raw_ws(gw, "/open/echo")
    writer.write(_masked(0x1, b"hi"))
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x81\x02hi"
    writer.write_eof()  # FIN, no Close frame
    await ws_upstream.wait_ended()  # the upstream saw its side end
    rest = await asyncio.wait_for(reader.read(), 5)  # and the client is closed after it
    writer.close()
    assert b"hi" not in rest
    await until(lambda: bool(access_records(caplog)))
    assert access_records(caplog)[0]["reason"] == "client_closed"


async def test_early_frames_after_the_handshake_are_relayed(start: Start, ws_upstream: WsUpstream) -> None:
    gw = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    writer.write(_handshake("/open/echo") + _masked(0x1, b"early"))  # one segment
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert await asyncio.wait_for(reader.readexactly(7), 5) == b"\x81\x05early"
    writer.close()


async def test_the_close_waits_for_a_frame_boundary(start: Start, ws_upstream: WsUpstream) -> None:
    """At the token's expiry the client is mid-frame: the upstream gets the rest of that
    frame, then the Close, never a Close inside the frame."""
    gw = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    writer.write(
        _handshake("/ws/echo").replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {token(ttl=2)}\r\n\r\n".encode())
    )
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    mask = os.urandom(4)
    payload = b"z" * 200
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    frame = bytes((0x81, 0x80 | 126)) + struct.pack("!H", len(payload)) + mask + masked
    writer.write(frame[:50])  # the first part, before the expiry
    [relay] = relays(gw)
    await until(lambda: relay.closing)  # the token expired
    assert relay.closing
    assert relay.upstream is not None
    assert relay.upstream.close_pending
    writer.write(frame[50:])  # the rest: the frame ends, then the upstream gets its Close
    assert await ws_upstream.wait_ended() == 1008
    assert ws_upstream.received == ["z" * 200]  # the whole frame, then the Close
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert b"\x88\x02\x03\xf0" in data  # the client's Close, 1008, unmasked


async def test_an_upstream_refusing_the_upgrade_is_relayed_and_the_connection_closed(
    start: Start, ws_upstream: WsUpstream
) -> None:
    gw = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    writer.write(_handshake("/open/deny"))
    data = await asyncio.wait_for(reader.read(), 5)  # the answer, then the close
    writer.close()
    assert data.startswith(b"HTTP/1.1 403 ")
    assert data.endswith(b"not you")
    assert b"Connection: close" in data
    assert gw._pool is not None
    assert not gw._pool.idle  # the handshake's upstream connection was not kept


async def test_a_draining_gateway_closes_websockets_with_1001(
    start: Start, ws_upstream: WsUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start()
    async with connect(gw, "/open/echo") as ws:
        await ws.send_str("x")
        assert (await ws.receive(timeout=5)).data == "x"
        t0 = time.monotonic()
        stopping = asyncio.create_task(gw.stop())
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.CLOSE
        assert msg.data == 1001
    await asyncio.wait_for(stopping, 10)
    assert time.monotonic() - t0 < 5  # not the 30 s shutdown_timeout
    assert await ws_upstream.wait_ended() == 1001
    await until(lambda: bool(access_records(caplog)))
    assert access_records(caplog)[0]["reason"] == "shutdown"


async def test_a_reload_keeps_revocation_watching_the_new_list(
    start: Start, ws_upstream: WsUpstream, tmp_path: Path
) -> None:
    """The old policy's revocation watcher stops at a reload: an open connection must
    follow the new one."""
    gw = await start()
    async with connect(gw, "/ws/echo", token(jti="tok-2")) as ws:
        await ws.send_str("before")
        assert (await ws.receive(timeout=5)).data == "before"
        assert await gw.reload()
        revocation.add(tmp_path / "revoked.json", [{"jti": "tok-2"}])
        msg = await ws.receive(timeout=6)
        assert msg.type == WSMsgType.CLOSE
        assert msg.data == 1008


async def test_an_interim_answer_then_the_101_and_a_frame_in_one_segment(make_gateway: GatewayFactory) -> None:
    """A scripted upstream writes `103`, `101` and its first frame at once: the frame is
    the relay's (never parsed as HTTP), and reaches the client."""
    seen: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x05first"
        )
        await reader.read()  # until the gateway closes

    served = Served(upstream)
    await served.start()
    try:
        up = f"http://127.0.0.1:{served.port}"
        gw = await make_gateway(f"""
        routes:
          - {{name: open, match: {{prefix: /open}}, upstream: "{up}", websocket: true, auth: public}}
        """)
        reader, writer = await _raw_ws(gw, "/open/x")
        assert await asyncio.wait_for(reader.readexactly(7), 5) == b"\x81\x05first"
        writer.close()
        assert b"Upgrade: websocket" in seen[0]
        assert b"Sec-WebSocket-Key: " in seen[0]
    finally:
        await served.close()


async def test_the_websocket_log_line_is_redacted_like_any_other(
    start: Start, ws_upstream: WsUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start()
    async with connect(gw, "/open/echo?access_token=s3cr3t-value&room=2") as ws:
        await ws.send_str("x")
        assert (await ws.receive(timeout=5)).data == "x"
    await until(lambda: bool(access_records(caplog)))
    [line] = access_records(caplog)
    assert "s3cr3t-value" not in json.dumps(line)
    assert "room=2" in line["path"]
    assert ws_upstream.seen[0][0] == "/open/echo?access_token=s3cr3t-value&room=2"  # passed on as it came


def _frame(payload: bytes) -> bytes:
    return bytes((0x82, 127)) + struct.pack("!Q", len(payload)) + payload


async def _pair(loop: asyncio.AbstractEventLoop, sndbuf: int | None = None) -> tuple[asyncio.Transport, socket.socket]:
    """A real TCP connection: the gateway's end as a transport (reading paused, as the
    listener and the upstream pool leave it at a switch), and the peer's socket."""
    listening = socket.create_server(("127.0.0.1", 0))
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.setblocking(False)
    await loop.sock_connect(peer, listening.getsockname())
    conn, _ = listening.accept()
    listening.close()
    if sndbuf is not None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, conn)
    transport.pause_reading()
    return transport, peer


async def test_early_bytes_past_high_water_leave_back_pressure_on() -> None:
    """The relay first writes the bytes that came before it took over; to a client that
    reads nothing they pass HIGH_WATER and pause the upstream. It once resumed both
    sides right after, and then read the upstream without bound (found by review)."""
    loop = asyncio.get_running_loop()
    client_t, client_peer = await _pair(loop, sndbuf=4096)  # a client that reads nothing
    up_t, up_peer = await _pair(loop)
    relay = Relay(WebSockets(), 30.0, None, lambda exc: None, client_frame_rate=2000)
    running = asyncio.create_task(relay.run(client_t, b"", False, up_t, _frame(b"e" * 200_000)))
    sent = 0
    chunk = _frame(b"f" * (1 << 20))
    try:
        while sent < 64 * 2**20:
            try:
                await asyncio.wait_for(loop.sock_sendall(up_peer, chunk), 2)
            except TimeoutError:
                break  # the upstream is stalled: back-pressure holds
            sent += len(chunk)
        assert client_t.get_write_buffer_size() <= HIGH_WATER + 256 * 1024
    finally:
        relay.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, 5)
        client_peer.close()
        up_peer.close()


@pytest.mark.parametrize("connection", [b"Connection: Upgrade\r\n", b""])
async def test_a_101_to_a_request_that_asked_for_no_upgrade_is_a_502(
    make_gateway: GatewayFactory, connection: bytes
) -> None:
    """RFC 9110 §7.8: no switch to a protocol the request did not ask for. What follows
    such a 101 is another protocol, never this request's response (found by review: it
    was taken as an interim answer, and the bytes after it relayed as the response)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" + connection + b"\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        )
        await reader.read()

    served = Served(answer)
    await served.start()
    try:
        gw = await make_gateway(
            "routes:\n"
            f"  - {{name: plain, match: {{prefix: /plain}}, upstream: 'http://127.0.0.1:{served.port}',"
            " auth: public}\n"
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
        writer.write(b"GET /plain/x HTTP/1.1\r\nHost: g\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        assert head.startswith(b"HTTP/1.1 502 ")
    finally:
        await served.close()


async def test_the_websocket_idle_timeout_cannot_be_turned_off(tmp_path: Path) -> None:
    """It is what bounds a peer that stops reading (found by review: 0s meant none)."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "server: {websocket_idle_timeout: 0s}\nroutes:\n"
        "  - {name: ws, match: {prefix: /ws}, upstream: 'http://127.0.0.1:9', auth: public, websocket: true}\n"
    )
    with pytest.raises(ConfigError, match=r"gateway.yaml:1: server.websocket_idle_timeout: 0s is out of range"):
        load_policy(str(config))


def _unmask(frame: bytes) -> bytes:
    """The payload of a whole masked frame with a short length."""
    assert frame[1] & 0x80
    mask, payload = frame[2:6], frame[6 : 6 + (frame[1] & 0x7F)]
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


PROTOCOL_ERROR_CLOSE = b"\x88\x02\x03\xea"  # Close 1002, unmasked (towards the client)


@pytest.mark.parametrize(
    "bad",
    [
        b"\x81\x05plain",  # no MASK bit (RFC 6455 §5.1)
        b"\x82\xff" + struct.pack("!Q", 1 << 63) + b"mask",  # a length no endpoint may send
    ],
    ids=["unmasked", "top-bit-length"],
)
async def test_a_client_frame_that_breaks_the_framing_ends_with_1002(
    start: Start, ws_upstream: WsUpstream, caplog: pytest.LogCaptureFixture, bad: bytes
) -> None:
    """The frame is not relayed: the upstream gets what came before it, then a Close
    1002; so does the client, and the connection ends (reason protocol_error)."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await start()
    reader, writer = await _raw_ws(gw, "/open/echo")
    try:
        writer.write(_masked(0x1, b"first"))
        assert await asyncio.wait_for(reader.readexactly(7), 5) == b"\x81\x05first"
        writer.write(_masked(0x1, b"before") + bad + _masked(0x1, b"after"))
        data = await asyncio.wait_for(reader.read(), 5)  # to the gateway's close
    finally:
        writer.close()
    assert await ws_upstream.wait_ended() == 1002
    assert ws_upstream.received == ["first", "before"]
    assert data.endswith(PROTOCOL_ERROR_CLOSE)
    assert b"after" not in data
    await until(lambda: bool(access_records(caplog)))
    assert access_records(caplog)[0]["reason"] == "protocol_error"


async def test_a_masked_upstream_frame_ends_with_1002(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 6455 §5.1: a client fails the connection on a masked server frame; the
    gateway does so for its client, which never sees that frame."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    upstream_got: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02ok"
        )
        await writer.drain()
        await asyncio.sleep(0.2)  # the client has "ok" before the bad frame comes
        writer.write(_masked(0x1, b"hidden") + b"\x81\x05after")
        upstream_got.append(await reader.read())  # until the gateway closes

    served = Served(upstream)
    await served.start()
    try:
        gw = await make_gateway(f"""
        routes:
          - {{name: open, match: {{prefix: /open}}, upstream: "http://127.0.0.1:{served.port}",
              websocket: true, auth: public}}
        """)
        reader, writer = await _raw_ws(gw, "/open/x")
        try:
            data = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        assert data == b"\x81\x02ok" + PROTOCOL_ERROR_CLOSE  # neither frame after it
        await until(lambda: bool(upstream_got))
        [got] = upstream_got
        assert got[:2] == b"\x88\x82"  # a Close, masked as a client's must be
        assert _unmask(got) == struct.pack("!H", 1002)
        await until(lambda: bool(access_records(caplog)))
        assert access_records(caplog)[0]["reason"] == "protocol_error"
    finally:
        await served.close()


async def test_a_client_flooding_frames_is_slowed_to_its_budget_and_loses_none(
    start: Start, ws_upstream: WsUpstream
) -> None:
    """server.websocket_max_client_frames_per_second: 200 (a burst of 200). 600 frames at
    once: the burst goes through, the rest at about 200 a second (not read meanwhile,
    never dropped), all in order."""
    gw = await start(frame_rate=200)
    _, writer = await _raw_ws(gw, "/open/echo")
    try:
        sent = [str(i) for i in range(600)]
        writer.write(b"".join(_masked(0x1, s.encode()) for s in sent))
        t0 = time.monotonic()
        await until(lambda: len(ws_upstream.received) >= 200)  # the burst, at once
        await asyncio.sleep(max(0.0, 0.3 - (time.monotonic() - t0)))
        assert len(ws_upstream.received) < 600  # 200, and 0.3 s at 200 a second: 260 by now
        await until(lambda: len(ws_upstream.received) == 600, 15)
        assert time.monotonic() - t0 >= 1.0  # 400 past the burst, at 200 a second: 2 s
        assert ws_upstream.received == sent
    finally:
        writer.close()


async def test_back_pressure_and_the_frame_budget_each_hold_reading() -> None:
    """Either one pausing the client is enough: the upstream draining must not resume a
    client over budget, nor a refilled budget one whose upstream is full."""
    loop = asyncio.get_running_loop()
    client_t, client_peer = await _pair(loop)
    up_t, up_peer = await _pair(loop)
    relay = Relay(WebSockets(), 30.0, None, lambda exc: None, client_frame_rate=10)
    frames = b"".join(_masked(0x1, b"%02d" % i) for i in range(30))
    running = asyncio.create_task(relay.run(client_t, frames, False, up_t, b""))
    try:
        await until(lambda: relay.client is not None and relay.client.refill is not None)
        c, u = relay.client, relay.upstream
        assert c is not None
        assert u is not None
        assert not client_t.is_reading()  # over budget (10 of 30 went)
        u.resume_writing()  # as the upstream's transport would, drained
        assert not client_t.is_reading()
        u.pause_writing()  # the upstream's buffer is full now
        await until(lambda: c.refill is None and not c.held, 10)  # the budget let all 30 go
        assert not client_t.is_reading()
        u.resume_writing()
        assert client_t.is_reading()
        got = b""
        while len(got) < len(frames):
            got += await asyncio.wait_for(loop.sock_recv(up_peer, 65536), 5)
        assert got == frames
    finally:
        relay.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, 5)
        client_peer.close()
        up_peer.close()


async def test_a_half_close_behind_frames_over_budget_is_passed_on_after_them() -> None:
    """Frames and a FIN that came before the 101: the frames over budget wait, and the
    FIN must wait for them, or they would be dropped behind it."""
    loop = asyncio.get_running_loop()
    client_t, client_peer = await _pair(loop)
    up_t, up_peer = await _pair(loop)
    relay = Relay(WebSockets(), 30.0, None, lambda exc: None, client_frame_rate=10)
    frames = b"".join(_masked(0x1, b"%02d" % i) for i in range(20))
    running = asyncio.create_task(relay.run(client_t, frames, True, up_t, b""))
    try:
        got = b""
        while True:
            chunk = await asyncio.wait_for(loop.sock_recv(up_peer, 65536), 5)
            if not chunk:
                break  # the FIN, passed on
            got += chunk
        assert got == frames
    finally:
        relay.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, 5)
        client_peer.close()
        up_peer.close()
