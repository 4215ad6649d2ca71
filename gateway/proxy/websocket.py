"""The WebSocket relay: after the upstream's 101, a byte pump between two transports.

Bytes are relayed as they come, never buffered beyond the transports' own write
buffers: when one side's write buffer passes `HIGH_WATER`, the other side stops being
read until it drains below `LOW_WATER` (asyncio's pause_writing/resume_writing turned
into pause_reading/resume_reading of the peer). Payloads are never parsed; a small
scanner follows frame headers in each direction (RFC 6455 §5.2), so that the gateway can
end the connection itself with a Close frame at a frame boundary: when the token expires
or is revoked (1008), when a reloaded policy no longer admits it (1008, see `Handshake`),
at the idle timeout, when the server drains and when a reload moves its route to another
upstream (1001), and when a side breaks the framing the gateway reads (1002: a client
frame without the MASK bit, a server frame with it, RFC 6455 §5.1; a 64-bit length with
its top bit set). The frame that breaks it is not relayed: a frame header is passed on
only once it is whole.

Reading frame headers costs CPU per frame, so the client's frames are metered: each
connection has a budget of `client_frame_rate` frames a second (wsbudget.py). A client
past it is not read until the budget refills; what it already sent waits, in order, and
is relayed as the budget allows. The upstream is the operator's and is not metered.

How the connection ends (`END_REASONS`, the access log's `reason`):
- one side closes its TCP connection: the other is closed too, after what it was sent;
- one side half-closes (FIN): the FIN is passed on, and the other direction goes on
  until that side closes too (or the idle timeout);
- the gateway ends it: a Close frame to each side (masked towards the upstream, RFC 6455
  §5.3), at a frame boundary. A side that is mid-frame gets the rest of that frame
  first, then the Close; nothing more is relayed. Each side's TCP connection is closed
  once it answers with its own Close (or half-closes), at the latest `CLOSE_GRACE` later.
  A side that broke the framing is closed right after its Close (RFC 6455 §7.1.7): what
  it sends next cannot be read as frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.auth.lifetime import RevokedIds, TokenLifetime
from gateway.errors import bug_report
from gateway.proxy.wsbudget import FrameBudget
from gateway.proxy.wsframe import UNLIMITED, FrameScanner, close_frame

log = logging.getLogger("gateway.proxy")

# A side's write buffer at which the other side stops being read, and where it resumes.
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024
# After the gateway's Close frames: how long the sides have to close before a cut.
CLOSE_GRACE = 2.0
# How often open connections are checked against the revocation lists (which are re-read
# about every second): a revoked token's connection ends within about two seconds.
REVOCATION_SWEEP = 1.0

END_REASONS = (
    "client_closed",
    "upstream_closed",
    "idle",
    "token_expired",
    "revoked",
    "policy_changed",  # a reload's policy refuses its handshake now (1008)
    "upstream_changed",  # a reload sends its handshake to another upstream now (1001)
    "shutdown",
    "protocol_error",  # a side broke the framing (1002)
    "error",
)
# RFC 6455 §7.4.1
POLICY_VIOLATION = 1008
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002


@dataclass(frozen=True, slots=True, repr=False)
class Handshake:
    """What a relay's handshake asked for, kept so that a reload can authorize it again
    as if it arrived now: the method, Host and canonical path the route table matched,
    the query and `Authorization` values the token came from, the client certificate's
    subject, when it was admitted, and the upstream it was sent to (origin and path).

    Holds the bearer token: never logged (no repr)."""

    method: str
    host: str
    path: str
    query: str
    authorization: tuple[str, ...]
    client_subject: str | None
    admitted_at: float
    upstream: tuple[str, str, int, str]

    def __repr__(self) -> str:
        return f"Handshake({self.method} {self.path})"


class _Side(asyncio.Protocol):
    """One of the relay's two connections."""

    def __init__(
        self, relay: Relay, name: str, transport: asyncio.Transport, masked: bool, budget: FrameBudget | None
    ) -> None:
        self.relay = relay
        self.name = name  # "client" or "upstream"
        self.transport = transport
        self.masked = masked  # frames we write to this side must be masked (it is the server)
        # Frames this side sends us, towards the other: masked if and only if we do not
        # mask ours (it is the client), RFC 6455 §5.1.
        self.inbound = FrameScanner(masked=not masked)
        self.budget = budget  # the frames it may send (None: unmetered)
        # Bytes it sent that are not relayed yet, from `held_at`: frames over its budget
        # (then `refill` is set and it is not read), or a frame header not yet whole.
        self.held = b""
        self.held_at = 0
        self.refill: asyncio.TimerHandle | None = None  # when its budget allows more
        self.eof_deferred = False  # it half-closed after frames still held
        self.peer: _Side = self
        self.received = 0
        self.eof = False  # it half-closed
        self.lost = False
        self.close_sent = False  # our Close frame is written to it
        self.close_pending = False  # our Close waits for the frame being relayed to it to end
        self.close_code = GOING_AWAY
        self.eof_sent = False  # we passed the other side's half-close on to it
        self.write_paused = False  # its write buffer is past HIGH_WATER: the peer is not read

    def data_received(self, data: bytes) -> None:
        self.relay.on_data(self, data)

    def eof_received(self) -> bool:
        self.relay.on_eof(self)
        # Keep the other direction open (the relay closes); a TLS transport cannot, and
        # logs a warning per close for a True (found by review).
        return self.transport.get_extra_info("ssl_object") is None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.relay.on_lost(self, exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        with contextlib.suppress(RuntimeError, AttributeError):
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.relay.resume_reading(self.peer)  # unless its budget holds it

    @property
    def writable(self) -> bool:
        return not self.lost and not self.eof_sent and not self.transport.is_closing()


class Relay:
    """One upgraded connection: client and upstream transports, from the 101 to the end.

    `run()` relays until both sides are closed and returns why it ended."""

    def __init__(
        self,
        registry: WebSockets,
        idle_timeout: float,
        lifetime: TokenLifetime | None,
        on_client_lost: Callable[[BaseException | None], None],
        handshake: Handshake | None = None,
        *,
        client_frame_rate: int,
    ) -> None:
        self._registry = registry
        self.handshake = handshake  # None: not re-checked on reload (tests' bare relays)
        self._client_frame_rate = client_frame_rate
        self._loop = asyncio.get_running_loop()
        self._idle_timeout = idle_timeout
        self.lifetime = lifetime  # None: the token's end does not end the connection
        self._on_client_lost = on_client_lost
        self.client: _Side | None = None
        self.upstream: _Side | None = None
        self.reason: str | None = None
        self.closing = False
        self._done: asyncio.Future[str] = self._loop.create_future()
        self._timers: list[asyncio.TimerHandle] = []
        self._last = self._loop.time()
        self._idle: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def bytes_from_client(self) -> int:
        return self.client.received if self.client is not None else 0

    @property
    def bytes_from_upstream(self) -> int:
        return self.upstream.received if self.upstream is not None else 0

    # The client connection asks these of its tunnel (downstream.Tunnel).
    def shutdown(self) -> None:
        self.end("shutdown", GOING_AWAY)

    def abort(self) -> None:
        self._fail("shutdown")

    async def run(
        self,
        client: asyncio.Transport,
        client_early: bytes,
        client_eof: bool,
        upstream: asyncio.Transport,
        upstream_early: bytes,
    ) -> str:
        """Take both transports over and relay until both are closed. `client_eof`: the
        client half-closed already (before the 101)."""
        # One second's worth as the burst: a client sending at most the rate never waits.
        rate = self._client_frame_rate
        self.client = c = _Side(self, "client", client, masked=False, budget=FrameBudget(rate, rate, self._loop.time()))
        self.upstream = u = _Side(self, "upstream", upstream, masked=True, budget=None)
        c.peer, u.peer = u, c
        for side in (c, u):
            side.transport.set_protocol(side)
            side.transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        self._registry.opened(self)
        try:
            self._arm_idle()
            self._arm_expiry()
            if upstream_early:
                self.on_data(u, upstream_early)
            if client_early:
                self.on_data(c, client_early)
            for side in (c, u):
                self.resume_reading(side)
            if client_eof:
                self.on_eof(c)
            return await asyncio.shield(self._done)
        finally:
            if not self._done.done():  # cancelled: cut both
                self._fail("error")
            self._registry.closed(self)

    # -- events ------------------------------------------------------------------------

    def on_data(self, side: _Side, data: bytes) -> None:
        side.received += len(data)
        self._last = self._loop.time()
        if side.held_at < len(side.held):
            data = side.held[side.held_at :] + data  # after what it sent before, in order
            side.held, side.held_at = b"", 0
        if side.refill is not None:
            # Not read while over budget, so not seen; but if it were, kept in order.
            side.held, side.held_at = data, 0
            return
        self._pump(side, data, 0)

    def resume_reading(self, side: _Side) -> None:
        """Read `side` again, if both its budget and its peer's write buffer allow it:
        back-pressure and the budget each pause it, and neither may undo the other."""
        if side.refill is None and not side.peer.write_paused and not side.lost and not side.transport.is_closing():
            with contextlib.suppress(RuntimeError, AttributeError):
                side.transport.resume_reading()

    def _pump(self, side: _Side, data: bytes, pos: int) -> None:
        """Relay what `side` sent, data[pos:], as far as its budget allows, and keep
        the rest in `side.held`."""
        try:
            self._relay_frames(side, data, pos)
        except Exception as exc:
            log.error("websocket relay error %s", bug_report(exc))
            self._fail("error")

    def _relay_frames(self, side: _Side, data: bytes, pos: int) -> None:
        scanner = side.inbound
        if scanner.violation is not None:
            return  # it broke the framing: nothing it sends is read as frames again
        peer = side.peer
        budget = side.budget
        allowed = UNLIMITED if budget is None else budget.available(self._loop.time())
        frames, closes = scanner.frames, scanner.closes
        if not self.closing:
            stop = scanner.scan(data, pos, allowed)
            if stop > pos and peer.writable:
                peer.transport.write(data if pos == 0 and stop == len(data) else data[pos:stop])
            if scanner.closes != closes and self.reason is None:
                self.reason = f"{side.name}_closed"  # it began the closing handshake
        else:
            # Ending: finish the frame in progress towards the peer, then its Close; drop
            # the rest (a side must send nothing after its Close, RFC 6455 §5.5.1), only
            # scanned for this side's own Close, its answer to ours.
            if peer.close_pending:
                start = pos
                pos = scanner.scan(data, pos, 0)
                if peer.writable:
                    peer.transport.write(data[start:pos])
                if scanner.at_boundary:
                    self._send_close(peer)
            stop = scanner.scan(data, pos, allowed)
            if scanner.closes != closes and side.close_sent and not side.lost:
                side.transport.close()  # its answer to our Close: the closing handshake is done
        taken = scanner.frames - frames
        if budget is not None:
            budget.spend(taken)
        if scanner.violation is not None:
            side.held, side.held_at = b"", 0
            self._protocol_error(side)
        elif stop == len(data):
            side.held, side.held_at = b"", 0
        elif taken < allowed:
            side.held, side.held_at = data[stop:], 0  # a frame header not yet whole
        else:
            # Over budget: hold the rest, unread, and stop reading it until the budget
            # allows more; its TCP window then fills and the client waits.
            side.held, side.held_at = data, stop
            assert budget is not None
            with contextlib.suppress(RuntimeError, AttributeError):
                side.transport.pause_reading()
            side.refill = self._loop.call_later(budget.wait(), self._refilled, side)

    def _refilled(self, side: _Side) -> None:
        side.refill = None
        data, pos = side.held, side.held_at
        side.held, side.held_at = b"", 0
        self._last = self._loop.time()  # bytes go on: not idle
        self._pump(side, data, pos)
        if side.refill is None:
            if side.eof_deferred:
                side.eof_deferred = False
                self.on_eof(side)
            self.resume_reading(side)

    def _protocol_error(self, side: _Side) -> None:
        """`side` broke the framing (RFC 6455 §5.1, §5.2): Close 1002 to both sides;
        the frame that broke it is not relayed."""
        log.info("websocket relay: the %s sent %s", side.name, side.inbound.violation)
        self.end("protocol_error", PROTOCOL_ERROR)
        if side.close_sent and not side.lost:
            side.transport.close()  # our Close went before this frame: it is failed now

    def on_eof(self, side: _Side) -> None:
        if side.eof:
            return
        if side.refill is not None:
            # Frames it sent before its FIN wait for its budget: pass the FIN on after them.
            side.eof_deferred = True
            return
        side.eof = True
        if self.reason is None:
            self.reason = f"{side.name}_closed"
        peer = side.peer
        if self.closing or peer.eof:
            side.transport.close()
            if peer.eof:
                peer.transport.close()
            return
        # Pass the half-close on (after what is buffered for the peer); the other
        # direction goes on until that side closes as well.
        if peer.lost:
            return
        if peer.writable and peer.transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                peer.transport.write_eof()
                peer.eof_sent = True
                return
        peer.transport.close()

    def on_lost(self, side: _Side, exc: BaseException | None) -> None:
        if self.reason is None:
            self.reason = f"{side.name}_closed"
        if side.name == "client":
            try:
                self._on_client_lost(exc)
            except Exception as err:  # the bookkeeping must not keep the upstream open
                log.error("websocket client bookkeeping failed %s", bug_report(err))
        peer = side.peer
        if not peer.lost:
            peer.transport.close()  # what it was sent goes out first
        if side.lost and peer.lost:
            self._finish()

    # -- ending ------------------------------------------------------------------------

    def end(self, reason: str, code: int) -> None:
        """End the connection with a Close frame `code` to each side (see module doc)."""
        if self.closing or self._done.done() or self.client is None or self.upstream is None:
            return
        if self.reason is None:
            self.reason = reason
        self.closing = True
        for dest in (self.client, self.upstream):
            if not dest.writable:
                continue
            dest.close_code = code
            if dest.peer.inbound.at_boundary:
                self._send_close(dest)
            else:
                # Back-pressure still holds: the rest of the frame is relayed only as
                # fast as `dest` takes it, and CLOSE_GRACE bounds the wait.
                dest.close_pending = True
        self._timers.append(self._loop.call_later(CLOSE_GRACE, self._fail, reason))

    def _send_close(self, dest: _Side) -> None:
        dest.close_pending = False
        if dest.writable:
            dest.transport.write(close_frame(dest.close_code, dest.masked))
            dest.close_sent = True
            # A side that broke the framing is failed (RFC 6455 §7.1.7): its answer
            # could not be read as frames, so it is not waited for.
            if dest.eof or dest.inbound.violation is not None:
                dest.transport.close()

    def _fail(self, reason: str) -> None:
        """Cut both sides now."""
        if self.reason is None:
            self.reason = reason
        for side in (self.client, self.upstream):
            if side is not None and not side.lost:
                side.transport.abort()

    def _finish(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for side in (self.client, self.upstream):
            if side is not None and side.refill is not None:
                side.refill.cancel()
                side.refill = None
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if not self._done.done():
            self._done.set_result(self.reason or "error")

    # -- a reload's settings ------------------------------------------------------------

    def adopt(self, idle_timeout: float, lifetime: TokenLifetime | None) -> None:
        """A reload admitted the connection again: its new route's token handling and
        the new idle timeout apply from now on (an `exp` already past ends it now)."""
        if self.closing or self._done.done():
            return
        self.lifetime = lifetime
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._arm_expiry()
        self._registry.watch(self)
        self._idle_timeout = idle_timeout
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._arm_idle()

    def _arm_expiry(self) -> None:
        lifetime = self.lifetime
        if lifetime is not None and lifetime.expires_at is not None:
            delay = max(0.0, lifetime.expires_at - time.time())
            self._expiry = self._loop.call_later(delay, self.end, "token_expired", POLICY_VIOLATION)

    # -- idle timeout (lazy, like the listener's: one handle re-armed when it fires early)

    def _arm_idle(self) -> None:
        if self._idle_timeout > 0:
            self._idle = self._loop.call_at(self._last + self._idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        if self._done.done() or self.closing:
            return
        due = self._last + self._idle_timeout
        if self._loop.time() < due:
            self._idle = self._loop.call_at(due, self._on_idle)
            return
        self.end("idle", GOING_AWAY)


class WebSockets:
    """The process's open WebSocket connections: the count under `limit`, the revocation
    sweep, the drain."""

    def __init__(self) -> None:
        self.open = 0  # reserved at the handshake, released when the connection ends
        self._relays: set[Relay] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        # The revocation lists in force, by provider: a reload replaces them (app.py),
        # and connections opened before it must see the new ones.
        self.revocations: Mapping[str, RevokedIds] = {}

    def reserve(self, limit: int) -> bool:
        if self.open >= limit:
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1

    def opened(self, relay: Relay) -> None:
        self._relays.add(relay)
        self.watch(relay)

    def watch(self, relay: Relay) -> None:
        """Start the revocation sweep if `relay`'s token can be revoked."""
        if self._sweeper is None and relay.lifetime is not None and relay.lifetime.revocations is not None:
            self._sweeper = asyncio.get_running_loop().call_later(REVOCATION_SWEEP, self._sweep)

    def closed(self, relay: Relay) -> None:
        self._relays.discard(relay)

    def relays(self) -> list[Relay]:
        """The open connections, as of now (a copy: ending one changes the set)."""
        return list(self._relays)

    def _sweep(self) -> None:
        self._sweeper = None
        watched = False
        for relay in list(self._relays):
            lifetime = relay.lifetime
            if lifetime is None or lifetime.revocations is None:
                continue
            if lifetime.revoked(self.revocations.get(lifetime.provider)):
                relay.end("revoked", POLICY_VIOLATION)
            else:
                watched = True
        if watched:
            self._sweeper = asyncio.get_running_loop().call_later(REVOCATION_SWEEP, self._sweep)

    def shutdown(self) -> None:
        for relay in list(self._relays):
            relay.shutdown()
