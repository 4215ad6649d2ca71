"""The framing scanner (gateway/proxy/framing.py): same verdict however the bytes are split."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import http_parser
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpResponseParserPy

from gateway.limits import Limits
from gateway.proxy.framing import ChunkScanner, FramingError, HeadTooLargeError, RequestFramer
from gateway.proxy.guards import ResponseGuard

HttpResponseParserC = getattr(http_parser, "HttpResponseParserC", None)

BODY = b"5;name=value\r\nhello\r\n10\r\n" + b"x" * 16 + b"\r\n0\r\nX-Checksum: 1\r\n\r\n"


def _chunks() -> ChunkScanner:
    return ChunkScanner(max_trailers=32, max_trailer_line=8192)


@pytest.mark.parametrize("step", [1, 2, 3, 7, len(BODY)])
def test_a_chunked_body_ends_where_it_ends_however_it_is_split(step: int) -> None:
    scanner = _chunks()
    data = BODY + b"GET / HTTP/1.1\r\n"
    fed = 0
    while not scanner.done:
        piece = data[fed : fed + step]
        fed += scanner.scan(piece)
    assert fed == len(BODY)


@pytest.mark.parametrize(
    "body",
    [
        b"10000000000000000\r\n",  # 17 significant hex digits
        b"1;" + b"e" * 5000 + b"\r\n",
        b"1;e=\x01\r\n",
        b"1\n",
        b"zz\r\n",
        b"1\r\na\r\n0\r\nContent-Length: 1\r\n\r\n",
        b"1\r\na\r\n0\r\n" + b"X-T: 1\r\n" * 33,
        b"1\r\na\r\n0\r\nX-T: " + b"a" * 9000,
    ],
)
def test_chunked_framing_rules(body: bytes) -> None:
    scanner = _chunks()

    def byte_by_byte() -> None:  # no split hides a violation
        for i in range(len(body)):
            scanner.scan(body[i : i + 1])

    with pytest.raises(FramingError):
        byte_by_byte()


def test_sixteen_hex_digits_and_leading_zeros_fit() -> None:
    assert _chunks().scan(b"ffffffffffffffff\r\n") == 18
    scanner = _chunks()
    assert scanner.scan(b"000000000000000000001\r\na\r\n0\r\n\r\n") == 31
    assert scanner.done


HEAD = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /y HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.mark.parametrize("step", [1, 2, 3, 5, len(HEAD)])
def test_heads_and_bodies_are_followed_across_reads(step: int) -> None:
    framer = RequestFramer(Limits())
    for i in range(0, len(HEAD), step):
        assert framer.scan(HEAD[i : i + step], 0, 1 << 20) == len(HEAD[i : i + step])
    assert list(framer.heads) == [48 + 3, 28]  # a queued request counts with its body


def test_a_head_is_refused_as_it_grows_not_once_it_ends() -> None:
    framer = RequestFramer(Limits(max_head_bytes=4096))
    framer.scan(b"GET / HTTP/1.1\r\n", 0, 1 << 20)
    for _ in range(6):  # 3 658 bytes
        framer.scan(b"X-A: " + b"a" * 600 + b"\r\n", 0, 1 << 20)
    with pytest.raises(HeadTooLargeError):
        framer.scan(b"X-A: " + b"a" * 600 + b"\r\n", 0, 1 << 20)


def test_the_authorization_line_has_its_own_limit() -> None:
    limits = Limits(max_header_line=1024, max_authorization_line=4096, max_head_bytes=8192)
    ok = b"GET / HTTP/1.1\r\nauthorization: Bearer " + b"a" * 3000 + b"\r\n\r\n"
    assert RequestFramer(limits).scan(ok, 0, 1 << 20) == len(ok)
    with pytest.raises(HeadTooLargeError):
        RequestFramer(limits).scan(b"GET / HTTP/1.1\r\nX-Authorization: " + b"a" * 3000 + b"\r\n\r\n", 0, 1 << 20)


def test_scanning_stops_after_the_head_that_passes_the_budget() -> None:
    framer = RequestFramer(Limits())
    two = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n" * 2
    assert framer.scan(two, 0, 10) == len(two) // 2


_PARSERS = [HttpResponseParserPy] + ([HttpResponseParserC] if HttpResponseParserC is not None else [])
_INTERIM_THEN_CHUNKED = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("parser_class", _PARSERS)
@pytest.mark.parametrize("step", [1, 2, 5, 1000])
async def test_a_response_body_is_scanned_however_the_heads_arrive(parser_class: Any, step: int) -> None:
    """An interim head, then a chunked one split anywhere: the bad chunk size is found."""
    loop = asyncio.get_running_loop()
    parser = parser_class(BaseProtocol(loop), loop, 2**16, read_until_eof=True, auto_decompress=False)
    guard = ResponseGuard(parser, skip_body=False, limits=Limits())
    data = _INTERIM_THEN_CHUNKED + b"10000000000000000\r\n" + b"a" * 64

    def in_steps() -> None:
        for i in range(0, len(data), step):
            guard.feed_data(data[i : i + step])

    with pytest.raises(FramingError):
        in_steps()


@pytest.mark.parametrize("parser_class", _PARSERS)
async def test_a_plain_response_is_fed_whole(parser_class: Any) -> None:
    loop = asyncio.get_running_loop()
    parser = parser_class(BaseProtocol(loop), loop, 2**16, read_until_eof=True, auto_decompress=False)
    guard = ResponseGuard(parser, skip_body=False, limits=Limits())
    messages, _, _ = guard.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    ((message, payload),) = messages
    assert message.code == 200
    assert payload.read_nowait() == b"hi"


def test_a_protocol_switch_is_found_however_the_reads_split() -> None:
    # A blank line between requests whose CR and LF come in two reads left the CRLF at
    # the start of the next head, which then escaped the CONNECT check (found by review).
    data = (
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\r\nCONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    whole = RequestFramer(Limits())
    whole.scan(data, 0, 1 << 20)
    assert (whole.seen, whole.switch_at) == (2, 2)
    for step in (1, 2, 3):
        for first in range(len(data)):
            framer = RequestFramer(Limits())
            parts = [data[:first]] + [data[i : i + step] for i in range(first, len(data), step)]
            for part in parts:
                if part:
                    framer.scan(part, 0, 1 << 20)
            assert (framer.seen, framer.switch_at) == (2, 2), (step, first)
