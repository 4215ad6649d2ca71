"""Partners that misbehave on purpose (an IdP, an upstream) on raw sockets, and a
gateway whose lifetime a test owns, so that it can count what is left after it stops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from gateway.app import Gateway
from gateway.policy import load_policy
from tests.metrics_parse import Scrape, scrape
from tests.tcpserver import Served

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


class Scripted:
    """A raw HTTP/1.1 server: each request head (up to its end) goes to the behaviour
    registered for its path. Counts connections, and the ones still open: a connection
    the gateway forgot to close stays counted here."""

    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.heads: list[bytes] = []
        self.connections = 0
        self.open = 0
        self.served = Served(self._handle)

    @property
    def port(self) -> int:
        return self.served.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hits(self, path: str) -> int:
        return sum(h.split(b" ", 2)[1] == path.encode() for h in self.heads)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                path = head.split(b" ", 2)[1].decode()
                behaviour = self.behaviours.get(path, not_found)
                await behaviour(reader, writer, head)
                if writer.is_closing():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def __aenter__(self) -> Scripted:
        await self.served.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.served.close()


def response(status: str, body: bytes, content_type: str = "application/json", extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def answer(data: bytes, delay: float = 0.0) -> Behaviour:
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        if delay:
            await asyncio.sleep(delay)
        writer.write(data)
        await writer.drain()

    return behaviour


async def not_found(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
    writer.write(response("404 Not Found", b"{}"))
    await writer.drain()


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
    """Never answer; return when the peer closes (so a peer that forgets to is seen)."""
    while await reader.read(65536):
        pass
    writer.close()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Running:
    """One gateway started from YAML text; after `stop()`, `leftover_tasks()` and
    `extra_sockets()` say what it left behind."""

    def __init__(self, gateway: Gateway, tasks_before: set[asyncio.Task[object]], sockets_before: int | None) -> None:
        self.gateway = gateway
        self._tasks_before = tasks_before
        self._sockets_before = sockets_before
        self.stopped = False

    @property
    def port(self) -> int:
        return self.gateway.public_port

    async def scrape(self) -> Scrape:
        return await scrape(self.gateway.admin_port)

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.gateway.stop()

    async def leftover_tasks(self, seconds: float = 3.0) -> list[str]:
        """Tasks started since the gateway was built that are still alive after it
        stopped (waiting a little: a closed connection's handler ends a turn later)."""
        me = asyncio.current_task()
        deadline = time.monotonic() + seconds
        while True:
            left = [t for t in asyncio.all_tasks() if t not in self._tasks_before and t is not me and not t.done()]
            if not left or time.monotonic() > deadline:
                return [t.get_name() + " " + repr(t.get_coro()) for t in left]
            await asyncio.sleep(0.02)

    async def extra_sockets(self, seconds: float = 3.0) -> int:
        """Sockets open now beyond those open before the gateway was built (0 where
        /proc cannot tell): a connection the gateway forgot stays counted here."""
        if self._sockets_before is None:
            return 0
        deadline = time.monotonic() + seconds
        while True:
            extra = open_sockets() - self._sockets_before
            if extra <= 0 or time.monotonic() > deadline:
                return max(extra, 0)
            await asyncio.sleep(0.02)


HAVE_PROC = os.path.isdir("/proc/self/fd")


def open_sockets() -> int:
    """Open sockets. (Only sockets: each Gateway's metrics hold a memfd until the object
    is collected, which in a worker is its process's lifetime.)"""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


@contextlib.asynccontextmanager
async def running_gateway(tmp_path: Path, yaml_text: str) -> AsyncIterator[Running]:
    """A gateway on loopback. Leaving, it is stopped and no task it started may be left."""
    text = "listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n" + textwrap.dedent(yaml_text)
    path = tmp_path / "faults-policy.yaml"
    path.write_text(text)
    before = set(asyncio.all_tasks())
    sockets = open_sockets() if HAVE_PROC else None
    gateway = Gateway(load_policy(str(path)))
    await gateway.start()
    running = Running(gateway, before, sockets)
    try:
        yield running
    finally:
        await running.stop()
    assert await running.leftover_tasks() == []
    assert await running.extra_sockets() == 0


async def until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def free_port() -> int:
    """A loopback port nothing listens on (free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
