"""The control channel between the supervisor and one worker: JSON lines over a Unix
socket pair, each message an object with an `op`.

Requests carry an `id`; the answer repeats it, so the supervisor can wait for one
answer while others (a reload, a scrape) are outstanding on the same channel. The
channel carries the validated policy (its text, and the bytes of the key and secret
files it names: a socket pair between the two processes, nothing else can read it),
readiness and control: never request data, never a token. Its end of file tells a
worker that its supervisor is gone.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.limits import MAX_KEY_FILES_BYTES, MAX_POLICY_BYTES

log = logging.getLogger("gateway.runtime")

Message = dict[str, Any]

# The largest message is a policy snapshot: its text, a JSON string (at most 6 bytes a
# character, for `\u00XX` escapes), and its key files in base64 (4 bytes for 3), plus
# room for paths and fields. Load refuses larger files (gateway/limits.py), so no honest
# message is over this.
MAX_MESSAGE = 6 * MAX_POLICY_BYTES + 2 * MAX_KEY_FILES_BYTES + 2**20


class ChannelClosedError(ConnectionError):
    """The other end is gone (its process exited)."""


class Channel:
    """One end: send messages, and call `serve`'s handler for each one received."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # handlers running (kept referenced)
        self.closed = False

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE)
        return cls(reader, writer)

    def send(self, message: Message) -> None:
        if self.closed:
            raise ChannelClosedError("control channel closed")
        self._writer.write(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")

    async def request(self, message: Message, within: float) -> Message:
        """Send and wait for the answer with the same id (TimeoutError, ChannelClosedError)."""
        ident = next(self._ids)
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = answer
        try:
            self.send({**message, "id": ident})
            async with asyncio.timeout(within):
                return await answer
        finally:
            self._waiting.pop(ident, None)

    def reply(self, request: Message, answer: Message) -> None:
        if not self.closed:
            self.send({**answer, "reply": request.get("id")})

    async def serve(self, handle: Callable[[Message], Awaitable[None] | None]) -> None:
        """Read until end of file. Answers go to `request` callers; anything else to
        `handle` (a coroutine handler runs as its own task, so a slow one blocks no other)."""
        tasks = self._tasks
        try:
            while True:
                try:
                    line = await self._reader.readline()
                except (ValueError, ConnectionError):
                    break  # over MAX_MESSAGE, or reset: the peer is broken either way
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    log.error("control channel: a message that is not JSON; closing")
                    break
                if not isinstance(message, dict):
                    continue
                reply = message.get("reply")
                if reply is not None:
                    waiter = self._waiting.get(reply)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(message)
                    continue
                result = handle(message)
                if result is not None:
                    task = asyncio.ensure_future(result)
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            self.close()
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(ChannelClosedError("control channel closed"))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._writer.close()
