"""Raw TCP servers for scripted upstreams, which always shut down.

Since Python 3.12.1, `asyncio.Server.wait_closed()` waits until every connection the
server accepted has ended, and the gateway's upstream pool keeps its connections alive:
a test server that is merely closed while a gateway still runs waits for ever. Leaving,
`Served` aborts its connections and cancels their handlers first: what 3.13's
`Server.abort_clients()` does, by hand, so that 3.11 and 3.12 get it too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Served:
    """`async with Served(handler) as server:` serves `handler` on a free loopback port."""

    def __init__(self, handler: StreamHandler) -> None:
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self._handler(reader, writer)

    async def start(self) -> asyncio.Server:
        self.server = await asyncio.start_server(self._run, "127.0.0.1", 0)
        return self.server

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        closed = asyncio.ensure_future(self.server.wait_closed())
        # Sweep until the server has no connection left: one accepted just before
        # close() gets its handler (and so joins our lists) a loop turn or two later.
        while not closed.done():
            for writer in self._writers:
                transport = writer.transport
                # One closed by its handler with nothing left to send is gone or going
                # (and asyncio's abort() of one already gone raises); the rest are cut.
                if not transport.is_closing() or transport.get_write_buffer_size():
                    transport.abort()
            for task in self._tasks:
                task.cancel()
            await asyncio.wait({closed}, timeout=0.05)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> asyncio.Server:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
