"""Writes made while the event loop runs one batch of callbacks go out together.

Why: on the bench machine every send() that wakes an idle peer costs tens of
microseconds of kernel time (an inter-processor interrupt; in a VM, an exit to the
host). Answers written as each request finishes reach the peer one by one, and each can
find it asleep again; written back to back at the start of the loop's next batch, only
the first does. Measured with the client and the upstream on the other core, CPU per
request fell by about a fifth on every scenario (bench/README.md). The price is latency
of one more pass of the loop; so it is only done while several requests are being
handled at once (`busy`), when there is something to coalesce with. A lone request's
writes go out at once.

A connection keeps its own pending chunks, in order, and flushes them itself wherever
order or back-pressure matter (before draining, closing, streaming a body); the
coalescer only guarantees that nothing waits longer than the current batch.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from gateway.errors import bug_report

log = logging.getLogger("gateway.proxy")


class Flushable(Protocol):
    def flush_output(self) -> None: ...

    def reset(self) -> None: ...


class Coalescer:
    """Flushes, once per batch of the loop, every connection that wrote during it.

    One per gateway, shared by the listener and the upstream pool."""

    __slots__ = ("_loop", "_pending", "busy")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[Flushable] = []
        self.busy = 0  # requests being handled now (kept by the listener)

    @property
    def worthwhile(self) -> bool:
        """Is another request in progress, whose writes ours could join?"""
        return self.busy > 1

    def add(self, writer: Flushable) -> None:
        """`writer` has output pending; call once per change from none to some."""
        if not self._pending:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            # call_soon from inside a batch runs at the start of the next one: after
            # every callback and task step already queued, so their writes join in.
            self._loop.call_soon(self._flush)
        self._pending.append(writer)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for writer in pending:
            try:
                writer.flush_output()
            except Exception as exc:
                # One connection's failure must not strand the others' answers.
                log.error("write failed %s", bug_report(exc))
                writer.reset()
