"""Header rules that no route may relax, held under both of aiohttp's HTTP parsers.

The two parsers have differed on what a header line may contain before; each rule is
checked against a real gateway process running each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.conftest import Upstream
from tests.procs import GatewayProcess, running_gateway
from tests.rawhttp import get, raw_request

PARSERS = ["c", "python"]


@asynccontextmanager
async def gateway(tmp_path: Path, upstream: Upstream, parser: str, server: str = "") -> AsyncIterator[GatewayProcess]:
    env = {"AIOHTTP_NO_EXTENSIONS": "1"} if parser == "python" else {}
    routes = f"""
    - {{name: internal, match: {{prefix: /internal, host: internal.example.com}}, upstream: "{upstream.url}/int",
        auth: public}}
    - {{name: all, match: {{prefix: /}}, upstream: "{upstream.url}", auth: public}}
    """
    async with running_gateway(tmp_path, routes, server, env=env) as gw:
        yield gw


OVERRIDES = [
    "X.Envoy.Original.Path: /admin",
    "X_Original_URL: /admin",
    "HTTP_X_ORIGINAL_URL: /admin",
    "X-Forwarded-Prefix: /admin",
    "X_Script_Name: /admin",
    "X-HTTP-Method-Override: DELETE",
    "X.HTTP.Method: DELETE",
]


@pytest.mark.parametrize("parser", PARSERS)
async def test_override_headers_never_reach_the_upstream(tmp_path: Path, upstream: Upstream, parser: str) -> None:
    async with gateway(tmp_path, upstream, parser, "server: {trusted_proxies: [127.0.0.1/32]}") as gw:
        resp = await raw_request(gw.port, get("/x", *OVERRIDES, "X-Kept: yes"))
        assert resp.status == 200
        assert sorted(upstream.last.headers) == [
            "host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-kept", "x-request-id"
        ]  # fmt: skip
        assert upstream.last.method == "GET"
        assert upstream.last.raw_path == "/x"


# Each is refused with 400 and never forwarded: a port out of 1-65535 or not written
# canonically, an empty port, userinfo, escapes, empty labels, a zone ID, IPvFuture, an
# IPv4 address in brackets, non-ASCII, a name longer than DNS allows, whitespace.
BAD_HOSTS = [
    b"gw.test:99999", b"gw.test:65536", b"gw.test:0", b"gw.test:00", b"gw.test:0080", b"gw.test:",
    b"gw.test:8o", b"gw.test:+80", b"gw.test:80:80", b"gw.test: 80", b"a@gw.test", b"gw%2etest", b"gw..test",
    b".gw.test", b"gw.test..", b"[::1", b"[::1]:99999", b"[::1]80", b"[::1]:", b"[fe80::1%25eth0]", b"[v1.x]",
    b"[1.2.3.4]", b"[::g]", b"g\xc3\xa9.test", b"a" * 255, b"gw test", b"gw\ttest",
    b"\xe2\x84\xaaiosk.test",  # the Kelvin sign, which lower-cases to an ASCII `k`
]  # fmt: skip
# (value, the route it reaches): case, a port and one trailing dot do not change the name.
GOOD_HOSTS = [
    (b"gw.test:65535", "/internal/x"), (b"gw.test:1", "/internal/x"), (b"[::1]:80", "/internal/x"),
    (b"[::1]", "/internal/x"), (b"a_b-c.test", "/internal/x"),
    (b"Internal.Example.COM:8443", "/int/internal/x"), (b"internal.example.com.", "/int/internal/x"),
    (b"internal.example.com.:80", "/int/internal/x"),
]  # fmt: skip


def request(host: bytes, version: bytes = b"1.1") -> bytes:
    return b"GET /internal/x HTTP/" + version + b"\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("parser", PARSERS)
async def test_host_is_one_name_and_a_port_in_range(tmp_path: Path, upstream: Upstream, parser: str) -> None:
    async with gateway(tmp_path, upstream, parser) as gw:
        for host in BAD_HOSTS:
            resp = await raw_request(gw.port, request(host))
            assert resp.status == 400, (parser, host)
            assert resp.headers["Content-Type"] == "application/json"
        # Two Host headers, or none in HTTP/1.1 (RFC 9112 §3.2).
        resp = await raw_request(gw.port, request(b"internal.example.com\r\nHost: gw.test"))
        assert resp.status == 400
        resp = await raw_request(gw.port, b"GET /internal/x HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert resp.status == 400
        assert upstream.seen == []

        for host, path in GOOD_HOSTS:
            resp = await raw_request(gw.port, request(host))
            assert resp.status == 200, (parser, host)
            assert upstream.last.raw_path == path, host
            assert upstream.last.headers["x-forwarded-host"] == [host.decode()]
        # HTTP/1.0 needs no Host.
        resp = await raw_request(gw.port, b"GET /internal/x HTTP/1.0\r\n\r\n")
        assert resp.status == 200
        assert upstream.last.raw_path == "/internal/x"
