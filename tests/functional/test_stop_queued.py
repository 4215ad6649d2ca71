"""Closing the public listener loses no connection the kernel has already accepted, and
after a SIGTERM the address refuses new connections instead of queueing them."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

from aiohttp import web

from gateway.app import Gateway
from gateway.policy import load_policy
from tests.conftest import Upstream
from tests.procs import running_gateway
from tests.rawhttp import KeptAlive, get


async def test_connections_queued_when_a_worker_closes_the_shared_listener_are_answered(
    tmp_path: Path, upstream: Upstream
) -> None:
    """A worker's listening socket is shared; closing its last descriptor resets every
    connection still in the accept queue (a listen change retires the old socket while
    clients keep arriving). The stop takes them first and answers them."""
    listen = socket.socket()
    listen.bind(("127.0.0.1", 0))
    listen.listen(64)
    listen.setblocking(False)
    port = listen.getsockname()[1]
    path = tmp_path / "policy.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\nroutes:\n"
        f'  - {{name: open, match: {{prefix: /}}, upstream: "{upstream.url}", auth: public}}\n'
    )
    gw = Gateway(load_policy(str(path)), listen_socket=listen, admin=False)
    await gw.start()
    clients = []
    try:
        for i in range(5):
            # Blocking calls on purpose: the loop does not run, so the gateway accepts
            # none of them; they wait, request sent, in the kernel's accept queue.
            client = socket.create_connection(("127.0.0.1", port))
            client.sendall(get(f"/queued/{i}", close=False))
            clients.append(client)
        # stop() takes the queue and closes the listener before it first yields.
        await gw.stop()
        for client in clients:
            client.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=client)
            async with asyncio.timeout(5):
                answer = await reader.read()  # to the end: the gateway closes after it
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
            assert b"\r\nConnection: close\r\n" in answer
        assert sorted(s.raw_path for s in upstream.seen) == [f"/queued/{i}" for i in range(5)]
    finally:
        for client in clients:
            client.close()


async def test_after_sigterm_the_port_refuses_new_connections_while_the_drain_goes_on(
    tmp_path: Path, upstream: Upstream
) -> None:
    """The supervisor closes its descriptor of the listening socket when the drain
    begins. Kept until it exits, the address went on taking connections into a queue no
    worker accepted from, and they were reset at the end of the drain."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="finished")

    upstream.routes["/slow"] = slow
    routes = f'- {{name: open, match: {{prefix: /}}, upstream: "{upstream.url}", auth: public}}'
    async with running_gateway(tmp_path, routes, "server: {shutdown_timeout: 20s}") as gw:
        conn = await KeptAlive.open(gw.port)
        in_flight = asyncio.ensure_future(conn.send(get("/slow", close=False), wait=20))
        await asyncio.sleep(0.3)  # the request is upstream now
        gw.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            except ConnectionRefusedError:
                break
            writer.close()  # taken by the worker before it closed its listener: no request sent
            assert time.monotonic() < deadline, "the port still takes connections during the drain"
            await asyncio.sleep(0.05)
        assert not in_flight.done()
        release.set()
        answer = await in_flight
        assert (answer.status, answer.body, answer.headers["Connection"]) == (200, b"finished", "close")
        assert await asyncio.to_thread(gw.proc.wait, 10) == 0
        await conn.close()
