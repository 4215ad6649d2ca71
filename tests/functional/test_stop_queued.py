"""Closing the public listener loses no connection the kernel has already accepted."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from gateway.app import Gateway
from gateway.policy import load_policy
from tests.conftest import Upstream
from tests.rawhttp import get


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
