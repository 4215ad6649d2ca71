"""Stopping is bounded: the drain never waits on a connection past shutdown_timeout."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

import pytest

from gateway.proxy.downstream import Server
from tests.conftest import GatewayFactory, Upstream


def _start_now(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task whose first step (up to its first real wait) runs now, not a turn later."""
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        return asyncio.eager_task_factory(loop, coro)
    # 3.11's wait_closed() does not wait for connections: the race below cannot hang it.
    return loop.create_task(coro)


async def test_a_connection_accepted_as_the_stop_begins_is_closed_and_does_not_hold_it(
    make_gateway: GatewayFactory, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Since Python 3.12.1 the listener's wait_closed() waits for every connection it
    accepted. One accepted in the loop turn the stop begins in reaches the proxy
    (connection_made) a turn later, after the drain's first look: it was then served
    until its keep-alive ran out, and the stop waited for it."""
    gw = await make_gateway(
        f"""
        server: {{shutdown_timeout: 1s, keepalive_timeout: 60s}}
        routes:
          - {{name: open, match: {{prefix: /}}, upstream: "{upstream.url}", auth: public}}
        """
    )
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []
    began = asyncio.Event()

    def stop() -> None:
        stopping.append(_start_now(gw.stop()))
        began.set()

    new_connection = Server.__call__

    def accept(self: Server) -> asyncio.Protocol:
        # The listener calls this just before it builds the transport, which queues
        # connection_made; a callback queued now runs between the two: the stop begins
        # in the turn after the accept, before the proxy knows the connection.
        loop.call_soon(stop)
        return new_connection(self)

    monkeypatch.setattr(Server, "__call__", accept)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    try:
        async with asyncio.timeout(3):  # shutdown_timeout 1 s; keep-alive 60 s
            await began.wait()
            await asyncio.shield(stopping[0])
            assert await reader.read() == b""  # closed, and nothing was answered
    finally:
        writer.close()
        await asyncio.gather(*stopping, return_exceptions=True)
