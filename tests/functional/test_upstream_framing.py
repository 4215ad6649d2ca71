"""The upstream hop's framing, against an upstream that writes exact bytes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from gateway.proxy import upstream as upstream_module
from tests.conftest import GatewayFactory, Upstream
from tests.rawhttp import KeptAlive, get, raw_request
from tests.tcpserver import Served as _Served

Responder = Callable[[bytes], bytes | None]


class RawUpstream:
    """Answers each request (head only) with scripted bytes; counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.open = 0  # connections the gateway has not closed (nor we, after `close_after`)
        self.requests: list[bytes] = []
        self.script: list[bytes] = []
        self.close_after = False
        self.served = _Served(self.handle)

    @property
    def port(self) -> int:
        return self.served.port

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                if b"content-length:" in head.lower():
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                writer.write(self.script.pop(0))
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass
        self.open -= 1
        writer.close()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    up = RawUpstream()
    # The gateway (torn down after us) keeps pooled connections to this upstream open.
    async with up.served:
        yield up


async def gateway_for(make_gateway: GatewayFactory, up: RawUpstream, server: str = "") -> int:
    gw = await make_gateway(
        f"""
        {server}
        routes:
          - name: r
            match: {{prefix: /}}
            upstream: "http://127.0.0.1:{up.port}"
            timeouts: {{read: 1s}}
            auth: public
        """
    )
    return gw.public_port


async def test_chunked_and_length_delimited_responses_and_keep_alive(
    make_gateway: GatewayFactory, raw_upstream: RawUpstream
) -> None:
    raw_upstream.script = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    ]
    port = await gateway_for(make_gateway, raw_upstream)
    client = await KeptAlive.open(port)
    first = await client.send(get("/a", close=False))
    assert (first.status, first.body) == (200, b"hello world")
    second = await client.send(get("/b", close=False))
    assert (second.status, second.body) == (200, b"abc")
    third = await client.send(get("/c", close=False))
    assert (third.status, third.body) == (201, b"ok")  # the interim 103 is not relayed
    await client.close()
    assert raw_upstream.connections == 1  # one kept-alive upstream connection served all three
    assert raw_upstream.requests[0].startswith(b"GET /a HTTP/1.1\r\nHost: 127.0.0.1:")


async def test_body_delimited_by_close(make_gateway: GatewayFactory, raw_upstream: RawUpstream) -> None:
    raw_upstream.close_after = True
    raw_upstream.script = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ]
    port = await gateway_for(make_gateway, raw_upstream)
    resp = await raw_request(port, get("/a"))
    assert (resp.status, resp.body) == (200, b"until the end")
    resp = await raw_request(port, get("/b"))
    assert resp.status == 204
    assert raw_upstream.connections == 2  # `Connection: close` was honoured


async def test_head_and_empty_statuses_carry_no_body(make_gateway: GatewayFactory, raw_upstream: RawUpstream) -> None:
    raw_upstream.script = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n',
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    ]
    port = await gateway_for(make_gateway, raw_upstream)
    client = await KeptAlive.open(port)
    for length in ("50", "7"):  # two HEADs in a row on one client connection, then a 304 and a GET
        head = await client.send(get("/a", method="HEAD", close=False))
        assert head.status == 200
        assert head.headers["Content-Length"] == length
        assert head.body == b""
    assert (await client.send(get("/b", close=False))).status == 304
    after = await client.send(get("/c", close=False))
    assert (after.status, after.body) == (200, b"hi")  # the connection stayed in step
    await client.close()
    # A HEAD answer that declares a body is never followed on its connection (a legacy
    # server may write that body anyway); the 304 declared none, so the GET reused it.
    assert raw_upstream.connections == 3


async def test_a_stale_kept_alive_connection_is_retried_once(
    make_gateway: GatewayFactory, raw_upstream: RawUpstream
) -> None:
    raw_upstream.close_after = True  # answers, then closes without saying so
    raw_upstream.script = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2",
    ]
    port = await gateway_for(make_gateway, raw_upstream)
    client = await KeptAlive.open(port)
    assert (await client.send(get("/a", close=False))).body == b"1"
    await asyncio.sleep(0.05)
    resp = await client.send(get("/b", close=False))
    await client.close()
    assert (resp.status, resp.body) == (200, b"2")
    assert raw_upstream.connections == 2
    assert len(raw_upstream.requests) == 2  # sent once on the stale connection (unanswered), once on a new one


async def test_malformed_and_truncated_responses(make_gateway: GatewayFactory, raw_upstream: RawUpstream) -> None:
    raw_upstream.close_after = True
    raw_upstream.script = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    ]
    port = await gateway_for(make_gateway, raw_upstream)
    assert (await raw_request(port, get("/a"))).status == 502
    assert (await raw_request(port, get("/b"))).status == 502
    assert (await raw_request(port, get("/c"))).status == 502  # declared 10, got 5: never passed off as whole


async def test_request_framing_reaches_the_upstream_intact(
    make_gateway: GatewayFactory, raw_upstream: RawUpstream
) -> None:
    raw_upstream.script = [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]
    port = await gateway_for(make_gateway, raw_upstream)
    request = b"POST /up?x=1 HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    assert (await raw_request(port, request)).status == 200
    head = raw_upstream.requests[0].decode()
    assert head.startswith("POST /up?x=1 HTTP/1.1\r\n")
    assert "Content-Length: 5\r\n" in head
    assert "Transfer-Encoding" not in head


async def test_an_empty_post_keeps_its_zero_length(make_gateway: GatewayFactory, raw_upstream: RawUpstream) -> None:
    raw_upstream.script = [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]
    port = await gateway_for(make_gateway, raw_upstream)
    request = b"POST /empty HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    assert (await raw_request(port, request)).status == 200
    assert "Content-Length: 0\r\n" in raw_upstream.requests[0].decode()


async def _gateway(make_gateway: GatewayFactory, server: asyncio.Server, read: str = "1s") -> int:
    port = server.sockets[0].getsockname()[1]
    gw = await make_gateway(
        f"""
        server: {{shutdown_timeout: 500ms}}
        routes:
          - name: r
            match: {{prefix: /}}
            upstream: "http://127.0.0.1:{port}"
            timeouts: {{read: {read}}}
            auth: public
        """
    )
    return gw.public_port


async def test_an_upstream_that_never_reads_the_upload_times_out(make_gateway: GatewayFactory) -> None:
    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)  # accepts, never reads, never answers
        writer.close()

    async with _Served(deaf) as server:
        port = await _gateway(make_gateway, server)
        size = 32 * 1024 * 1024
        head = f"POST /up HTTP/1.1\r\nHost: g\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n".encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)

        async def upload() -> None:
            block = b"u" * 65536
            with contextlib.suppress(ConnectionError):
                for _ in range(size // len(block)):
                    writer.write(block)
                    await writer.drain()

        uploading = asyncio.ensure_future(upload())
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n"), 6)
        assert answer.startswith(b"HTTP/1.1 504")
        uploading.cancel()
        await asyncio.gather(uploading, return_exceptions=True)
        writer.close()
        await writer.wait_closed()


async def test_a_slow_client_is_not_a_slow_upstream(make_gateway: GatewayFactory) -> None:
    size = 16 * 1024 * 1024

    async def steady(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
        block = b"d" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(size // len(block)):
                writer.write(block)
                await writer.drain()
        writer.close()

    async with _Served(steady) as server:
        port = await _gateway(make_gateway, server, read="500ms")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /big HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        received = 0
        paused = False
        while received < size:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            received += len(chunk)
            if not paused and received > 2 * 1024 * 1024:
                paused = True
                await asyncio.sleep(1.5)  # three read timeouts without reading
        writer.close()
        await writer.wait_closed()
        assert received == size


async def test_a_bodiless_post_is_never_replayed(make_gateway: GatewayFactory, raw_upstream: RawUpstream) -> None:
    raw_upstream.close_after = True
    raw_upstream.script = [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1"]  # then: reads, closes, no answer
    port = await gateway_for(make_gateway, raw_upstream)
    client = await KeptAlive.open(port)
    assert (await client.send(get("/warm", close=False))).status == 200
    await asyncio.sleep(0.05)
    request = b"POST /charge HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\n\r\n"
    assert (await client.send(request)).status == 502
    await client.close()
    assert sum(r.startswith(b"POST /charge") for r in raw_upstream.requests) <= 1


async def test_endless_interim_responses_are_cut_off(make_gateway: GatewayFactory) -> None:
    async def processing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            for _ in range(50):
                writer.write(b"HTTP/1.1 102 Processing\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
        writer.close()

    async with _Served(processing) as server:
        port = await _gateway(make_gateway, server)
        resp = await raw_request(port, get("/slow"), wait=5)
        assert resp.status == 502


async def test_a_chunked_response_of_many_small_chunks_does_not_stall_the_next_one(
    make_gateway: GatewayFactory, raw_upstream: RawUpstream
) -> None:
    # 4 097 one-byte chunks: the last one crosses aiohttp's chunk-boundary high-water
    # mark (64 KiB // 16) and pauses the parser after its last body callback.
    many = b"".join(b"1\r\nx\r\n" for _ in range(4097)) + b"0\r\n\r\n"
    raw_upstream.script = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + many,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    ]
    port = await gateway_for(make_gateway, raw_upstream)
    client = await KeptAlive.open(port)
    first = await client.send(get("/a", close=False))
    assert (first.status, first.body) == (200, b"x" * 4097)
    second = await client.send(get("/b", close=False))
    assert (second.status, second.body) == (200, b"hello")
    await client.close()
    assert raw_upstream.connections == 1


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"HTTP/1.1 302 Found\r\nLocation: https://evil.example/\r\nX-Junk: ", id="head-cut-short"),
        pytest.param(b"HTTP/1.1 302 Found\r\nLocation: https://evil.example/", id="line-cut-short"),
        pytest.param(b"HTTP/1.1 302 Found\r\nLocation: https://evil.example/\r\nContent-Length: 0\r\n\r\n", id="whole"),
        pytest.param(b"H", id="one-byte"),
    ],
)
async def test_an_upstream_out_of_step_never_answers_the_next_request(
    make_gateway: GatewayFactory, raw_upstream: RawUpstream, tail: bytes
) -> None:
    # A backend whose Content-Length undercounts its body (say, characters for bytes):
    # what follows "hi" in the same read is a further "response", or the start of one
    # whose rest would land once the next request went out on this connection. Those
    # bytes must never answer the next request, even the same client's: the
    # connection is closed, not reused.
    raw_upstream.script = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi" + tail,
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmine",
    ]
    port = await gateway_for(make_gateway, raw_upstream)
    client = await KeptAlive.open(port)
    first = await client.send(get("/first", close=False))
    assert (first.status, first.body) == (200, b"hi")
    await asyncio.sleep(0.05)
    second = await client.send(get("/second", close=False))
    await client.close()
    assert "Location" not in second.headers
    assert (second.status, second.body) == (200, b"mine")
    assert raw_upstream.connections == 2


async def _late_surplus(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream out of step with its clients, late: for /attacker it answers a HEAD
    with a declared length and writes that body anyway, or a GET with a Content-Length
    that undercounts; either way the surplus (a whole response) comes 150 ms later."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        if b" /attacker " in head.split(b"\r\n", 1)[0]:
            if head.startswith(b"HEAD "):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
            await writer.drain()
            await asyncio.sleep(0.15)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nplanted")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmine")
        await writer.drain()


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_a_late_surplus_from_the_upstream_never_answers_another_client(
    make_gateway: GatewayFactory, method: str
) -> None:
    async with _Served(_late_surplus) as server:
        port = await _gateway(make_gateway, server)
        attacker = await KeptAlive.open(port)
        await attacker.send(get("/attacker", method=method, close=False))
        for _ in range(3):  # while the surplus is on its way, and after it came
            victim = await KeptAlive.open(port)
            answer = await victim.send(get("/victim", close=False))
            await victim.close()
            assert (answer.status, answer.body) == (200, b"mine")
            await asyncio.sleep(0.1)
        await attacker.close()


async def test_after_a_head_that_declares_a_body_the_connection_is_not_reused(make_gateway: GatewayFactory) -> None:
    # Even for the same client: the body a legacy server writes after its HEAD answer
    # must not become that client's next response.
    async with _Served(_late_surplus) as server:
        port = await _gateway(make_gateway, server)
        client = await KeptAlive.open(port)
        head = await client.send(get("/attacker", method="HEAD", close=False))
        assert (head.status, head.headers["Content-Length"]) == (200, "40")
        answer = await client.send(get("/next", close=False))
        await client.close()
        assert (answer.status, answer.body) == (200, b"mine")


async def test_a_route_read_timeout_holds_on_a_reused_upstream_connection(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(2)
        return web.Response(text="late")

    upstream.routes["/slow"] = slow
    gw = await make_gateway(
        f"""
        routes:
          - name: slow
            match: {{prefix: /slow}}
            upstream: "{upstream.url}"
            timeouts: {{read: 300ms}}
            auth: public
          - {{name: other, match: {{prefix: /}}, upstream: "{upstream.url}", auth: public}}
        """
    )
    client = await KeptAlive.open(gw.public_port)
    # The other route (default read timeout, 30 s) first, so the slow one reuses its
    # kept-alive upstream connection: the connection must not carry that timer over.
    assert (await client.send(get("/warm", close=False))).status == 200
    answer = await client.send(get("/slow", close=False))
    await client.close()
    assert answer.status == 504


async def until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_idle_upstream_connections_are_closed_after_the_idle_timeout(
    make_gateway: GatewayFactory, raw_upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream_module, "_IDLE_TIMEOUT", 0.3)
    monkeypatch.setattr(upstream_module, "_SWEEP_EVERY", 0.1)
    raw_upstream.script = [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1"] * 3
    port = await gateway_for(make_gateway, raw_upstream)
    client = await KeptAlive.open(port)
    assert (await client.send(get("/a", close=False))).status == 200
    assert (await client.send(get("/b", close=False))).status == 200
    assert (raw_upstream.connections, raw_upstream.open) == (1, 1)  # kept alive between requests
    # The client stays connected but idle: the gateway closes the upstream side.
    await until(lambda: raw_upstream.open == 0, seconds=2)
    assert (await client.send(get("/c", close=False))).status == 200
    await client.close()
    assert raw_upstream.connections == 2


async def test_idle_upstream_connections_per_origin_are_capped(
    make_gateway: GatewayFactory, raw_upstream: RawUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream_module, "_MAX_IDLE_PER_ORIGIN", 2)
    raw_upstream.script = [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1"] * 5
    port = await gateway_for(make_gateway, raw_upstream)
    clients = [await KeptAlive.open(port) for _ in range(5)]
    for client in clients:  # five idle keep-alive clients, one request each
        assert (await client.send(get("/a", close=False))).status == 200
    await until(lambda: raw_upstream.open == 2)
    for client in clients:
        await client.close()
    await until(lambda: raw_upstream.open == 0)


async def test_without_upstream_keepalive_every_request_gets_its_own_connection(
    make_gateway: GatewayFactory, raw_upstream: RawUpstream
) -> None:
    raw_upstream.script = [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1"] * 3
    port = await gateway_for(make_gateway, raw_upstream, "server: {upstream_keepalive: false}")
    client = await KeptAlive.open(port)
    for path in ("/a", "/b", "/c"):
        assert (await client.send(get(path, close=False))).status == 200
    await until(lambda: raw_upstream.open == 0)
    await client.close()
    assert raw_upstream.connections == 3
