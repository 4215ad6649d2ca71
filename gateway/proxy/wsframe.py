"""The WebSocket wire, as far as the gateway reads it: the handshake's headers, and frame
headers (RFC 6455 §4 and §5.2). Pure functions and a scanner, no I/O: the relay
(websocket.py) uses them, and payloads are never read.
"""

from __future__ import annotations

import os
import re
import struct

from aiohttp.http_writer import HttpVersion, HttpVersion11
from multidict import CIMultiDictProxy

from gateway.proxy.headers import connection_tokens

_CLOSE = 0x8
# The base64 of 16 bytes (RFC 6455 §4.1, item 7).
_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")


def is_websocket_upgrade(headers: CIMultiDictProxy[str]) -> bool:
    """The request asks for a WebSocket (`Upgrade: websocket`); any other upgrade (h2c)
    is not one, and is handled as before (the Upgrade dropped, then a close)."""
    value = headers.get("Upgrade")
    return value is not None and value.strip(" \t").lower() == "websocket"


def handshake_problem(method: str, version: HttpVersion, headers: CIMultiDictProxy[str], has_body: bool) -> str | None:
    """Why a WebSocket handshake is not one RFC 6455 §4.1 allows (the operator's detail
    for a 400), or None."""
    if method != "GET" or version != HttpVersion11:
        return "websocket handshake: not GET over HTTP/1.1"
    if has_body:
        return "websocket handshake with a body"
    if "upgrade" not in connection_tokens(headers):
        return "websocket handshake: no 'upgrade' in Connection"
    if len(headers.getall("Upgrade", ())) != 1:
        return "websocket handshake: more than one Upgrade"
    keys = headers.getall("Sec-WebSocket-Key", ())
    if len(keys) != 1 or not _KEY.fullmatch(keys[0]):
        return "websocket handshake: Sec-WebSocket-Key missing or malformed"
    if headers.getall("Sec-WebSocket-Version", ()) != ["13"]:
        return "websocket handshake: Sec-WebSocket-Version is not 13"
    return None


def switched(headers: CIMultiDictProxy[str]) -> bool:
    """The upstream's 101 switches to WebSocket, as RFC 6455 §4.2.2 has it say."""
    upgrade = headers.get("Upgrade", "")
    return (
        upgrade.strip(" \t").lower() == "websocket"
        and "upgrade" in connection_tokens(headers)
        and "Sec-WebSocket-Accept" in headers
    )


class FrameError(ValueError):
    """A frame header no endpoint may send (a 64-bit length with its top bit set)."""


class FrameScanner:
    """Follows frame boundaries in one direction of a WebSocket stream, in linear time:
    each header byte is read once, payloads are skipped by count, nothing is kept but
    an unfinished header (at most 14 bytes)."""

    __slots__ = ("_head", "_in_close", "_remaining", "closes")

    def __init__(self) -> None:
        self._head = bytearray()
        self._remaining = 0  # payload bytes of the current frame still to come
        self._in_close = False  # the current frame is a Close
        self.closes = 0  # Close frames seen whole (header and payload)

    @property
    def at_boundary(self) -> bool:
        return not self._head and not self._remaining

    def advance(self, data: bytes, pos: int = 0) -> int:
        """Scan `data` from `pos` to the end of the frame in progress (or of the next
        one, at a boundary); return where it ends, or len(data) if it goes on."""
        end = len(data)
        if self._remaining:
            take = min(self._remaining, end - pos)
            self._remaining -= take
            if self._in_close and not self._remaining:
                self._in_close = False
                self.closes += 1
            return pos + take
        head = self._head
        if not head and end - pos >= 2:
            # The common case, a whole header in this read: read in place.
            size = _header_size(data[pos + 1])
            if end - pos >= size:
                return self._frame(data, pos, pos + size, end)
        while pos < end:
            head.append(data[pos])
            pos += 1
            if len(head) < 2 or len(head) < _header_size(head[1]):
                continue
            whole = bytes(head)
            head.clear()
            self._frame(whole, 0, len(whole), len(whole))  # the header only
            return self.advance(data, pos) if self._remaining else pos
        return pos

    def _frame(self, data: bytes, start: int, payload: int, end: int) -> int:
        """A whole header at data[start:payload]: take the payload's bytes up to `end`;
        return where the frame ends, or `end`."""
        short = data[start + 1] & 0x7F
        length: int
        if short == 126:
            (length,) = struct.unpack_from("!H", data, start + 2)
        elif short == 127:
            (length,) = struct.unpack_from("!Q", data, start + 2)
            if length >> 63:
                raise FrameError("frame length with the top bit set")
        else:
            length = short
        is_close = data[start] & 0x0F == _CLOSE
        take = min(length, max(0, end - payload))
        self._remaining = length - take
        if is_close and not self._remaining:
            self.closes += 1
        else:
            self._in_close = is_close
        return payload + take


def _header_size(second: int) -> int:
    """A frame header's size from its second byte (RFC 6455 §5.2)."""
    short = second & 0x7F
    return 2 + (2 if short == 126 else 8 if short == 127 else 0) + (4 if second & 0x80 else 0)


def close_frame(code: int, masked: bool) -> bytes:
    """A Close frame with `code` and no reason text; `masked` for client-to-server."""
    payload = struct.pack("!H", code)
    if not masked:
        return bytes((0x80 | _CLOSE, len(payload))) + payload
    mask = os.urandom(4)
    return bytes((0x80 | _CLOSE, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
