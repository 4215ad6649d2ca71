"""The scripted-upstream helper (tests/tcpserver.py) always shuts down, and cleanly."""

from __future__ import annotations

import asyncio

from tests.tcpserver import Served


async def test_closing_after_a_handler_closed_its_connection_once_all_was_sent() -> None:
    # The handler's close() waits for its buffer to drain; the transport is then gone
    # without counting as lost, and asyncio's abort() of it raised AttributeError.
    size = 16 * 1024 * 1024

    async def send_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"d" * size)  # more than the socket buffers: the rest waits in the transport
        writer.close()

    async with Served(send_and_close) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        await asyncio.sleep(0.2)  # the handler has closed; its transport still holds bytes
        assert len(await reader.read()) == size
        writer.close()
        await writer.wait_closed()


async def test_closing_cuts_connections_a_client_keeps_open() -> None:
    async def answer_and_keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        writer.write(b"a")
        await reader.read()  # kept alive, as by the gateway's pool

    served = Served(answer_and_keep)
    server = await served.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    writer.write(b"q")
    assert await reader.readexactly(1) == b"a"
    await asyncio.wait_for(served.close(), 5)  # hung on 3.12.1+ with a plain close()
    assert await reader.read() == b""
    writer.close()
