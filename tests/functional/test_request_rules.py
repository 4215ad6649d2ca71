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
            "host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-kept"
        ]  # fmt: skip
        assert upstream.last.method == "GET"
        assert upstream.last.raw_path == "/x"
