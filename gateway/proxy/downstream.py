"""The client side of the proxy: a lean HTTP/1.1 server on aiohttp's C request parser.

The mirror of `upstream.py`. aiohttp's low-level server builds, for every request, a
waiter future, a task, a `BaseRequest`, a `StreamWriter` and a `Response`, and formats
headers through several layers; the profile put that at about a quarter of the
gateway's CPU. Here a connection is one protocol object: the parser (aiohttp's own,
strict, the same one the server used before) emits messages, one task per burst of
requests runs the handler on them in order, and the handler writes its response head
and body as byte strings on the transport.

What it keeps from aiohttp's server, because a proxy needs it: pipelined requests
answered in order with a bounded queue, request bodies streamed with flow control,
write back-pressure, a keep-alive idle timeout, lingering close for unread uploads,
and a fixed refusal for anything the parser rejects (never an echo of the input).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol, cast

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_exceptions import HTTPBadRequest
from multidict import CIMultiDictProxy

from gateway.errors import Reason, bug_report
from gateway.limits import Limits
from gateway.proxy.coalesce import Coalescer
from gateway.proxy.guards import RequestGuard
from gateway.tls.peer import client_subject

log = logging.getLogger("gateway.proxy")

_QUEUE = 32  # pipelined requests parsed ahead of the one being answered
_READ_LIMIT = 2**16
_LINGER = 5.0  # seconds we keep reading (and discarding) an upload we did not want
# While draining, an idle keep-alive connection is closed once idle this long; before,
# its next request is still answered (with `Connection: close`).
DRAIN_IDLE = 1.0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"

Handler = Callable[["Request"], Awaitable[None]]
# A request parsed and waiting for its turn, or (an int) the status refusing what could
# not be parsed in its place.
_Queued = tuple[RawRequestMessage | int, StreamReader]
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Closeable(Protocol):
    def close(self) -> None: ...


class Tunnel(Protocol):
    """What a client connection becomes after a protocol switch (websocket.py)."""

    def shutdown(self) -> None:
        """The server is draining: end gracefully, soon."""

    def abort(self) -> None:
        """End now."""


class UnsendableHeaderError(ValueError):
    """A response header value holds a control character; nothing was written."""


class ClientBodyError(ConnectionResetError):
    """The client's request body failed: the client's doing, never the upstream's.

    Set on a request's body here (and by the parser, as its `payload_exception`) and
    nowhere else, so that whoever reads the body (the upstream body sender, the handler)
    knows where a failure came from instead of guessing. `detail` is fixed text for the
    operator's log; the exception's own text can quote request data and is never shown."""

    detail = "malformed request body"


class BodyCutShortError(ClientBodyError):
    """The client half-closed before the body was complete: it can still read an answer."""

    detail = "request body cut short"


class ClientLeftError(ClientBodyError):
    """The connection closed (or was reset) before the body was complete."""

    detail = "client disconnected"


_PHRASES = {s.value: s.phrase for s in HTTPStatus}


def phrase(status: int) -> str:
    """The standard reason phrase for a status the gateway itself answers with."""
    return _PHRASES.get(status, "Unknown")


_date: list[Any] = [0, ""]


def _http_date() -> str:
    """RFC 9110 Date, formatted once per second."""
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, formatdate(now, usegmt=True)
    return str(_date[1])


def listener_refusal(status: int, reason: Reason, extra: str = "") -> bytes:
    """A whole refusal the listener writes itself, before any handler (the request could
    not be parsed, or the connection is one too many): the reason's fixed body, then close."""
    return (
        f"HTTP/1.1 {status} {phrase(status)}\r\nContent-Type: application/json\r\n"
        f"Cache-Control: no-store\r\n{extra}Content-Length: {len(reason.body)}\r\n"
        f"Date: {_http_date()}\r\nConnection: close\r\n\r\n".encode()
        + reason.body
    )


class Request:
    """One parsed request and the means to answer it, exactly once.

    Attribute names follow aiohttp's `BaseRequest` where they mean the same thing."""

    __slots__ = (
        "_chunked",
        "_conn",
        "content",
        "headers",
        "keep_alive",
        "method",
        "raw_path",
        "remote",
        "scheme",
        "status",
        "version",
    )

    def __init__(self, conn: ClientConnection, message: RawRequestMessage, payload: StreamReader) -> None:
        self._conn = conn
        self._chunked = False
        self.method: str = message.method
        self.raw_path: str = message.path
        self.version = message.version
        self.headers: CIMultiDictProxy[str] = message.headers
        self.content = payload
        self.remote = conn.peer
        self.scheme = conn.scheme
        self.keep_alive = not message.should_close
        self.status = 0  # 0 until a response head is written

    @property
    def body_exists(self) -> bool:
        return self.content is not EMPTY_PAYLOAD

    @property
    def body_failure(self) -> ClientBodyError | None:
        """Why the body can never be read whole, if that is known already."""
        failure = self.content.exception()
        return failure if isinstance(failure, ClientBodyError) else None

    @property
    def started(self) -> bool:
        return self.status != 0

    @property
    def upstreams(self) -> Closeable | None:
        """What the handler keeps for this client connection's later requests (its
        kept-alive upstream connections); closed when the client connection closes."""
        return self._conn.upstreams

    @upstreams.setter
    def upstreams(self, value: Closeable) -> None:
        if self._conn.transport is None:
            value.close()  # connection_lost has run: nothing would ever close it
        self._conn.upstreams = value

    @property
    def client_subject(self) -> str | None:
        """The subject of the client certificate its TLS handshake verified, if any."""
        return self._conn.client_subject()

    @property
    def client_gone(self) -> bool:
        transport = self._conn.transport
        return transport is None or transport.is_closing()

    def send_continue(self) -> None:
        self._conn.write(_CONTINUE)

    def _head(self, status: int, reason: str, headers: Iterable[tuple[str, str]], framing: str) -> bytes:
        if self._conn.closing:
            self.keep_alive = False  # the server is draining
        elif self.keep_alive and self.body_exists and not self.content.is_eof():
            # An upload we have not read to its end: its remaining bytes would be
            # parsed as the next request. Answer, then close (lingering).
            self.keep_alive = False
        # isprintable() first: a C scan that clears nearly every value, so the regex
        # (the actual rule: tab and obs-text are allowed) runs only on the rest.
        if not reason.isprintable() and _CONTROL.search(reason) is not None:
            raise UnsendableHeaderError("reason phrase")
        lines = [f"HTTP/1.1 {status} {reason}\r\n"]
        has_date = False
        for name, value in headers:
            if not value.isprintable() and _CONTROL.search(value) is not None:
                # RFC 9110 §5.5: no control characters but tab in a field value. The
                # upstream's parser refuses CR, LF and NUL already; the rest stop here.
                raise UnsendableHeaderError(name)
            lines.append(f"{name}: {value}\r\n")
            if not has_date and len(name) == 4 and name.lower() == "date":
                has_date = True
        if not has_date:
            lines.append(f"Date: {_http_date()}\r\n")
        lines.append(framing)
        if not self.keep_alive:
            lines.append("Connection: close\r\n")
        elif self.version < (1, 1):
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        # surrogateescape gives back the exact bytes an upstream sent in obs-text.
        return "".join(lines).encode("utf-8", "surrogateescape")

    def send(self, status: int, reason: str, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        """A whole response, head and body in one write. `headers` holds no framing."""
        if status == 204 or status < 200:
            self._conn.write(self._head(status, reason, headers, ""))
        elif self.method == "HEAD" or status == 304:
            # The length the body would have (RFC 9110 §8.6), and no body.
            self._conn.write(self._head(status, reason, headers, f"Content-Length: {len(body)}\r\n"))
        else:
            self._conn.write(self._head(status, reason, headers, f"Content-Length: {len(body)}\r\n") + body)
        self.status = status  # only once written: a client that left gets no status

    def start(self, status: int, reason: str, headers: Iterable[tuple[str, str]], length: int | None) -> None:
        """Begin a streamed response. `length` None means the length is unknown: chunked
        for HTTP/1.1 clients, delimited by close for HTTP/1.0 ones. A HEAD, 204 or 304
        answer carries no body; `length` is then the one the upstream declared."""
        if status == 204:
            framing = ""
        elif self.method == "HEAD" or status == 304:
            framing = "" if length is None else f"Content-Length: {length}\r\n"
        elif length is not None:
            framing = f"Content-Length: {length}\r\n"
        elif self.version >= (1, 1):
            framing, self._chunked = "Transfer-Encoding: chunked\r\n", True
        else:
            framing, self.keep_alive = "", False
        self._conn.write(self._head(status, reason, headers, framing))
        self.status = status

    async def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._chunked:
            self._conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            self._conn.write(chunk)
        await self._conn.drain()

    async def write_eof(self) -> None:
        if self._chunked:
            self._conn.write(_LAST_CHUNK)
        await self._conn.drain()

    def reset(self) -> None:
        """Abort the client connection with a TCP reset, not a FIN: for a body delimited
        by close, a clean close would make a truncated body look complete."""
        self._conn.reset()

    def switch_protocols(
        self, reason: str, headers: Iterable[tuple[str, str]], tunnel: Tunnel
    ) -> tuple[asyncio.Transport, bytes, bool]:
        """Write a `101` to WebSocket and hand the connection to `tunnel`: the transport,
        the bytes the client sent after its handshake, and whether it half-closed since.
        No HTTP is read on it again; the tunnel calls `tunnel_closed` when it closes."""
        lines = [f"HTTP/1.1 101 {reason}\r\n"]
        for name, value in (*headers, ("Connection", "Upgrade"), ("Upgrade", "websocket")):
            if _CONTROL.search(value) is not None:
                raise UnsendableHeaderError(name)
            lines.append(f"{name}: {value}\r\n")
        lines.append(f"Date: {_http_date()}\r\n\r\n")
        self._conn.write("".join(lines).encode("utf-8", "surrogateescape"))
        self.status = 101
        return self._conn.detach(tunnel)

    def tunnel_closed(self, exc: BaseException | None) -> None:
        """The tunnel's transport closed: the connection's end, as if it had never left."""
        self._conn.connection_lost(exc)


class ClientConnection(BaseProtocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, server: Server) -> None:
        self._server = server
        server.open += 1  # until connection_lost (or `uncount`, when it never starts)
        self._counted = True
        limits = server.limits
        parser = HttpRequestParser(
            self,
            server.loop,
            _READ_LIMIT,
            # The largest line the framer (framing.py) lets through, an Authorization
            # line; it holds every other line to its own, smaller limit. Both, since
            # the pure-Python parser bounds an unfinished header line by the first.
            max_line_size=limits.max_authorization_line,
            max_field_size=limits.max_authorization_line,
            # Never reached (the framer counts fields and trailers first), so that the
            # two aiohttp parsers, which count differently, never decide.
            max_headers=limits.max_headers + limits.max_trailers + 4,
            payload_exception=ClientBodyError,
            auto_decompress=False,
            # One message per feed_data() call (see `_feed`): both parsers lose every
            # message they parsed in a call that raises. Our own queue holds _QUEUE.
            max_msg_queue_size=1,
        )
        self._requests = RequestGuard(parser, self, limits)
        # BaseProtocol pauses this parser along with the transport (request body flow control).
        super().__init__(server.loop, cast(Any, self._requests))
        self._queue: deque[_Queued] = deque()
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None  # set while the task waits for a request
        self._handling = False
        self._idle: asyncio.TimerHandle | None = None
        self._idle_deadline: float | None = None
        self._closing = False  # close after the response being written
        self._draining = False  # the server is stopping: answer one more request, then close
        self._broken = False  # parse no more: a parse error or an Upgrade request was queued last
        self._lingering = False  # reading only to discard an unwanted upload
        self._linger_timer: asyncio.TimerHandle | None = None
        self._eof = False  # the client half-closed: answer what it sent, then close
        self._current: StreamReader | None = None
        self._out: list[bytes] = []  # written, not yet handed to the transport (coalesce.py)
        self._tunnel: Tunnel | None = None  # after a protocol switch: owns the transport
        self.peer: str | None = None
        self.scheme = "http"  # https once a TLS handshake made the connection
        self._subject: str | None = None
        self._subject_read = False
        self.upstreams: Closeable | None = None

    # -- transport events --------------------------------------------------------------

    def eof_received(self) -> bool:
        """The client half-closed: it sends nothing more, but may still read (RFC 9112
        §9.6). Requests it sent are answered, in order, then the connection closes.
        True keeps the transport half-open; asyncio and uvloop close it on a falsy
        return. Idempotent.

        Over TLS the client's close_notify (or its FIN) closes the transport whatever
        this returns (asyncio and uvloop ignore True, with a warning per connection):
        what is answered by then is sent, the rest is cut as if the client had left."""
        self._eof = True
        if self.scheme == "https":
            self.flush_output()
            return False
        if not self._lingering and self.transport is not None:
            body = self._last_body(())
            if body is not None and body.exception() is None:
                # No byte more will come: the upload being read can never be complete.
                self._enqueue(self._fail_body((), HTTPBadRequest.status_code, BodyCutShortError(), accept=True))
            if self._handling or self._queue:
                return True
        # Closing now: the transport sends what it holds, and an answer still queued
        # for coalescing (coalesce.py) must be in it.
        self.flush_output()
        return False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # also sets TCP_NODELAY
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        if transport.get_extra_info("ssl_object") is not None:
            self.scheme = "https"
        self._server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._out = []
        self._server.connections.discard(self)
        self.uncount()
        self.transport = None
        if self.upstreams is not None:
            self.upstreams.close()
            self.upstreams = None
        self._closing = True
        self._disarm_idle()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        # The linger timer holds this connection (its parser, the head it refused, up
        # to `max_head_bytes`) for _LINGER seconds: a client that leaves at once, as a
        # refused one does, must not leave that behind, or memory grows with the rate
        # of refusals rather than with the open connections (SECURITY.md's bound).
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        # An upload still being relayed must fail, not hang or look complete.
        for _, payload in self._queue:
            payload.set_exception(ClientLeftError())
        self._server.coalescer.busy -= len(self._queue)
        current = self._current
        if current is not None and not current.is_eof() and current.exception() is None:
            current.set_exception(ClientLeftError())
        self._queue.clear()
        with contextlib.suppress(Exception):
            self._requests.feed_eof()
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set_result(None)  # the task sees the transport gone and ends

    def client_subject(self) -> str | None:
        """Read once per connection, when a request first asks: one certificate per
        connection (renegotiation is off in OpenSSL's TLS 1.2 server by default here,
        and TLS 1.3 has none)."""
        if not self._subject_read and self.transport is not None:
            # Marked read only once it is: a subject that cannot be parsed raises here
            # on every request of the connection (each fails closed), never once and
            # then reads as "no certificate" (found by review).
            self._subject = client_subject(self.transport.get_extra_info("ssl_object"))
            self._subject_read = True
        return self._subject

    def uncount(self) -> None:
        """No longer an open connection (idempotent): it closed, or never started."""
        if self._counted:
            self._counted = False
            self._server.open -= 1

    def _open_body(self) -> StreamReader | None:
        """The body the parser is still filling (always the last request parsed), if any."""
        body = self._last_body(())
        return body if body is not None and body.exception() is None else None

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self._closing or self._broken:
            # No new request will be read; but the body of one already taken (an
            # Upgrade request's, or an upload in progress while we drain) still is.
            if self._open_body() is None:
                if self._broken:
                    if self._requests.switched:
                        # After an Upgrade request: kept (one read at most, reading
                        # stops here) for a WebSocket relay, never parsed.
                        self._requests.opaque += data
                    self._pause_transport_reading()
                return
            self._feed(data, accept=False)
            return
        self._feed(data, accept=True)

    def _last_body(self, messages: Sequence[_Queued]) -> StreamReader | None:
        """The body of the last request parsed, if it is not complete (being read, or
        failed): only the last request's body can be open."""
        if messages:
            payload: StreamReader | None = messages[-1][1]
        elif self._queue:
            payload = self._queue[-1][1]
        else:
            payload = self._current
        if payload is None or payload is EMPTY_PAYLOAD or payload.is_eof():
            return None
        return payload

    def _feed(self, data: bytes, accept: bool) -> None:
        parser = self._requests
        messages: list[_Queued] = []
        try:
            # One message per call (max_msg_queue_size=1, the count reset before each
            # call), then the rest of the segment: a parse error in a later request
            # can then never take the requests before it down with it.
            parser.message_consumed()
            open_body = accept and self._open_body() is not None
            try:
                parsed, _, _ = parser.feed_data(data)
            except HttpProcessingError as exc:
                # The framer (guards.py) refused bytes further on: the requests before
                # them were parsed first, and are still served (the parser may hold
                # more of them; the loop below takes those too, then re-raises).
                parsed = getattr(exc, "parsed", None) or []
                if not parsed:
                    raise
                pending: HttpProcessingError | None = exc
            else:
                pending = None
                if not parsed and open_body and self._open_body() is None:
                    # A body ended in this read: llhttp counts that message then and
                    # stops, holding a request that followed it in the same read; ask
                    # for it (found by review: that request was never answered).
                    parser.message_consumed()
                    parsed, _, _ = parser.feed_data(b"")
            while parsed and accept:
                for message, payload in parsed:
                    messages.append((message, payload))
                    # The flag on the message, not the parser's return value: the two
                    # aiohttp parsers disagree on the latter (the pure-Python one goes
                    # on parsing the bytes after an Upgrade request as HTTP).
                    if message.upgrade:
                        # We never switch protocols (Upgrade is hop-by-hop and dropped):
                        # answer it as plain HTTP, then close; no byte after it is HTTP.
                        self._broken = True
                        break
                last = messages[-1][1]
                if self._broken or (last is not EMPTY_PAYLOAD and not last.is_eof()):
                    break  # its body goes on in later segments (or failed: below)
                if len(self._queue) + len(messages) >= _QUEUE:
                    break  # the rest waits in the parser; reading pauses in _enqueue
                parser.message_consumed()
                parsed, _, _ = parser.feed_data(b"")
            if pending is not None:
                raise pending
        except HttpProcessingError as exc:
            code = exc.code if 400 <= exc.code < 500 else HTTPBadRequest.status_code
            log.info("unparseable request status=%d error=%s", code, type(exc).__name__)
            messages = self._fail_body(messages, code, ClientBodyError(), accept)
        else:
            body = self._last_body(messages)
            failed = body.exception() if body is not None else None
            if isinstance(failed, ClientBodyError):
                # The parser failed the body without raising (the pure-Python one does,
                # for some framing errors, and then reads on as if it had ended): the
                # same as a parse error, whichever parser runs.
                log.info("unparseable request status=400 error=%s", type(failed).__name__)
                messages = self._fail_body(messages, HTTPBadRequest.status_code, failed, accept)
        self._enqueue(messages)

    def _fail_body(self, messages: Sequence[_Queued], code: int, error: ClientBodyError, accept: bool) -> list[_Queued]:
        """The stream cannot be read on (a parse error, or a body that can never be
        complete): read no more. Requests parsed before the failure keep their turn.
        A failure between requests is answered `code` in its turn; one inside a body
        fails that request as the client's error, in its handler (which refuses it,
        logged and counted, if it has not reached the upstream yet). Returns
        `messages` amended."""
        out = list(messages)
        self._broken = True  # the parser's place in the stream is lost
        body = self._last_body(out)
        if body is None:
            # Between requests: answered in turn, after those already queued (only
            # while new requests are still taken).
            if accept:
                out.append((code, EMPTY_PAYLOAD))
            return out
        if body.exception() is None:
            body.set_exception(error)
        if not out and not self._queue:
            self._closing = True  # in progress: its handler fails; close after it
        return out

    def _enqueue(self, messages: list[_Queued]) -> None:
        if not messages:
            return
        self._disarm_idle()
        self._queue.extend(messages)
        # Every request from parsed to answered counts as busy (coalesce.py).
        self._server.coalescer.busy += len(messages)
        if len(self._queue) >= _QUEUE:
            self._pause_reading_for_buffer()
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set_result(None)
        elif self._task is None:
            self._task = self._loop.create_task(self._serve())

    # -- writing -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue `data`; it reaches the transport at the latest when the loop's current
        batch ends (coalesce.py), earlier when we drain or close."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client disconnected")
        out = self._out
        out.append(data)
        if len(out) == 1:
            coalescer = self._server.coalescer
            if coalescer.worthwhile:
                coalescer.add(self)
            else:
                self.flush_output()

    def flush_output(self) -> None:
        out = self._out
        if not out:
            return
        self._out = []
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the client is gone, and with it the answer
        if len(out) == 1:
            transport.write(out[0])
        else:
            transport.writelines(out)

    async def drain(self) -> None:
        """Wait until the client takes what we wrote; a client that reads nothing for
        `send_timeout` is cut off (nginx's send_timeout), so it cannot pin a handler
        and an upstream connection forever."""
        self.flush_output()
        if self.transport is None:
            raise ConnectionResetError("client disconnected")
        if self._paused:
            try:
                async with asyncio.timeout(self._server.send_timeout):
                    await self._drain_helper()
            except TimeoutError:
                self.reset()
                raise ConnectionResetError("client stopped reading") from None

    def detach(self, tunnel: Tunnel) -> tuple[asyncio.Transport, bytes, bool]:
        """Hand the transport over (see `Request.switch_protocols`)."""
        self.flush_output()
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client disconnected")
        self._tunnel = tunnel
        # A tunnel writes straight to its transports: for the coalescer it is no request
        # being answered, whose writes others' could join (coalesce.py).
        self._server.coalescer.busy -= 1
        early = bytes(self._requests.opaque)
        self._requests.opaque.clear()
        return transport, early, self._eof

    def reset(self) -> None:
        if self._tunnel is not None:
            self._tunnel.abort()
            return
        self._out = []  # an abort: what was not sent never will be
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    # -- the request loop --------------------------------------------------------------

    async def _serve(self) -> None:
        """The connection's one task, for its whole life: waking it for the next
        request costs less than starting a task per request."""
        try:
            while self.transport is not None:
                if self._closing or self.transport.is_closing():
                    # Draining (or closed under us while we waited to write): take no
                    # new request, or it could run upstream with no way to answer it.
                    self._close()
                    return
                if not self._queue:
                    if self._broken:
                        return
                    if self._eof:
                        self._close()  # half-closed, and every request answered
                        return
                    self._arm_idle()
                    self._waiter = self._loop.create_future()
                    await self._waiter  # data_received or connection_lost
                    continue
                message, payload = self._queue.popleft()
                coalescer = self._server.coalescer
                try:
                    self._requests.answered()
                    if self._buffer_paused and len(self._queue) < _QUEUE // 2:
                        self._resume_reading_for_buffer()
                        self.data_received(b"")  # parse what was held back
                    if isinstance(message, int):
                        self._refuse_unparseable(message)
                        return
                    self._current = payload
                    request = Request(self, message, payload)
                    self._handling = True
                    try:
                        await self._server.handler(request)
                    finally:
                        self._handling = False
                        self._current = None
                finally:
                    if self._tunnel is None:  # (a tunnel stopped counting when it began)
                        coalescer.busy -= 1  # answered (or failed): no longer queued or handled
                if not request.started or not request.keep_alive or self.closing or (self._broken and not self._queue):
                    self._finish(payload)
                    return
                if self._queue:
                    self.flush_output()  # so that back-pressure shows before the next one
                if self._paused:
                    # Write back-pressure across pipelined requests: do not answer the
                    # next one while the client has not taken this answer.
                    await self.drain()
                elif self._queue:
                    # A refusal never suspends: let other connections run between
                    # pipelined requests, or one client could hold the loop.
                    await asyncio.sleep(0)
        except ConnectionError:
            self._close()
        except Exception as exc:
            # The handler fails closed itself; this is the last line for our own bugs.
            # The type and frames only: exception text can quote request data.
            log.error("connection error %s", bug_report(exc))
            self.reset()
        finally:
            self._task = None
            self._waiter = None

    def _refuse_unparseable(self, status: int) -> None:
        extra = ""
        try:
            extra = self._server.on_unparseable(status, self.peer)
        except Exception as exc:  # the log and metrics never stand between us and the answer
            log.error("unparseable-request hook failed %s", bug_report(exc))
        with contextlib.suppress(ConnectionError):
            self.write(listener_refusal(status, Reason.BAD_REQUEST, extra))
        self._linger()

    def _finish(self, payload: StreamReader) -> None:
        """Close after this response, reading (and dropping) an unread upload for a
        while first: closing with unread bytes would reset the connection, and the
        client could lose the answer we just wrote."""
        self._closing = True
        self.flush_output()
        transport = self.transport
        if transport is None:
            return
        if not self._broken and (payload is EMPTY_PAYLOAD or payload.is_eof()):
            transport.close()
            return
        # Unread bytes: an upload, or whatever followed a request we stopped reading
        # after (Upgrade, CONNECT, a parse error).
        self._linger()

    def _linger(self) -> None:
        self._closing = True
        self.flush_output()
        transport = self.transport
        if transport is None or self._lingering:
            return
        if self._eof:
            transport.close()  # the client sends nothing more: nothing to wait for
            return
        self._lingering = True
        if transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()
        self._resume_transport_reading()
        self._linger_timer = self._loop.call_later(_LINGER, self._close)

    def _close(self) -> None:
        self._closing = True
        self.flush_output()
        if self.transport is not None:
            self.transport.close()

    # -- idle timeout ------------------------------------------------------------------

    # Lazy, like the upstream read timer: arming moves the deadline, and the one
    # scheduled handle re-arms itself when it fires early.
    def _arm_idle(self) -> None:
        self._idle_deadline = self._loop.time() + self._server.keepalive_timeout
        if self._idle is None:
            self._idle = self._loop.call_at(self._idle_deadline, self._on_idle)

    def _disarm_idle(self) -> None:
        self._idle_deadline = None

    def _on_idle(self) -> None:
        self._idle = None
        deadline = self._idle_deadline
        if deadline is None or self.transport is None:
            return
        if self._loop.time() < deadline:
            self._idle = self._loop.call_at(deadline, self._on_idle)
        elif not self._handling:
            self._close()

    @property
    def busy(self) -> bool:
        return self._handling

    @property
    def idle(self) -> bool:
        """Waiting for the client's next request (its idle timer runs)."""
        return not self._handling and self._idle_deadline is not None

    @property
    def closing(self) -> bool:
        """No request follows the response being written: it says `Connection: close`."""
        return self._closing or self._draining or (self._eof and not self._queue)

    def close_when_done(self, idle_grace: float) -> None:
        """Close after the response in progress, or after the next one.

        An idle connection is closed only once it has been idle for `idle_grace`: a
        client that is using its connection may be sending its next request right now,
        and closing under it loses that request (RFC 9112 §9.6 lets it retry only if it
        is idempotent). Until then the next request is answered with
        `Connection: close`, as HAProxy's `idle-close-on-response` does."""
        if self._tunnel is not None:
            self._tunnel.shutdown()
            return
        if self._handling:
            self._closing = True
            return
        since = self._idle_deadline
        if (
            self.idle
            and since is not None
            and self._loop.time() - (since - self._server.keepalive_timeout) >= idle_grace
        ):
            self._close()
        else:
            self._draining = True


def _nothing_unparseable(status: int, peer: str | None) -> str:
    return ""


def _nothing() -> None:
    pass


# How long a refused connection is read (and dropped) before it is closed.
_LINGER = 1.0


class _Overloaded(asyncio.Protocol):
    """A connection past `max_connections`: 503, then a lingering close.

    Accepted and answered rather than left in the backlog: a client (or a load
    balancer) told 503 retries elsewhere at once, where one left waiting would hold
    the connection until its own timeout; and asyncio has no way to pause `accept`.
    The close lingers (our side shut for writing, what the client sends read and
    dropped, for at most `_LINGER` seconds): closed at once, a request arriving after
    the close makes the kernel reset the connection, and the client loses the 503
    (under uvloop every time)."""

    def __init__(self, server: Server) -> None:
        self._server = server
        server.open += 1  # until connection_lost (or `uncount`, when it never starts)
        self._counted = True
        self._timer: asyncio.TimerHandle | None = None

    def uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._server.open -= 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance assert: uvloop's transports are not asyncio's classes
        # (found by review: the assert failed under uvloop, nothing was closed, and the
        # count of open connections never came down: every later connection was lost).
        writer = cast(asyncio.WriteTransport, transport)
        try:
            writer.write(listener_refusal(503, Reason.OVERLOADED, "Retry-After: 1\r\n"))
            if writer.can_write_eof():
                writer.write_eof()
                self._timer = self._server.loop.call_later(_LINGER, transport.close)
                return
        except Exception:
            log.debug("overloaded: the refusal could not be written")
        transport.close()

    def data_received(self, data: bytes) -> None:
        pass  # dropped: this connection is refused

    def eof_received(self) -> bool:
        return False  # the client is done too: close now

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.uncount()


class Server:
    """Protocol factory plus the set of live connections, for a draining shutdown."""

    def __init__(
        self,
        handler: Handler,
        loop: asyncio.AbstractEventLoop,
        limits: Limits,
        keepalive_timeout: float = 75.0,
        send_timeout: float = 60.0,
        coalescer: Coalescer | None = None,
    ) -> None:
        self.handler = handler
        self.loop = loop
        self.limits = limits
        self.keepalive_timeout = keepalive_timeout
        self.send_timeout = send_timeout
        self.connections: set[ClientConnection] = set()
        # Accepted and not yet closed, counted from the protocol's creation: `connections`
        # fills one loop iteration later, and asyncio accepts a whole backlog at once.
        self.open = 0
        self.refused = 0  # connections answered 503 for being past `max_connections`
        self.on_refused: Callable[[], None] = _nothing  # the metric (app.py)
        # A request refused before it was parsed whole (400, 414, 431): (status, peer),
        # for the access log and the metrics (app.py), which only the handler knows. It
        # gives the header lines the refusal carries (the request ID the log line names).
        self.on_unparseable: Callable[[int, str | None], str] = _nothing_unparseable
        self._refusal_logged = -60.0
        self.coalescer = coalescer or Coalescer()

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.limits.max_connections:
            self.refused += 1
            self.on_refused()
            now = self.loop.time()
            if now - self._refusal_logged >= 10.0:  # a flood of refusals is one log line
                self._refusal_logged = now
                log.warning(
                    "max_connections (%d) reached: new connections get 503 (%d so far)",
                    self.limits.max_connections,
                    self.refused,
                )
            return _Overloaded(self)
        return ClientConnection(self)

    def full(self) -> bool:
        """At `max_connections`: a TLS connection is then closed before its handshake
        (counted as refused), since a 503 over TLS would cost a whole handshake, and a
        client that never sends its ClientHello would hold a descriptor meanwhile that
        no limit counts."""
        if self.open < self.limits.max_connections:
            return False
        self.refused += 1
        self.on_refused()
        return True

    def unstarted(self, protocol: asyncio.Protocol) -> None:
        """`protocol`, made here, will never hear of its connection (its TLS handshake
        failed): what it counted is uncounted."""
        if isinstance(protocol, ClientConnection | _Overloaded):
            protocol.uncount()

    async def shutdown(self, grace: float, idle_grace: float = DRAIN_IDLE) -> None:
        """Answer what is in progress and close; give it all `grace` seconds, then cut.
        An idle connection is closed once idle for `idle_grace` (ClientConnection.close_when_done)."""
        deadline = self.loop.time() + grace
        while True:
            for conn in list(self.connections):
                conn.close_when_done(idle_grace)
            if not self.connections or self.loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            # Cut what is still answering (a reset, so a truncated body never looks
            # whole); close what waits for a request that never came.
            if conn.idle:
                conn.close_when_done(0.0)
            else:
                conn.reset()
