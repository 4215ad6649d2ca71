"""A deliberately dumb HTTP/1.1 client over a real socket.

aiohttp's client (like curl without --path-as-is) normalises URLs before sending; the
security tests need to put exact bytes on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from multidict import CIMultiDict


@dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes


async def raw_request(port: int, request: bytes, *, host: str = "127.0.0.1", wait: float = 10.0) -> RawResponse:
    """Send `request` verbatim on a new connection, read until the server closes."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), wait)
    finally:
        writer.close()
    return parse_response(data)


def parse_response(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return RawResponse(status, headers, body)


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


def get(path: str, *headers: str, method: str = "GET", close: bool = True) -> bytes:
    """A request line plus headers, `Connection: close` (unless `close` is False) so the read ends."""
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: gateway.test",
        *headers,
        *(["Connection: close"] if close else []),
        "",
        "",
    ]
    return "\r\n".join(lines).encode("latin-1")


class KeptAlive:
    """One client connection used for several requests in turn, one response read per
    request (by its framing), as a browser or a pooled HTTP client would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> KeptAlive:
        return cls(*await asyncio.open_connection(host, port))

    async def send(self, request: bytes, *, wait: float = 10.0) -> RawResponse:
        self.writer.write(request)
        await self.writer.drain()
        return await asyncio.wait_for(self._read_one(bodiless=request.startswith(b"HEAD ")), wait)

    async def _read_one(self, bodiless: bool) -> RawResponse:
        head = await self.reader.readuntil(b"\r\n\r\n")
        response = parse_response(head)
        if bodiless or response.status in (204, 304) or response.status < 200:
            return response
        if response.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = b""
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                raw += size_line
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    raw += await self.reader.readuntil(b"\r\n")
                    break
                raw += await self.reader.readexactly(size + 2)
            response.body = _dechunk(raw)
        elif "Content-Length" in response.headers:
            response.body = await self.reader.readexactly(int(response.headers["Content-Length"]))
        else:
            response.body = await self.reader.read(-1)
        return response

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
