"""The WebSocket frame scanner and handshake checks (gateway/proxy/wsframe.py)."""

from __future__ import annotations

import os
import struct

import pytest
from aiohttp.http_writer import HttpVersion10, HttpVersion11
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.proxy.wsframe import UNLIMITED, FrameScanner, close_frame, handshake_problem, is_websocket_upgrade


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
    """Where frames end in `stream` read in pieces of `split` bytes (absolute offsets),
    one frame at a time; an unfinished header is given again with the next piece, as
    the relay does."""
    ends = []
    rest = b""
    for start in range(0, len(stream), split):
        data = rest + stream[start : start + split]
        base = start - len(rest)
        pos = 0
        while pos < len(data):
            # A frame in progress first (no new frame), else one new frame.
            after = scanner.scan(data, pos, 1 if scanner.at_boundary else 0)
            if after == pos:
                break  # a header not yet whole
            pos = after
            if scanner.at_boundary:
                ends.append(base + pos)
        rest = data[pos:]
    assert rest == b""
    return ends


def stream_of(masked: bool) -> list[bytes]:
    """Frames of every length encoding, a fragment, a control frame, then a Close."""
    return [
        frame(0x1, b"hi", masked),
        frame(0x2, b"x" * 300, masked),
        frame(0x1, b"frag", masked, fin=False),
        frame(0x9, b"ping", masked),
        frame(0x0, b"ment", masked),
        frame(0x2, b"y" * 70000, masked),
        frame(0x2, b"", masked),
        frame(0x8, struct.pack("!H", 1000), masked),
    ]


@pytest.mark.parametrize("masked", [True, False], ids=["from-client", "from-upstream"])
@pytest.mark.parametrize("split", [1, 2, 3, 7, 14, 100, 65536, 10**6])
def test_boundaries_are_the_same_however_the_stream_is_split(split: int, masked: bool) -> None:
    frames = stream_of(masked)
    expected, at = [], 0
    for f in frames:
        at += len(f)
        expected.append(at)
    scanner = FrameScanner(masked=masked)
    assert boundaries(scanner, b"".join(frames), split) == expected
    assert scanner.closes == 1
    assert scanner.frames == len(frames)
    assert scanner.violation is None


def test_all_frames_in_one_call_and_a_header_left_to_the_caller() -> None:
    scanner = FrameScanner(masked=True)
    frames = stream_of(True)
    stream = b"".join(frames)
    assert scanner.scan(stream + frames[0][:5], 0, UNLIMITED) == len(stream)  # 5 of 6 header bytes
    assert scanner.frames == len(frames)
    assert scanner.closes == 1
    assert scanner.at_boundary


def test_a_close_split_across_reads_is_counted_once_whole() -> None:
    scanner = FrameScanner(masked=False)
    close = frame(0x8, struct.pack("!H", 1000) + b"bye", masked=False)
    assert scanner.scan(close[:3], 0, UNLIMITED) == 3
    assert scanner.closes == 0  # its payload is still to come
    assert scanner.scan(close[3:], 0, UNLIMITED) == len(close) - 3
    assert scanner.closes == 1


def test_mid_frame_is_not_a_boundary() -> None:
    scanner = FrameScanner(masked=True)
    f = frame(0x2, b"z" * 200, masked=True)
    assert scanner.scan(f[:1], 0, UNLIMITED) == 0  # half a header: the caller keeps it
    assert scanner.at_boundary
    assert scanner.scan(f[:50], 0, UNLIMITED) == 50
    assert not scanner.at_boundary  # inside the payload
    rest = f[50:] + frame(0x1, b"next", masked=True)
    assert scanner.scan(rest, 0, 0) == len(f) - 50  # the frame in progress, then no new one
    assert scanner.at_boundary
    assert scanner.frames == 1


def test_the_budget_counts_frames_not_bytes() -> None:
    scanner = FrameScanner(masked=True)
    small = frame(0x2, b"", masked=True)
    big = frame(0x2, b"b" * 100_000, masked=True)
    stream = small * 5 + big + small * 5
    assert scanner.scan(stream, 0, 3) == 3 * len(small)
    assert scanner.scan(stream, 3 * len(small), 0) == 3 * len(small)  # no budget: no new frame
    assert scanner.scan(stream, 3 * len(small), 3) == 5 * len(small) + len(big)  # a big one is one
    assert scanner.scan(stream, 5 * len(small) + len(big), UNLIMITED) == len(stream)
    assert scanner.frames == 11


@pytest.mark.parametrize(
    ("masked", "bad", "violation"),
    [
        (True, frame(0x1, b"plain", masked=False), "a frame without the MASK bit"),
        (True, frame(0x2, b"p" * 200, masked=False), "a frame without the MASK bit"),
        (False, frame(0x1, b"hidden", masked=True), "a masked frame"),
        (False, frame(0x2, b"h" * 70000, masked=True), "a masked frame"),
        (False, bytes((0x82, 127)) + struct.pack("!Q", 1 << 63), "a frame length with the top bit set"),
        (True, bytes((0x82, 0xFF)) + struct.pack("!Q", 1 << 63) + b"mask", "a frame length with the top bit set"),
    ],
)
def test_a_frame_that_breaks_the_framing_stops_the_scan_at_its_start(masked: bool, bad: bytes, violation: str) -> None:
    """RFC 6455 §5.1: client frames are masked, server frames are not."""
    scanner = FrameScanner(masked=masked)
    good = frame(0x1, b"ok", masked)
    stream = good + bad + good
    assert scanner.scan(stream, 0, UNLIMITED) == len(good)  # what came before is whole
    assert scanner.violation == violation
    assert scanner.frames == 1
    assert scanner.scan(stream, len(good), UNLIMITED) == len(good)  # and nothing past it, ever
    assert scanner.frames == 1


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
