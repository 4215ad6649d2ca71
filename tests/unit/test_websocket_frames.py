"""The WebSocket frame scanner and handshake checks (gateway/proxy/wsframe.py)."""

from __future__ import annotations

import os
import struct

import pytest
from aiohttp.http_writer import HttpVersion10, HttpVersion11
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.proxy.wsframe import FrameError, FrameScanner, close_frame, handshake_problem, is_websocket_upgrade


def frame(opcode: int, payload: bytes, masked: bool = False, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, (0x80 if masked else 0) | n))
    elif n < 65536:
        head = bytes((first, (0x80 if masked else 0) | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, (0x80 if masked else 0) | 127)) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def boundaries(scanner: FrameScanner, stream: bytes, split: int) -> list[int]:
    """Where frames end in `stream` fed in pieces of `split` bytes (absolute offsets)."""
    ends = []
    for start in range(0, len(stream), split):
        piece = stream[start : start + split]
        pos = 0
        while pos < len(piece):
            pos = scanner.advance(piece, pos)
            if scanner.at_boundary:
                ends.append(start + pos)
    return ends


STREAM = [
    frame(0x1, b"hi"),
    frame(0x2, b"x" * 300, masked=True),
    frame(0x0, b"", fin=True),
    frame(0x9, b"ping", masked=True),
    frame(0x2, b"y" * 70000),
    frame(0x8, struct.pack("!H", 1000), masked=True),
]


@pytest.mark.parametrize("split", [1, 2, 3, 7, 14, 100, 65536, 10**6])
def test_boundaries_are_the_same_however_the_stream_is_split(split: int) -> None:
    stream = b"".join(STREAM)
    expected, at = [], 0
    for f in STREAM:
        at += len(f)
        expected.append(at)
    scanner = FrameScanner()
    assert boundaries(scanner, stream, split) == expected
    assert scanner.closes == 1


def test_mid_frame_is_not_a_boundary() -> None:
    scanner = FrameScanner()
    f = frame(0x2, b"z" * 200, masked=True)
    assert scanner.advance(f[:1]) == 1
    assert not scanner.at_boundary  # half a header
    assert scanner.advance(f[1:50]) == 49
    assert not scanner.at_boundary  # inside the payload
    assert scanner.advance(f[50:] + frame(0x1, b"next")) == len(f) - 50  # stops at the frame's end
    assert scanner.at_boundary


def test_a_length_with_the_top_bit_set_is_refused() -> None:
    with pytest.raises(FrameError):
        FrameScanner().advance(bytes((0x82, 127)) + struct.pack("!Q", 1 << 63))


def test_close_frames_are_masked_only_towards_the_upstream() -> None:
    assert close_frame(1008, masked=False) == b"\x88\x02\x03\xf0"
    masked = close_frame(1008, masked=True)
    assert masked[:2] == b"\x88\x82"
    mask = masked[2:6]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(masked[6:])) == b"\x03\xf0"


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


GOOD = (
    ("Connection", "keep-alive, Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
)


def test_handshake_checks() -> None:
    assert handshake_problem("GET", HttpVersion11, headers(*GOOD), False) is None
    assert handshake_problem("POST", HttpVersion11, headers(*GOOD), False) is not None
    assert handshake_problem("GET", HttpVersion10, headers(*GOOD), False) is not None
    assert handshake_problem("GET", HttpVersion11, headers(*GOOD), True) is not None
    assert handshake_problem("GET", HttpVersion11, headers(*GOOD[1:]), False) is not None  # no Connection
    assert handshake_problem("GET", HttpVersion11, headers(*GOOD[:3]), False) is not None  # no version
    two_keys = (*GOOD, ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="))
    assert handshake_problem("GET", HttpVersion11, headers(*two_keys), False) is not None


def test_only_websocket_is_a_websocket_upgrade() -> None:
    assert is_websocket_upgrade(headers(("Upgrade", "WebSocket")))
    assert not is_websocket_upgrade(headers(("Upgrade", "h2c")))
    assert not is_websocket_upgrade(headers(("Upgrade", "websocket, h2c")))
    assert not is_websocket_upgrade(headers())
