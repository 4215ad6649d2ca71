"""Properties of the WebSocket frame scanner (gateway/proxy/wsframe.py) under generated streams."""

from __future__ import annotations

import itertools
import struct

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.proxy.wsframe import FrameScanner

_CLOSE = 0x8


def _frame(opcode: int, fin: bool, mask: bytes | None, payload: bytes, width: int) -> bytes:
    """One frame as RFC 6455 §5.2 lays it out; `width` picks the length's encoding (the
    scanner must follow any of them, minimal or not)."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    masked = 0x80 if mask is not None else 0
    if width == 0 and n <= 125:
        head = bytes((first, masked | n))
    elif width <= 2 and n <= 0xFFFF:
        head = bytes((first, masked | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, masked | 127)) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


_FRAMES = st.lists(
    st.tuples(
        st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3]),
        st.booleans(),
        st.binary(min_size=4, max_size=4),
        st.binary(max_size=300),
        st.sampled_from([0, 2, 8]),
    ),
    max_size=8,
)


def _scan(stream: bytes, cuts: list[int], masked: bool) -> tuple[list[int], FrameScanner]:
    """Feed `stream` cut at `cuts`, as reads arrive, keeping an unfinished header for the
    next read as the relay does; the stream offsets where the scanner stands at a frame
    boundary. One frame at a time (budget 1), so that every boundary is seen."""
    scanner = FrameScanner(masked)
    boundaries: list[int] = []
    held = b""
    edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for lo, hi in itertools.pairwise(edges):
        data = held + stream[lo:hi]
        base = lo - len(held)
        pos = 0
        while pos < len(data) and scanner.violation is None:
            # Budget 0 finishes only the payload in progress; 1 takes one more frame.
            new = scanner.scan(data, pos, 0 if not scanner.at_boundary else 1)
            assert pos <= new <= len(data)  # never backwards, never past the read
            if new == pos:
                break  # an unfinished header (kept for the next read), or a violation
            pos = new
            if scanner.at_boundary:
                boundaries.append(base + pos)
        held = data[pos:]
    return boundaries, scanner


def _frames_for(frames: list[tuple[int, bool, bytes, bytes, int]], masked: bool) -> list[bytes]:
    return [_frame(op, fin, key if masked else None, payload, width) for op, fin, key, payload, width in frames]


@given(_FRAMES, st.lists(st.integers(0, 4000), max_size=12), st.booleans())
@example([(0x8, True, b"abcd", b"\x03\xe8", 0)], [1, 2, 3, 4, 5, 6, 7], True)
@example([(0x1, True, b"abcd", b"", 8)], [1, 2, 3, 4, 5, 6, 7, 8, 9], False)
def test_boundaries_and_closes_whatever_the_reads(
    frames: list[tuple[int, bool, bytes, bytes, int]], cuts: list[int], masked: bool
) -> None:
    encoded = _frames_for(frames, masked)
    ends = list(itertools.accumulate(len(e) for e in encoded))
    boundaries, scanner = _scan(b"".join(encoded), cuts, masked)
    # A boundary exactly where each frame ends, and nowhere else.
    assert boundaries == ends
    assert scanner.at_boundary
    assert scanner.violation is None
    assert scanner.closes == sum(1 for f in frames if f[0] == _CLOSE)
    assert scanner.frames == len(frames)


@given(_FRAMES, st.integers(0, 7), st.lists(st.integers(0, 4000), max_size=12), st.booleans())
def test_a_frame_masked_the_wrong_way_stops_the_scan_at_its_start(
    frames: list[tuple[int, bool, bytes, bytes, int]], at: int, cuts: list[int], masked: bool
) -> None:
    """RFC 6455 §5.1: client frames are masked, server frames are not. The frames before
    the wrong one are followed; nothing of the wrong one is taken."""
    if not frames:
        return
    at = at % len(frames)
    encoded = _frames_for(frames, masked)
    encoded[at] = _frames_for([frames[at]], not masked)[0]
    boundaries, scanner = _scan(b"".join(encoded), cuts, masked)
    assert scanner.violation is not None
    assert boundaries == list(itertools.accumulate(len(e) for e in encoded[:at]))


@given(st.binary(min_size=10, max_size=10), st.booleans())
def test_a_length_with_the_top_bit_set_is_refused(rest: bytes, masked: bool) -> None:
    header = bytes((0x82, (0x80 if masked else 0) | 127)) + bytes((0x80 | rest[0],)) + rest[1:8]
    header += rest[6:10] if masked else b""  # the mask: the header is whole only with it
    scanner = FrameScanner(masked)
    assert scanner.scan(header, 0, 1) == 0
    assert scanner.violation == "a frame length with the top bit set"


@given(st.binary(max_size=200), st.lists(st.integers(0, 400), max_size=6), st.booleans())
def test_any_bytes_are_scanned_or_stopped_at_a_violation(stream: bytes, cuts: list[int], masked: bool) -> None:
    # `_scan` checks that every call moves forward within the read, and ends.
    _scan(stream, cuts, masked)
