"""WebSockets through a real gateway process with several workers: the open-connections
gauge is the sum over the workers, and SIGTERM ends open connections with 1001."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from tests.metrics_parse import scrape
from tests.procs import GatewayProcess, connection_owners, running_gateway


@pytest.fixture
async def echo() -> AsyncIterator[TestServer]:
    async def handle(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def gauge(gw: GatewayProcess) -> float:
    return (await scrape(gw.admin_port)).get("gateway_websockets_open")


async def until_gauge(gw: GatewayProcess, wanted: float, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while (value := await gauge(gw)) != wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"gateway_websockets_open is {value}, not {wanted}")
        await asyncio.sleep(0.1)


async def test_the_gauge_sums_the_workers_and_sigterm_closes_with_1001(tmp_path: Path, echo: TestServer) -> None:
    routes = f"""
    - {{name: live, match: {{prefix: /live}}, upstream: "http://127.0.0.1:{echo.port}", websocket: true, auth: public}}
    """
    extra = "server: {workers: 2, shutdown_timeout: 30s}"
    async with running_gateway(tmp_path, routes, extra) as gw, aiohttp.ClientSession() as session:
        workers = gw.workers()
        sockets: list[aiohttp.ClientWebSocketResponse] = []
        # Opened until both workers hold some, so that only a sum gives the total.
        while len(sockets) < 40:
            ws = await session.ws_connect(f"{gw.url}/live/{len(sockets)}")
            await ws.send_str("hi")
            assert (await ws.receive(timeout=5)).data == "hi"
            sockets.append(ws)
            owners = connection_owners(workers, gw.port)
            if len(sockets) >= 4 and len(set(owners.values())) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(set(connection_owners(workers, gw.port).values())) == 2
        await until_gauge(gw, len(sockets))
        await sockets.pop().close()
        await until_gauge(gw, len(sockets))
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        for ws in sockets:
            msg = await ws.receive(timeout=10)
            assert msg.type == WSMsgType.CLOSE
            assert msg.data == 1001
        exit_code = await asyncio.to_thread(gw.proc.wait, 20)
        assert exit_code == 0
        assert time.monotonic() - t0 < 10  # not the 30 s shutdown_timeout


async def test_a_sighup_reload_closes_the_websockets_it_no_longer_admits_on_every_worker(
    tmp_path: Path, echo: TestServer
) -> None:
    """Each worker re-checks its own open connections when it commits the new policy:
    those on the removed route get 1008 (`policy_changed` in the access log), those on
    the route that stays go on."""
    u = f"http://127.0.0.1:{echo.port}"
    routes = f"""
    - {{name: live, match: {{prefix: /live}}, upstream: "{u}", websocket: true, auth: public}}
    - {{name: gone, match: {{prefix: /gone}}, upstream: "{u}", websocket: true, auth: public}}
    """
    extra = "server: {workers: 2, watch: false}"
    async with running_gateway(tmp_path, routes, extra) as gw, aiohttp.ClientSession() as session:
        workers = gw.workers()
        live: list[aiohttp.ClientWebSocketResponse] = []
        gone: list[aiohttp.ClientWebSocketResponse] = []
        # Opened in pairs until each worker holds some of both.
        while len(live) < 40:
            for name, held in (("live", live), ("gone", gone)):
                ws = await session.ws_connect(f"{gw.url}/{name}/{len(held)}")
                await ws.send_str("hi")
                assert (await ws.receive(timeout=5)).data == "hi"
                held.append(ws)
            owners = connection_owners(workers, gw.port)
            if len(set(owners.values())) == 2 and len(live) >= 4:
                break
            await asyncio.sleep(0.01)
        assert len(set(connection_owners(workers, gw.port).values())) == 2
        text = gw.config.read_text()
        gw.config.write_text("\n".join(line for line in text.splitlines() if "name: gone" not in line) + "\n")
        gw.proc.send_signal(signal.SIGHUP)
        for ws in gone:
            msg = await ws.receive(timeout=10)
            assert msg.type == WSMsgType.CLOSE
            assert msg.data == 1008
        for n, ws in enumerate(live):
            await ws.send_str(f"still {n}")
            assert (await ws.receive(timeout=5)).data == f"still {n}"
            await ws.close()
        deadline = time.monotonic() + 10
        while gw.log_text().count('"reason":"policy_changed"') < len(gone):
            assert time.monotonic() < deadline, "access log lines missing"
            await asyncio.sleep(0.1)
        assert gw.log_text().count('"reason":"policy_changed"') == len(gone)
        assert sorted(gw.workers()) == sorted(workers)  # in place: the same workers
