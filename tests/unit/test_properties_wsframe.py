"""Properties of the WebSocket frame scanner (gateway/proxy/wsframe.py) under generated streams."""

from __future__ import annotations

import contextlib
import itertools
import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.proxy.wsframe import FrameError, FrameScanner

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
        st.none() | st.binary(min_size=4, max_size=4),
        st.binary(max_size=300),
        st.sampled_from([0, 2, 8]),
    ),
    max_size=8,
)


def _scan(stream: bytes, cuts: list[int]) -> tuple[list[int], FrameScanner]:
    """Feed `stream` cut at `cuts`, as reads arrive; the offsets where the scanner
    stands at a frame boundary."""
    scanner = FrameScanner()
    boundaries: list[int] = []
    edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for lo, hi in itertools.pairwise(edges):
        chunk = stream[lo:hi]
        pos = 0
        while pos < len(chunk):
            new = scanner.advance(chunk, pos)
            assert pos < new <= len(chunk)  # progress, and never past the read
            pos = new
            if scanner.at_boundary:
                boundaries.append(lo + pos)
    return boundaries, scanner


@given(_FRAMES, st.lists(st.integers(0, 4000), max_size=12))
@example([(0x8, True, b"abcd", b"\x03\xe8", 0)], [1, 2, 3, 4, 5, 6, 7])
@example([(0x1, True, None, b"", 8)], [1, 2, 3, 4, 5, 6, 7, 8, 9])
def test_boundaries_and_closes_whatever_the_reads(
    frames: list[tuple[int, bool, bytes | None, bytes, int]], cuts: list[int]
) -> None:
    encoded = [_frame(*f) for f in frames]
    stream = b"".join(encoded)
    ends = []
    total = 0
    for e in encoded:
        total += len(e)
        ends.append(total)
    boundaries, scanner = _scan(stream, cuts)
    # A boundary exactly where each frame ends, and nowhere else.
    assert boundaries == ends
    assert scanner.at_boundary
    assert scanner.closes == sum(1 for f in frames if f[0] == _CLOSE)


def _advance_all(scanner: FrameScanner, data: bytes) -> None:
    pos = 0
    while pos < len(data):
        pos = scanner.advance(data, pos)


@given(st.binary(min_size=10, max_size=10), st.booleans())
def test_a_length_with_the_top_bit_set_is_refused(rest: bytes, masked: bool) -> None:
    header = bytes((0x82, (0x80 if masked else 0) | 127)) + bytes((0x80 | rest[0],)) + rest[1:8]
    header += rest[6:10] if masked else b""  # the mask: the header is whole only with it
    scanner = FrameScanner()
    with pytest.raises(FrameError):
        _advance_all(scanner, header)


@given(st.binary(max_size=200), st.lists(st.integers(0, 400), max_size=6))
def test_any_bytes_are_scanned_or_refused_as_a_frame_error(stream: bytes, cuts: list[int]) -> None:
    with contextlib.suppress(FrameError):
        _scan(stream, cuts)
