"""The ceiling experiment: the leanest proxy Python can be on aiohttp's C parsers.

Not a gateway, and never to be deployed: no routing, no auth, no header rules, no
timeouts, no logging, no metrics, no request bodies. One client connection maps to one
upstream connection; requests are parsed with aiohttp's C `HttpRequestParser`, the
response with its `HttpResponseParser`, and everything runs in protocol callbacks
(no tasks, no futures). Writes are coalesced per batch of the event loop, as the
gateway's are (gateway/proxy/coalesce.py), always. `bench/run.py` measures it next to
the gateway, so the table shows how much of the gap to nginx is Python plus the two
HTTP codecs, before the gateway does any of its own work.

    python bench/ceiling.py LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, cast

import uvloop
from aiohttp.http_parser import HttpRequestParser, HttpResponseParser

_pending: list[tuple[asyncio.Transport, bytes]] = []


def _flush() -> None:
    batch = _pending[:]
    _pending.clear()
    for transport, data in batch:
        if not transport.is_closing():
            transport.write(data)


def write_soon(transport: asyncio.Transport, data: bytes) -> None:
    if not _pending:
        asyncio.get_running_loop().call_soon(_flush)
    _pending.append((transport, data))


class _Parsed(asyncio.Protocol):
    """What aiohttp's parsers expect of their protocol (flow control is not used here)."""

    _reading_paused = False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


class Upstream(_Parsed):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.parser: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        messages, _, _ = self.parser.feed_data(data)
        for message, payload in messages:
            body = payload.read_nowait() if payload.is_eof() else b""
            head = "".join(f"{k}: {v}\r\n" for k, v in message.headers.items())
            self.client.reply(f"HTTP/1.1 {message.code} {message.reason}\r\n{head}\r\n".encode() + body)


class Client(_Parsed):
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.pending: list[bytes] = []
        self.parser = HttpRequestParser(self, asyncio.get_running_loop(), 2**16)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(lambda: Upstream(self), "127.0.0.1", self.upstream_port)
        self.upstream = upstream
        for data in self.pending:
            self.data_received(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is None or self.upstream.transport is None:
            self.pending.append(data)
            return
        messages, _, _ = self.parser.feed_data(data)
        for message, _ in messages:
            head = "".join(f"{k}: {v}\r\n" for k, v in message.headers.items() if k.lower() != "connection")
            self.upstream.parser = HttpResponseParser(self.upstream, asyncio.get_running_loop(), 2**16)
            write_soon(self.upstream.transport, f"{message.method} {message.path} HTTP/1.1\r\n{head}\r\n".encode())

    def reply(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            write_soon(self.transport, data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def main(port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(upstream_port), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
