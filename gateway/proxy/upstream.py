"""A lean HTTP/1.1 client for the upstream hop.

aiohttp's ClientSession builds a request object, a response object, trace contexts,
cookie and redirect machinery for every call; the profile put that at about a third of
the gateway's CPU. This client keeps only what a reverse proxy needs: a keep-alive pool
of asyncio protocols per origin, the request head written as one byte string, responses
parsed by aiohttp's own C parser (strict framing, the same one the server side trusts),
a read timeout reset on every byte, no redirects, no cookies, no decompression.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import Iterable
from typing import Any

from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_exceptions import ClientPayloadError
from aiohttp.helpers import set_exception
from aiohttp.http_parser import HttpResponseParser
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDictProxy

from gateway.limits import Limits
from gateway.proxy.coalesce import Coalescer
from gateway.proxy.downstream import ClientBodyError
from gateway.proxy.guards import ResponseGuard
from gateway.routing import Upstream
from gateway.upstream_tls import UpstreamTls

# What a kept-alive upstream connection may be reused for: the same origin under the
# same TLS settings (compared by identity: a reload's new settings get new connections).
OriginKey = tuple[str, str, int, UpstreamTls | None]

# Origins one client connection keeps an idle upstream connection to (one each).
_SLOT_ORIGINS = 4
# Idle upstream connections per origin, across all clients: a bound on what idle
# clients hold open on a backend (thread-per-connection servers run out of threads).
_MAX_IDLE_PER_ORIGIN = 256
# An upstream connection idle this long is closed, within another second (the sweep).
# Below the 5 s after which Node.js and many servers close an idle connection
# themselves, so that the gateway, not the upstream, closes first, and a request is
# rarely sent on a connection the upstream is closing.
_IDLE_TIMEOUT = 3.0
_SWEEP_EVERY = 1.0
_MAX_INTERIM = 8
# Retried once on a stale kept-alive connection: only methods that are safe to repeat
# (RFC 9110 §9.2.1), since a close with no response does not prove nothing happened.
_RETRYABLE = frozenset({"GET", "HEAD", "OPTIONS"})
_READ_LIMIT = 2**16
# The largest response head awaited whole while a 101 may come (aiohttp's own head limits
# are of the same order).
_MAX_HANDSHAKE_HEAD = 64 * 1024
# Trailer limits for responses (framing.py); the head limits are the parser's own.
_RESPONSE_LIMITS = Limits()


class UpstreamError(Exception):
    """The upstream hop failed; `kind` is `unreachable`, `timeout` or `bad_response`."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class _DisconnectedError(Exception):
    """The connection closed before a response started."""


class _Conn(BaseProtocol):
    """One upstream connection, serving one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, coalescer: Coalescer) -> None:
        super().__init__(loop)
        self._coalescer = coalescer
        self._out: bytes | None = None  # the request head, until the loop's batch ends
        self.response_parser: Any = None
        self.waiter: asyncio.Future[tuple[Any, StreamReader]] | None = None
        self.payload: StreamReader | None = None
        self.should_close = False
        self.got_data = False
        self.closed = False
        self.read_timeout: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._skip_body = False
        self.interim = 0
        self.parked_at = 0.0
        # A WebSocket handshake (`begin(upgrade=True)`): heads are cut out of the stream
        # here, so that no byte after a 101 ever reaches the parser; those bytes wait
        # in `early` for the relay (websocket.py), with reading paused.
        self._upgrade = False
        self._head_buf = bytearray()
        self.early: bytearray | None = None

    def begin(
        self, skip_body: bool, read_timeout: float | None, upgrade: bool = False
    ) -> asyncio.Future[tuple[Any, StreamReader]]:
        # A new parser for every request, never the last one's: it may hold bytes that
        # followed the last response (an upstream's Content-Length undercounting its
        # body), which must never become the start of another client's response; and
        # it may still be paused by that response's flow control.
        parser = HttpResponseParser(
            self,
            self._loop,
            _READ_LIMIT,
            # aiohttp's default of 128, plus the trailers the framing rules allow, so
            # that those rules (framing.py), not the parsers' differing counts, decide.
            max_headers=128 + _RESPONSE_LIMITS.max_trailers + 4,
            payload_exception=ClientPayloadError,
            response_with_body=not skip_body,
            # RFC 9112 §6.3: a response with neither length nor chunking ends at close.
            read_until_eof=True,
            auto_decompress=False,
        )
        # Chunked bodies are held to the same rules whichever aiohttp parser runs.
        guarded = ResponseGuard(parser, skip_body, _RESPONSE_LIMITS)
        # BaseProtocol's flow control pauses and resumes the parser through `_parser`
        # when a body arrives faster than the client takes it.
        self.response_parser = self._parser = guarded  # type: ignore[assignment]
        self._skip_body = skip_body
        # Never inherit a timer from this connection's last request. The handle is lazy
        # (it only ever fires at or after the deadline it was armed for); one armed by a
        # route with a longer read timeout would fire too late for this one.
        self._deadline = None
        timer = self._timer
        if timer is not None and (not read_timeout or timer.when() > self._loop.time() + read_timeout):
            timer.cancel()
            self._timer = None
        self.interim = 0
        self._upgrade = upgrade
        self.waiter = self._loop.create_future()
        self.payload = None
        self.got_data = False
        self.should_close = False
        self.read_timeout = read_timeout
        return self.waiter

    # -- the read timer runs only while we wait on the upstream: to take a body chunk,
    # to answer once the request is sent, to send the next bytes of its response. It is
    # reset by every byte received, stopped while *we* pause reading or wait on the
    # client (a slow client is not a slow upstream), and when the response ends.
    def start_timer(self) -> None:
        self._reset_timer()

    def in_progress(self) -> bool:
        payload = self.payload
        return self.waiter is not None and (
            not self.waiter.done() or (payload is not None and payload is not EMPTY_PAYLOAD and not payload.is_eof())
        )

    def pause_reading(self) -> None:
        super().pause_reading()
        self._stop_timer()

    def resume_reading(self, resume_parser: bool = True) -> None:
        # Not skipped when `_reading_paused` is False: aiohttp can leave the parser
        # itself paused then (a pause from too many chunk boundaries survives a
        # `resume_reading(resume_parser=False)` at EOF), and only this re-feed frees it.
        super().resume_reading(resume_parser)
        if self.in_progress() and not self._reading_paused:
            self._reset_timer()

    # The timer is lazy: resetting or stopping it only moves `_deadline`; the one
    # scheduled handle re-arms itself for the current deadline when it fires. Creating
    # and cancelling a timer handle for every chunk cost more than the rest of the
    # timer logic together.
    def _reset_timer(self) -> None:
        if not self.read_timeout:
            return
        self._deadline = self._loop.time() + self.read_timeout
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _stop_timer(self) -> None:
        self._deadline = None

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.closed:
            return
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            return
        self._deadline = None
        self._fail(TimeoutError("upstream read timeout"))
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        payload = self.payload
        if (
            payload is not None
            and payload is not EMPTY_PAYLOAD
            and not payload.is_eof()
            and payload.exception() is None  # the first cause stays (the close follows it)
        ):
            # A stall stays a timeout (504 while nothing was sent), the client's failed
            # body stays the client's; anything else is a broken body.
            failure = exc if isinstance(exc, (TimeoutError, ClientBodyError)) else ClientPayloadError(str(exc))
            set_exception(payload, failure, exc)

    def _upgrade_feed(self, data: bytes) -> bytes | None:
        """While a 101 may come: pass on only whole heads, up to a 101's end; keep what
        follows a 101 (`early`). Returns what the parser gets now, None for nothing."""
        if self.early is not None:
            self.early += data  # after the 101: the relay's, once it takes over
            self._pause_transport_reading()
            return None
        buf = self._head_buf
        # Searched from where the last read ended (less the blank line's first three
        # bytes), and by index, never by slicing: linear however the heads come.
        search = max(0, len(buf) - 3)
        buf += data
        pos = 0  # where the head being looked for begins; all before it goes to the parser
        while True:
            end = buf.find(b"\r\n\r\n", max(pos, search))
            if end < 0:
                if len(buf) - pos > _MAX_HANDSHAKE_HEAD:
                    raise UpstreamError("bad_response", "response head too large")
                self._head_buf = buf[pos:]
                return bytes(buf[:pos]) if pos else None
            head_end = end + 4
            if buf[pos : pos + 5] != b"HTTP/" or buf[pos + 9 : pos + 10] != b"1":
                # A final answer: this and all that follows is an ordinary response.
                self._upgrade = False
                self._head_buf = bytearray()
                return bytes(buf)
            if buf[pos + 9 : pos + 13] == b"101 ":
                self.early = buf[head_end:]
                self._head_buf = bytearray()
                if self.early:
                    self._pause_transport_reading()
                return bytes(buf[:head_end])
            pos = head_end  # an interim response (100, 103): a 101 may still follow it

    # -- asyncio.Protocol
    def data_received(self, data: bytes) -> None:
        if self._upgrade:
            try:
                fed = self._upgrade_feed(data)
            except UpstreamError as exc:
                self.should_close = True
                self._fail(exc)
                if self.transport is not None:
                    self.transport.close()
                return
            if fed is None:
                return
            data = fed
        parser = self.response_parser
        if parser is None:
            # Bytes nobody asked for (a response to no request): the connection is unusable.
            if data and self.transport is not None:
                self.transport.close()
            return
        if data:
            self.got_data = True
            if self._deadline is not None:
                self._reset_timer()
        try:
            messages, upgraded, _ = parser.feed_data(data)
        except Exception as exc:
            self.should_close = True
            self._fail(UpstreamError("bad_response", type(exc).__name__))
            if self.transport is not None:
                self.transport.close()
            return
        for message, payload in messages:
            if message.code == 101 and self.early is None:
                # A switch nobody asked for (not a WebSocket handshake): what follows is
                # another protocol, never this request's response (found by review).
                self.should_close = True
                self._fail(UpstreamError("bad_response", "101 to a request that asked for no upgrade"))
                if self.transport is not None:
                    self.transport.close()
                return
            if message.code == 101 and self.early is not None:
                # The switch: this connection now carries the client's WebSocket.
                self.should_close = True
                self.payload = EMPTY_PAYLOAD
                self._stop_timer()
                if self.waiter is not None and not self.waiter.done():
                    self.waiter.set_result((message, EMPTY_PAYLOAD))
                return
            if 100 <= message.code < 200:
                # Interim responses (100, 102, 103) are not relayed; an endless stream of
                # them would keep the request open forever, so only a few are allowed.
                self.interim += 1
                if self.interim > _MAX_INTERIM:
                    self._fail(UpstreamError("bad_response", "too many interim responses"))
                    if self.transport is not None:
                        self.transport.close()
                    return
                continue
            if self.payload is not None:
                # A second final response to one request: the upstream is out of step
                # with us (say, its Content-Length undercounted a body). Never hand it
                # to anyone; the connection is closed after this response.
                self.should_close = True
                continue
            if message.should_close or upgraded:
                self.should_close = True
            if self._skip_body or message.code in (204, 304):
                if message.chunked or message.headers.get("Content-Length", "0") != "0":
                    # A response that has no body but declares one (HEAD, 204, 304):
                    # legacy servers write that body anyway, possibly later than any
                    # check could see. Those bytes would be read as the next response
                    # on this connection, so it is never reused.
                    self.should_close = True
                payload = EMPTY_PAYLOAD
            self.payload = payload
            if payload is EMPTY_PAYLOAD:
                self._stop_timer()
            else:
                payload.on_eof(self._stop_timer)
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result((message, payload))

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.closed = True
        self._out = None
        self._stop_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if exc is not None:
            # A reset (any transport error) is not an end of message. Fed to the parser
            # as EOF, it would complete a body delimited by the close (RFC 9112 §6.3,
            # rule 8) that was cut short, and the client would get it terminated as
            # whole; failed first, the relay cuts the client instead (as nginx does on
            # a recv() error).
            self._fail(_DisconnectedError("upstream connection reset"))
        parser = self.response_parser
        if parser is not None:
            with contextlib.suppress(Exception):  # the failure is reported just below
                parser.feed_eof()
        self._fail(_DisconnectedError("upstream closed the connection"))

    def reusable(self) -> bool:
        payload = self.payload
        return (
            not self.closed
            and not self.should_close
            and self.transport is not None
            and not self.transport.is_closing()
            and payload is not None
            and payload.is_eof()
            and not payload.exception()
            and self._nothing_followed()
        )

    def _nothing_followed(self) -> bool:
        """No byte of a further message came after the response. Any would mean the
        upstream is out of step (a Content-Length that undercounts its body), and the
        rest of it would be read as the next request's response, another client's."""
        parser = self.response_parser
        if parser is None:
            return False
        try:
            # Ends the parser (it is never used again): None when it held nothing.
            return parser.feed_eof() is None
        except Exception:
            return False

    def write_head(self, head: bytes) -> None:
        """Send the request head, at the latest when the loop's current batch ends
        (coalesce.py)."""
        self._out = head
        if self._coalescer.worthwhile:
            self._coalescer.add(self)
        else:
            self.flush_output()

    def flush_output(self) -> None:
        head, self._out = self._out, None
        if head is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.write(head)

    def reset(self) -> None:
        self.close()

    def park(self) -> None:
        """Idle in the pool after a clean response: with no request, any byte received
        is an error (`data_received` closes)."""
        self.response_parser = self._parser = None
        self._stop_timer()  # an idle pooled connection has no deadline
        if self._reading_paused or self._buffer_paused:
            # Flow control of the last response must not outlive it: an idle connection
            # reads, so that a stray byte closes it now rather than being parsed as the
            # next request's response.
            self._reading_paused = self._buffer_paused = False
            self._resume_transport_reading()

    def close(self) -> None:
        self.response_parser = self._out = None
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """The upstream's answer: status, headers and a streamed body. Release or close it."""

    __slots__ = ("_body_task", "_conn", "_key", "_slot", "content", "headers", "reason", "status")

    def __init__(
        self,
        slot: UpstreamSlot | None,
        key: OriginKey,
        conn: _Conn,
        message: Any,
        payload: StreamReader,
        body_task: asyncio.Task[None] | None,
    ) -> None:
        self._slot = slot
        self._key = key
        self._conn = conn
        self._body_task = body_task
        self.status: int = message.code
        self.reason: str = message.reason
        self.headers: CIMultiDictProxy[str] = message.headers
        self.content = payload

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    async def read(self) -> bytes:
        content = self.content
        if content.is_eof() and content.exception() is None:
            # The whole body is already buffered (the common case for a small
            # response): take it without the read loop's awaits.
            return content.read_nowait()
        return await content.read()

    def detach(self) -> tuple[asyncio.Transport, bytes]:
        """After a 101: the connection's transport and the bytes that followed the 101,
        for the WebSocket relay, which owns them from now on (never pooled)."""
        conn = self._conn
        transport = conn.transport
        if conn.closed or transport is None or transport.is_closing():
            raise ConnectionResetError("upstream closed")
        early = bytes(conn.early or b"")
        conn.response_parser = conn._parser = None
        conn.early = None
        return transport, early

    def close(self) -> None:
        """Drop the connection (the body was not consumed, or something failed)."""
        if self._body_task is not None and not self._body_task.done():
            self._body_task.cancel()
        self._conn.close()

    def release(self) -> None:
        """Keep the connection for the same client's next request if it is clean,
        else close it."""
        task = self._body_task
        clean = task is None or (task.done() and not task.cancelled() and task.exception() is None)
        conn = self._conn
        slot = self._slot
        if slot is not None and clean and conn.reusable():
            conn.park()
            slot.put(self._key, conn)
        else:
            self.close()


class UpstreamSlot:
    """The idle upstream connections of one client connection, reused by it alone.

    HTTP/1.1 cannot tell which request a response answers. An upstream that is out of
    step with us (a Content-Length that undercounts its body, a body written after a
    HEAD response) can send bytes after a response has ended, later than any check at
    park time could see; on a connection shared between clients, those bytes become
    the next client's response. Bound to one client connection (HAProxy's
    `http-reuse never`), an upstream connection can only ever answer that client, so
    one client's request can never plant a response for another. (A front proxy that
    carries many users on one connection to us is one client here: for it,
    `server.upstream_keepalive: false` makes every upstream connection single-use.)
    The cost: a client that opens a connection per request gets an upstream
    connection per request.
    """

    __slots__ = ("_closed", "_idle", "_pool")

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._idle: dict[OriginKey, _Conn] = {}
        self._closed = False
        pool.slots.add(self)

    def take(self, key: OriginKey) -> _Conn | None:
        conn = self._idle.pop(key, None)
        if conn is None:
            return None
        self._pool.unparked(key)
        if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
            return conn
        return None

    def put(self, key: OriginKey, conn: _Conn) -> None:
        idle = self._idle
        pool = self._pool
        previous = idle.pop(key, None)
        if previous is not None:
            self._drop(key, previous)
        if self._closed or pool.closed or pool.idle.get(key, 0) >= _MAX_IDLE_PER_ORIGIN:
            conn.close()
            return
        if len(idle) >= _SLOT_ORIGINS:
            oldest = next(iter(idle))  # the origin idle longest
            self._drop(oldest, idle.pop(oldest))
        conn.parked_at = conn._loop.time()
        idle[key] = conn
        pool.parked(key)

    def expire(self, before: float) -> None:
        """Close the connections parked before `before` (or closed meanwhile)."""
        for key, conn in list(self._idle.items()):
            if conn.parked_at < before or conn.closed:
                del self._idle[key]
                self._drop(key, conn)

    def close(self) -> None:
        """The client connection is gone: so are its upstream connections."""
        self._closed = True
        self._pool.slots.discard(self)
        for key, conn in self._idle.items():
            self._drop(key, conn)
        self._idle.clear()

    def _drop(self, key: OriginKey, conn: _Conn) -> None:
        """Close a connection taken out of `_idle`, and uncount it."""
        conn.close()
        self._pool.unparked(key)


def _head(method: str, target: str, authority: str, headers: Iterable[tuple[str, str]], framing: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n"]
    for name, value in headers:
        # Inbound values come from aiohttp's parser, claim values from our renderer,
        # neither can hold CR/LF/NUL; this stays the last line of defence.
        if "\r" in value or "\n" in value or "\x00" in value:
            raise UpstreamError("bad_response", "header value with a control character")
        lines.append(f"{name}: {value}\r\n")
    lines.append(framing)
    lines.append("\r\n")
    return "".join(lines).encode("utf-8")


class UpstreamPool:
    """Connections to upstreams: opened per request, kept alive per client (`UpstreamSlot`)."""

    def __init__(self, coalescer: Coalescer | None = None) -> None:
        self.slots: set[UpstreamSlot] = set()
        self.idle: dict[OriginKey, int] = {}  # idle connections per origin
        self.coalescer = coalescer or Coalescer()
        self._ssl = ssl.create_default_context()
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    def slot(self) -> UpstreamSlot:
        """Idle connections for one client connection; close it when that one closes."""
        return UpstreamSlot(self)

    def parked(self, key: OriginKey) -> None:
        self.idle[key] = self.idle.get(key, 0) + 1
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_EVERY, self._sweep)

    def unparked(self, key: OriginKey) -> None:
        left = self.idle[key] - 1
        if left:
            self.idle[key] = left
        else:
            del self.idle[key]

    def _sweep(self) -> None:
        """Close idle connections past the idle timeout; runs while any are idle. One
        pass over the client connections a second, instead of a timer per request."""
        self._sweeper = None
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        before = loop.time() - _IDLE_TIMEOUT
        for slot in list(self.slots):
            slot.expire(before)
        if self.idle:
            self._sweeper = loop.call_later(_SWEEP_EVERY, self._sweep)

    async def _connect(self, up: Upstream, connect_timeout: float | None) -> _Conn:
        loop = asyncio.get_running_loop()
        coalescer = self.coalescer
        context: ssl.SSLContext | None = None
        hostname = None
        if up.scheme == "https":
            context = up.tls.context if up.tls is not None else self._ssl
            hostname = up.tls.hostname(up.host) if up.tls is not None else up.host
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(loop, coalescer), up.host, up.port, ssl=context, server_hostname=hostname
                )
        except TimeoutError:
            raise UpstreamError("unreachable", "connect timeout") from None
        except ssl.SSLCertVerificationError as exc:
            # OpenSSL's fixed text (and the name verified, from the policy): says what
            # to fix, carries nothing the upstream chose.
            raise UpstreamError("unreachable", f"TLS: {exc.verify_message}") from None
        except ssl.SSLError as exc:
            raise UpstreamError("unreachable", f"TLS: {exc.reason or type(exc).__name__}") from None
        except OSError as exc:
            raise UpstreamError("unreachable", type(exc).__name__) from None
        return conn

    async def request(
        self,
        method: str,
        up: Upstream,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: StreamReader | None,
        length: str | None,
        connect_timeout: float | None,
        read_timeout: float | None,
        slot: UpstreamSlot | None = None,
        upgrade: bool = False,
    ) -> UpstreamResponse:
        """Send one request. With a `slot`, a kept-alive connection of that client's is
        reused, and the response's connection goes back to it; with none, the
        connection is used for this request only. `upgrade`: a WebSocket handshake
        (a fresh connection, never retried; a 101 is its answer, see `detach`)."""
        if upgrade:
            slot = None
        key = (up.scheme, up.host, up.port, up.tls)
        if length is not None:
            framing = f"Content-Length: {length}\r\n"
        elif body is not None:
            framing = "Transfer-Encoding: chunked\r\n"
        else:
            framing = ""
        head = _head(method, target, up.authority, headers, framing)
        for attempt in (0, 1):
            conn = slot.take(key) if slot is not None else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect(up, connect_timeout)
            waiter = conn.begin(method == "HEAD", read_timeout, upgrade)
            conn.write_head(head)
            task: asyncio.Task[None] | None = None
            if body is None:
                conn.start_timer()
            else:
                task = asyncio.ensure_future(_send_body(conn, body, chunked=length is None))
                task.add_done_callback(functools.partial(_body_done, conn=conn, body=body))
            try:
                message, payload = await waiter
            except _DisconnectedError:
                conn.close()
                # Probably a kept-alive connection the upstream had already closed; a
                # safe method with no body may be sent once more on a fresh connection.
                if reused and attempt == 0 and body is None and method in _RETRYABLE and not conn.got_data:
                    continue
                raise UpstreamError("bad_response", "connection closed before a response") from None
            except TimeoutError:
                _abandon(conn, task)
                raise UpstreamError("timeout", "no response in time") from None
            except BaseException:
                # UpstreamError, and cancellation (client gone, shutdown): the connection
                # is mid-request and can never be reused.
                _abandon(conn, task)
                raise
            return UpstreamResponse(slot, key, conn, message, payload, task)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for slot in list(self.slots):
            slot.close()


def _abandon(conn: _Conn, task: asyncio.Task[None] | None) -> None:
    conn.close()
    if task is not None:
        task.cancel()


def _body_done(task: asyncio.Task[None], *, conn: _Conn, body: StreamReader) -> None:
    if task.cancelled() or task.exception() is not None:
        # The client's body failed or was abandoned: the upstream is mid-request.
        client = body.exception()
        if isinstance(client, ClientBodyError):
            # The client's failure, as the listener marked it on the body (the task may
            # have seen a parser error raised first): report it, not the close it causes
            # below, else the request (or its answer's body) fails as the upstream's.
            conn._fail(client)
        conn.should_close = True
        conn.close()


async def _send_body(conn: _Conn, body: StreamReader, *, chunked: bool) -> None:
    conn.flush_output()  # the head first
    async for chunk in body.iter_any():
        transport = conn.transport
        if transport is None:
            raise ConnectionResetError("upstream closed while sending the body")
        if chunked:
            transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            transport.write(chunk)
        # The timer runs while we wait on the upstream (to take this chunk), never while
        # we wait on the client for the next one: a slow client is not a slow upstream.
        waiting = conn.waiter is not None and not conn.waiter.done()
        if waiting:
            conn.start_timer()
        await conn._drain_helper()
        if waiting and conn.waiter is not None and not conn.waiter.done():
            conn._stop_timer()
    if conn.transport is None:
        raise ConnectionResetError("upstream closed while sending the body")
    if chunked:
        conn.transport.write(b"0\r\n\r\n")
    if conn.in_progress():
        conn.start_timer()
