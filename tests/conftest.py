"""Fixtures: real upstreams on real sockets, a gateway built from YAML text."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import RawTestServer

from gateway.app import Gateway
from gateway.policy import load_policy


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    raw_path: str
    headers: dict[str, list[str]]
    body: bytes


@dataclass
class Upstream:
    """A recording upstream. Tests add handlers for special paths in `routes`."""

    server: RawTestServer | None = None
    seen: list[Seen] = field(default_factory=list)
    routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def last(self) -> Seen:
        return self.seen[-1]


async def _record(upstream: Upstream, request: web.Request) -> web.StreamResponse:
    path = request.raw_path.partition("?")[0]
    special = upstream.routes.get(path)
    if special is not None:
        return await special(request)
    body = await request.read()
    headers: dict[str, list[str]] = {}
    for k, v in request.headers.items():
        headers.setdefault(k.lower(), []).append(v)
    upstream.seen.append(Seen(request.method, request.raw_path, headers, body))
    return web.json_response({"ok": True, "path": request.raw_path})


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return await _record(up, request)  # type: ignore[arg-type]

    # auto_decompress=False: the upstream records the bytes exactly as the gateway sent them.
    up.server = RawTestServer(handler, host="127.0.0.1")
    await up.server.start_server(auto_decompress=False)
    yield up
    await up.server.close()


GatewayFactory = Callable[[str], Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """Build and start a gateway from YAML text. `{upstream}` style formatting is the caller's."""
    started: list[Gateway] = []

    async def make(yaml_text: str, **format_args: Any) -> Gateway:
        text = textwrap.dedent(yaml_text)
        if "listen:" not in text.split("routes:")[0]:
            text = "listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n" + text
        path = tmp_path / f"policy{len(started)}.yaml"
        path.write_text(text)
        gateway = Gateway(load_policy(str(path)))
        await gateway.start()
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        await gateway.stop()
    await asyncio.sleep(0)
    for gateway in started:
        # Every request counted as parsed-but-unanswered for write coalescing must be
        # uncounted again, however its connection ended (else coalescing drifts).
        server = gateway._server
        assert server is not None
        for _ in range(100):
            if not server.connections:
                break
            await asyncio.sleep(0.02)
        assert server.coalescer.busy == 0


def _on_uvloop(item: pytest.Item) -> bool:
    """The proxy listener's own tests (its HTTP, its TLS, its limits, and the WebSocket
    relay's, which takes its transports over) run on uvloop, as the gateway does in
    production: its transports close and call back in another order than asyncio's, and
    its TLS is its own implementation. The rest keep asyncio's default loop."""
    names = ("test_downstream.py", "test_tls.py", "test_limits.py", "test_websocket.py", "test_websocket_reload.py")
    return item.path.name in names


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    if _on_uvloop(item):
        # A test may ask for both with `@pytest.mark.asyncio(loop_factories=[...])`.
        marker = item.get_closest_marker("asyncio")
        if marker is not None and "loop_factories" in marker.kwargs:
            return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """pytest-timeout's `signal` method (pyproject.toml) fails a stuck test and goes on,
    but uvloop swallows the exception it raises from SIGALRM (as from any callback), so
    a stuck uvloop test would hang for ever. Those use the `thread` method: at the
    deadline it prints every stack and ends the run, which is loud but bounded."""
    for item in items:
        if _on_uvloop(item):
            item.add_marker(pytest.mark.timeout(method="thread"))
