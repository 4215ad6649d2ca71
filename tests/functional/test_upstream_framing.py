"""The upstream hop's framing, against an upstream that writes exact bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from tests.conftest import GatewayFactory
from tests.rawhttp import get, raw_request

Responder = Callable[[bytes], bytes | None]


class RawUpstream:
    """Answers each request (head only) with scripted bytes; counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.script: list[bytes] = []
        self.close_after = False
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
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
        writer.close()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    up = RawUpstream()
    up.server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    yield up
    up.server.close()
    await up.server.wait_closed()


async def gateway_for(make_gateway: GatewayFactory, up: RawUpstream) -> int:
    gw = await make_gateway(
        f"""
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
    first = await raw_request(port, get("/a"))
    assert (first.status, first.body) == (200, b"hello world")
    second = await raw_request(port, get("/b"))
    assert (second.status, second.body) == (200, b"abc")
    third = await raw_request(port, get("/c"))
    assert (third.status, third.body) == (201, b"ok")  # the interim 103 is not relayed
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
        b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n',
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    ]
    port = await gateway_for(make_gateway, raw_upstream)
    head = await raw_request(port, get("/a", method="HEAD"))
    assert head.status == 200
    assert head.headers["Content-Length"] == "50"
    assert head.body == b""
    assert (await raw_request(port, get("/b"))).status == 304
    after = await raw_request(port, get("/c"))
    assert (after.status, after.body) == (200, b"hi")  # the connection stayed in step
    assert raw_upstream.connections == 1


async def test_a_stale_kept_alive_connection_is_retried_once(
    make_gateway: GatewayFactory, raw_upstream: RawUpstream
) -> None:
    raw_upstream.close_after = True  # answers, then closes without saying so
    raw_upstream.script = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2",
    ]
    port = await gateway_for(make_gateway, raw_upstream)
    assert (await raw_request(port, get("/a"))).body == b"1"
    await asyncio.sleep(0.05)
    resp = await raw_request(port, get("/b"))
    assert (resp.status, resp.body) == (200, b"2")
    assert raw_upstream.connections == 2


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
