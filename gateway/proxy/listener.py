"""The public listening socket, and accepting from it one connection per wakeup.

The supervisor binds one socket and every worker accepts from it: one accept queue, N
processes. The alternative, SO_REUSEPORT (a socket per worker, the kernel hashing
connections across them), gives each worker its own queue: when a worker stops (a
drain, a reload that replaces workers, a crash), the connections the kernel already
queued on its socket are reset. With one shared queue, a worker that stops accepting
leaves what is queued to the others, which "no request fails because of a reload" needs.

asyncio's and uvloop's servers accept until the queue is empty each time the socket is
readable: the worker that wakes first takes a whole burst (a load balancer opening its
pool, wrk starting 50 connections), and keeps those connections for their keep-alive
life while the other workers idle. nginx accepts one connection per event by default
(`multi_accept off`) for the same reason. Here every worker is woken, each takes one
per turn of its loop, and a busy worker, whose turns are long, takes fewer.

With TLS, each accepted connection is handed to the loop with the context in force at
that moment (`Tls.context`), so a certificate rotated since is served to new
connections while open ones keep theirs; the handshake is bounded by
`Tls.handshake_timeout`, and its outcome is reported.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Protocol, cast

from gateway.policy.model import Listen

log = logging.getLogger("gateway.proxy")

# Out of descriptors (or kernel memory): stop accepting this long, as asyncio does,
# rather than spin on an accept that keeps failing.
_PAUSE_AFTER_ERROR = 1.0
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


BACKLOG = 1024


def bind(where: Listen) -> socket.socket:
    """A listening, non-blocking socket on `where` (OSError if it cannot be had)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        where.host or "0.0.0.0", where.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # As asyncio's create_server: rebinding a port in TIME_WAIT is allowed, and an
        # IPv6 socket takes IPv6 only (`0.0.0.0` and `::` are two listens).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


class Tls(Protocol):
    """What the listener needs to terminate TLS (gateway.tls.terminator.TlsTerminator)."""

    @property
    def context(self) -> ssl.SSLContext: ...

    @property
    def handshake_timeout(self) -> float: ...

    def handshake_done(self, transport: asyncio.BaseTransport) -> None: ...

    def handshake_failed(self, exc: BaseException) -> None: ...


# How long a TLS close waits for the client's close_notify before the socket goes.
_TLS_SHUTDOWN_TIMEOUT = 2.0


class Listener:
    """Accepts from `sock` (listening, non-blocking, possibly shared with other
    processes) and hands each connection to `factory`'s protocol, over TLS when `tls`
    is set (it may be replaced while listening: a policy reload). `unstarted` is told
    of a protocol `factory` made whose connection never started (its handshake failed)."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        tls: Tls | None = None,
        unstarted: Callable[[asyncio.Protocol], None] = lambda _: None,
        full: Callable[[], bool] = lambda: False,
    ) -> None:
        self._sock = sock
        self._factory = factory
        self._unstarted = unstarted
        self._full = full
        self.tls = tls
        self._loop = asyncio.get_running_loop()
        # Accepted connections whose transport is being made: close() waits for them,
        # so that a drain starting now sees every connection it must drain.
        self._pending: set[asyncio.Task[object]] = set()
        self._accepting = False

    def start(self) -> None:
        if self._accepting:
            return
        self._accepting = True
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it, or the client gave up in the queue
        except OSError as exc:
            if exc.errno not in _RESOURCE_ERRORS:
                log.warning("accept failed (%s)", errno.errorcode.get(exc.errno or 0, exc))
                return
            log.error("cannot accept connections (%s): pausing %gs", errno.errorcode[exc.errno], _PAUSE_AFTER_ERROR)
            self._loop.remove_reader(self._sock.fileno())
            self._loop.call_later(_PAUSE_AFTER_ERROR, self._resume)
            return
        self._adopt(conn)

    def _adopt(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        tls = self.tls
        if tls is None:
            task = self._loop.create_task(self._loop.connect_accepted_socket(self._factory, conn))
            self._pending.add(task)
            task.add_done_callback(functools.partial(self._made, conn))
            return
        if self._full():
            conn.close()
            return
        made: list[asyncio.Protocol] = []

        def factory() -> asyncio.Protocol:
            protocol = self._factory()
            made.append(protocol)
            return protocol

        task = self._loop.create_task(
            self._loop.connect_accepted_socket(
                factory,
                conn,
                ssl=tls.context,
                ssl_handshake_timeout=tls.handshake_timeout,
                # Closing waits this long for the client's close_notify (asyncio's
                # default is 30 s, a descriptor held per client that ignores it).
                ssl_shutdown_timeout=_TLS_SHUTDOWN_TIMEOUT,
            )
        )
        self._pending.add(task)
        task.add_done_callback(functools.partial(self._handshaken, conn, tls, made))

    def _handshaken(
        self, conn: socket.socket, tls: Tls, made: list[asyncio.Protocol], task: asyncio.Task[object]
    ) -> None:
        """A TLS connection's handshake ended. The protocol was made before it began and
        hears of its connection only after it succeeded: when it failed, the protocol
        is told, so that what it counted (an open connection) is uncounted."""
        if not task.cancelled():
            exc = task.exception()
            if exc is None:
                transport, _ = cast(tuple[asyncio.BaseTransport, asyncio.Protocol], task.result())
                tls.handshake_done(transport)
            else:
                tls.handshake_failed(exc)
                for protocol in made:
                    self._unstarted(protocol)
        self._made(conn, task)

    def _made(self, conn: socket.socket, task: asyncio.Task[object]) -> None:
        self._pending.discard(task)
        if task.cancelled() or task.exception() is not None:
            # No transport owns it: the client went away before it was made, or the
            # task was cancelled (a loop torn down) before its first step, where no
            # `except` in it could run. Closing twice is harmless.
            conn.close()
            if not task.cancelled():
                log.debug("accepted connection lost before it started (%s)", type(task.exception()).__name__)

    def _resume(self) -> None:
        if self._accepting:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def close(self) -> None:
        """Stop accepting and close our descriptor (the socket stays open in the other
        processes that share it); return once every accepted connection has reached
        its protocol.

        What the kernel has queued is taken first: closing the last descriptor of a
        listening socket resets every connection queued on it, whose clients have
        connected and may have sent a request (the old socket of a listen change, the
        socket at a SIGTERM, while clients still arrive). Taken here, they are drained
        like the others. Nothing is awaited between the last accept and the close, so
        one more can only slip in within microseconds."""
        if self._accepting:
            self._accepting = False
            self._loop.remove_reader(self._sock.fileno())
            self._take_queued()
            self._sock.close()
        if self._pending:
            await asyncio.wait(list(self._pending))

    def _take_queued(self) -> None:
        for _ in range(BACKLOG):  # bounded: a flood must not hold the stop
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # reset by its client while queued
            except OSError as exc:  # out of descriptors: the rest go with the socket
                log.warning("cannot take the queued connections before closing (%s)", exc)
                return
            self._adopt(conn)
