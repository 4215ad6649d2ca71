"""The path and header defences hold under both of aiohttp's HTTP parsers.

aiohttp falls back to a pure-Python parser where its C extension is missing (or with
AIOHTTP_NO_EXTENSIONS=1). The two have differed before, so the gateway is run as a real
process under each and sent the same hostile requests.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.conftest import Upstream
from tests.functional.test_downstream import exchange, half_closed, segments, split_responses
from tests.procs import running_gateway
from tests.rawhttp import get, parse_response, raw_request

HOSTILE = ["/a%2Fb", "/a%5Cb", "/a\\b", "/a%00b", "/..", "/%2e%2e/x", "/a/..;/b", "/a%zz", "http://evil/x", "*"]

SMUGGLING = [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
]


@pytest.mark.parametrize("parser", ["c", "python"])
async def test_hostile_targets_under_each_parser(tmp_path: Path, upstream: Upstream, parser: str) -> None:
    env = {"AIOHTTP_NO_EXTENSIONS": "1"} if parser == "python" else {}
    async with running_gateway(
        tmp_path,
        f"""
        - {{name: pub, match: {{prefix: /public}}, upstream: "{upstream.url}", auth: public}}
        - {{name: everything, match: {{prefix: /}}, upstream: "{upstream.url}/root", auth: public}}
        """,
        env=env,
    ) as gw:
        for target in HOSTILE:
            resp = await raw_request(gw.port, get(target))
            assert resp.status == 400, (parser, target)
        assert upstream.seen == []

        # Request smuggling: framing that two parsers could read two ways is refused.
        for framing in SMUGGLING:
            resp = await raw_request(gw.port, b"POST /public/x HTTP/1.1\r\nHost: g\r\n" + framing)
            assert resp.status == 400, (parser, framing)
        assert upstream.seen == []

        # Nothing after an Upgrade request is read as HTTP, and a refused request's
        # body is never parsed as a request (the two parsers differ on the first).
        inner = b"GET /public/smuggled HTTP/1.1\r\nHost: g\r\n\r\n"
        resp = await raw_request(
            gw.port, b"GET /public/up HTTP/1.1\r\nHost: g\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n" + inner
        )
        assert resp.status == 200
        head = b"POST /%%2e%%2e HTTP/1.1\r\nHost: g\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(inner)
        resp = await raw_request(gw.port, head + inner)
        assert resp.status == 400
        assert [s.raw_path for s in upstream.seen] == ["/public/up"]

        resp = await raw_request(gw.port, get("/public/%2e/x//y", "X_Auth_Subject: admin", "X-Auth-Role: root"))
        assert resp.status == 200
        assert upstream.last.raw_path == "/public/x/y"
        assert not [k for k in upstream.last.headers if "auth" in k]


BAD = b"GET /public/bad HTTP/1.1\r\nBad Header\r\n\r\n"


@pytest.mark.parametrize("parser", ["c", "python"])
async def test_client_failures_are_the_clients_under_each_parser(
    tmp_path: Path, upstream: Upstream, parser: str
) -> None:
    """A client's broken upload is its own 400, never a 502 `upstream_error`; requests
    before a malformed one are served first; a half-closed client gets its answer."""
    env = {"AIOHTTP_NO_EXTENSIONS": "1"} if parser == "python" else {}
    async with running_gateway(
        tmp_path, f'- {{name: pub, match: {{prefix: /public}}, upstream: "{upstream.url}", auth: public}}', env=env
    ) as gw:
        head = b"POST /public/up HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n"
        # A garbage chunk-size line (both parsers raise), and a trailer flood (the
        # pure-Python parser fails the body without raising, and would read on).
        for rest in (b"zz\r\n", b"0\r\n" + b"X-T: 1\r\n" * 10_000 + b"\r\n"):
            data = await segments(gw.port, head, rest)
            assert parse_response(data).status == 400, (parser, rest[:8])
        assert upstream.seen == []
        # Requests before a malformed one in the same segment are served first.
        data = await exchange(gw.port, b"GET /public/valid HTTP/1.1\r\nHost: g\r\n\r\n" + BAD)
        assert [parse_response(r).status for r in split_responses(data)] == [200, 400], parser
        assert [s.raw_path for s in upstream.seen] == ["/public/valid"]
        # A complete upload, then a half-close: answered.
        upload = b"POST /public/up HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\n\r\nhello"
        assert parse_response(await half_closed(gw.port, upload)).status == 200, parser
        assert upstream.last.body == b"hello"

        records = await access_records(tmp_path, count=5)
        assert [(r["method"], r["status"], r["reason"]) for r in records] == [
            ("POST", 400, "bad_request"),
            ("POST", 400, "bad_request"),
            ("GET", 200, "-"),
            ("-", 400, "bad_request"),  # the unparseable GET: its peer and reason only
            ("POST", 200, "-"),
        ], parser


async def access_records(tmp_path: Path, count: int) -> list[dict[str, object]]:
    """The gateway's access lines, once `count` are written (a thread writes them)."""
    for _ in range(100):
        lines = [line for line in (tmp_path / "gateway.log").read_text().splitlines() if line.startswith("{")]
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} access lines")
