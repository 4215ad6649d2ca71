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
# A frame budget that is never spent (`FrameScanner.scan`): the upstream's direction.
UNLIMITED = 1 << 62
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


class FrameScanner:
    """Follows frame boundaries in one direction of a WebSocket stream, in linear time:
    payloads are skipped by count, and a frame header is read only once it is whole in
    the bytes given (the caller keeps an unfinished one and gives it again with what
    follows). It checks what the gateway must (RFC 6455 §5.1, §5.2): each frame's MASK
    bit, and a 64-bit length without its top bit; the first frame that fails is
    `violation`, and nothing is scanned past it. Opcodes and RSV bits are left to the
    endpoints: an extension they negotiate through the gateway (`Sec-WebSocket-
    Extensions` passes untouched) may give them meanings (§5.2, §5.8)."""

    __slots__ = ("_in_close", "_key", "_mask", "_remaining", "closes", "frames", "violation")

    def __init__(self, masked: bool) -> None:
        self._mask = 0x80 if masked else 0  # the MASK bit every frame must have
        self._key = 4 if masked else 0  # its masking key's bytes in each header
        self._remaining = 0  # payload bytes of the current frame still to come
        self._in_close = False  # the current frame is a Close
        self.closes = 0  # Close frames seen whole (header and payload)
        self.frames = 0  # frame headers seen
        self.violation: str | None = None

    @property
    def at_boundary(self) -> bool:
        """No frame is part-way through (an unfinished header is the caller's)."""
        return not self._remaining

    def scan(self, data: bytes, pos: int, budget: int) -> int:
        """Skip from `pos` the rest of the frame in progress, then whole frames, at most
        `budget` new ones. Return where it stopped: len(data) (mid-payload or not), or
        the start of a frame not taken: over budget, its header unfinished, or the
        `violation`."""
        end = len(data)
        remaining = self._remaining
        if remaining:
            if remaining > end - pos:
                self._remaining = remaining - (end - pos)
                return end
            pos += remaining
            self._remaining = 0
            if self._in_close:
                self._in_close = False
                self.closes += 1
        if self.violation is not None:
            return pos
        # One pass per frame with only locals and int operations on the common path (a
        # short header): a flood of empty frames is this loop's worst case
        # (bench/wsframes.py). The second byte XOR the MASK bit it must have is the
        # 7-bit length when all is well, so one comparison (> 125) sends both a wrong
        # MASK bit and an extended length to the slow path.
        mask = self._mask
        head = 2 + self._key
        last = end - 1
        left = budget
        while left and pos < last:
            length = data[pos + 1] ^ mask
            payload = pos + head
            if length > 125:
                if length & 0x80:
                    self.violation = "a frame without the MASK bit" if mask else "a masked frame"
                    break
                size = 2 if length == 126 else 8
                payload += size
                if payload > end:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 2 + size], "big")
                if length >> 63:
                    self.violation = "a frame length with the top bit set"
                    break
            elif payload > end:
                break
            left -= 1
            after = payload + length
            if after > end:
                self._remaining = after - end
                self._in_close = data[pos] & 0x0F == _CLOSE
                pos = end
                break
            if data[pos] & 0x0F == 8:  # _CLOSE, as a literal: no global lookup per frame
                self.closes += 1
            pos = after
        self.frames += budget - left
        return pos


def close_frame(code: int, masked: bool) -> bytes:
    """A Close frame with `code` and no reason text; `masked` for client-to-server."""
    payload = struct.pack("!H", code)
    if not masked:
        return bytes((0x80 | _CLOSE, len(payload))) + payload
    mask = os.urandom(4)
    return bytes((0x80 | _CLOSE, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
