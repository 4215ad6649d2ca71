"""The one request handler: check, route, authenticate, forward, then log and count.

Knows nothing of listeners or signals. Its policy-derived state is one `Runtime` value
swapped whole on reload, so a request sees one policy from start to end.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth.cache import TokenCache
from gateway.auth.extract import extract_token
from gateway.auth.forward import IdentityHeaders, UnforwardableError, fold, render_claim
from gateway.auth.jws import parse_jws
from gateway.auth.lifetime import NO_TOKEN, TokenLifetime
from gateway.auth.requirement import Refused, TokenRequirement
from gateway.auth.verifier import Principal
from gateway.cors import POLICY_HEADERS, single
from gateway.errors import AUTH_REASONS, Reason, bug_report
from gateway.keys.keyset import KeySet
from gateway.keys.provider_keys import ProviderKeys
from gateway.obs.access import AccessLog, Exchange
from gateway.obs.metrics import PUBLISHED_JWKS, UNMATCHED, Metrics, RouteMetrics
from gateway.pathnorm import Rejected, normalize_target
from gateway.proxy.downstream import ClientBodyError, Request, UnsendableHeaderError, phrase
from gateway.proxy.headers import (
    ForwardedFor,
    RequestHeaderRules,
    connection_tokens,
    downstream_response_headers,
    upstream_request_headers,
)
from gateway.proxy.requestcheck import request_problem
from gateway.proxy.upstream import UpstreamError, UpstreamPool, UpstreamResponse, UpstreamSlot
from gateway.proxy.websocket import GOING_AWAY, POLICY_VIOLATION, Handshake, Relay, WebSockets
from gateway.proxy.wsframe import handshake_problem, is_websocket_upgrade, switched
from gateway.requestid import RequestIds, new_id
from gateway.routing import CompiledRoute, RouteTable, request_host

log = logging.getLogger("gateway.proxy")

SMALL_BODY = 64 * 1024
_CONTROL_IN_HEADER = "response header with a control character"
_JWKS_HEADERS = (("Content-Type", "application/jwk-set+json"), ("Cache-Control", "public, max-age=300"))
# A client that left before its response head could be written (nginx's convention).
CLIENT_CLOSED = 499
# Open WebSockets re-checked on reload between two turns of the loop.
_RECHECK_BATCH = 64


def send_refusal(
    request: Request,
    reason: Reason,
    realm: str = "gateway",
    scope: str = "",
    own: list[tuple[str, str]] | None = None,
) -> None:
    """The small JSON body every refusal carries, plus its RFC 6750 challenge, plus the
    gateway's `own` headers (request ID, CORS).

    Never echoes request data: the body is fixed per reason."""
    headers = refusal_headers(reason, realm, scope)
    request.send(reason.status, phrase(reason.status), (*headers, *own) if own else headers, reason.body)


@functools.lru_cache(maxsize=1024)
def refusal_headers(reason: Reason, realm: str, scope: str) -> tuple[tuple[str, str], ...]:
    """The headers of a refusal for `reason` (besides the gateway's own)."""
    # Every argument comes from the policy or the closed Reason set, never from a
    # request, so the cache stays small; a refusal flood formats nothing.
    headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
    challenge = reason.www_authenticate(realm, scope)
    if challenge is not None:
        headers.append(("WWW-Authenticate", challenge))
    if reason is Reason.KEYS_UNAVAILABLE:
        headers.append(("Retry-After", "5"))
    return tuple(headers)


def _identify(ex: Exchange, principal: Principal) -> None:
    """Who a verified token speaks for, for the access log."""
    sub = principal.claims.get("sub")
    ex.subject = sub if isinstance(sub, str) else None
    ex.provider = principal.provider


@dataclass(frozen=True, slots=True)
class HandlerSettings:
    """Process-wide values the handler reads; compiled from the policy."""

    forwarded: ForwardedFor
    identity: IdentityHeaders
    realm: str
    max_token_bytes: int
    upstream_keepalive: bool = True
    request_ids: RequestIds = field(default_factory=RequestIds)
    # The verified client certificate's subject goes upstream in this header (tls).
    client_subject_header: str | None = None
    websocket_idle_timeout: float = 60.0
    max_websockets: int = 1000
    # Frames per second each WebSocket client may send (its bucket holds one second's worth).
    websocket_client_frame_rate: int = 2000
    request_headers: RequestHeaderRules = field(init=False)
    # Upstream response headers the gateway writes itself, folded: on any route, and on
    # a cors route (whose policy headers are the gateway's alone).
    owned: frozenset[str] = field(init=False)
    owned_cors: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        owned = frozenset({fold(self.request_ids.header)})
        object.__setattr__(self, "request_headers", RequestHeaderRules(self.identity, owned))
        object.__setattr__(self, "owned", owned)
        object.__setattr__(self, "owned_cors", owned | POLICY_HEADERS)


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything policy-derived the handler uses, swapped atomically on reload."""

    table: RouteTable
    settings: HandlerSettings
    access_log: AccessLog
    route_metrics: tuple[RouteMetrics, ...]  # by route index
    unmatched: RouteMetrics
    published: Mapping[str, ProviderKeys]
    jwks_metrics: RouteMetrics
    cache: TokenCache

    @classmethod
    def build(
        cls,
        table: RouteTable,
        settings: HandlerSettings,
        access_log: AccessLog,
        metrics: Metrics,
        published: Mapping[str, ProviderKeys] | None = None,
        cache_entries: int = 10_000,
        cache_ttl: float = 300.0,
    ) -> Runtime:
        cache = TokenCache(cache_entries, cache_ttl, metrics.cache_hits, metrics.cache_misses)
        metrics.cache_entries.set_function(lambda: len(cache))
        unmatched = metrics.route(UNMATCHED)
        return cls(
            table=table,
            settings=settings,
            access_log=access_log,
            route_metrics=tuple(metrics.route(r.name) for r in table.routes),
            unmatched=unmatched,
            published=published or {},
            # Bound only where a key set is published, so no empty series appears.
            jwks_metrics=metrics.route(PUBLISHED_JWKS) if published else unmatched,
            cache=cache,
        )


class ProxyHandler:
    """The request handler of the proxy listener (`downstream.Server`)."""

    def __init__(self, runtime: Runtime, pool: UpstreamPool, metrics: Metrics) -> None:
        self.runtime = runtime
        self._pool = pool
        self._in_flight = metrics.in_flight
        self._jwks_cache: dict[str, tuple[KeySet, bytes]] = {}
        self.websockets = WebSockets()
        websockets = self.websockets
        metrics.websockets_open.set_function(lambda: websockets.open)

    async def __call__(self, request: Request) -> None:
        runtime = self.runtime
        ex = Exchange()
        self._in_flight(1)
        try:
            await self._handle(request, runtime, ex)
        except ClientBodyError as exc:
            # The request's own body failed (malformed, cut short, or its client left),
            # wherever that surfaced: the client's doing, never the upstream's. Said
            # apart by its type, set where the body is read (downstream.py).
            if request.client_gone:
                self._client_left(request, ex)
                raise
            self._bad_body(request, runtime, ex, exc)
        except ConnectionError as exc:
            if not request.client_gone:
                # Not the client: some other connection broke where we did not expect it.
                self._fail_closed(request, runtime, ex, exc)
                return
            # The client went away; nothing is left to answer. Not our failure.
            self._client_left(request, ex)
            raise
        except Exception as exc:
            self._fail_closed(request, runtime, ex, exc)
        finally:
            self._in_flight(-1)
            self._finish(request, runtime, ex, request.status or CLIENT_CLOSED)

    @staticmethod
    def _client_left(request: Request, ex: Exchange) -> None:
        if not request.started:
            ex.outcome, ex.reason = "error", "client_closed"

    def _bad_body(self, request: Request, runtime: Runtime, ex: Exchange, exc: ClientBodyError) -> None:
        """A 400 for a client that can still read; a cut connection if the upstream's
        answer had started (it cannot be finished: the upstream is mid-request)."""
        if not request.started:
            return self._refuse(request, runtime, ex, None, Reason.BAD_REQUEST, exc.detail)
        ex.outcome, ex.reason = "error", Reason.BAD_REQUEST.ident
        log.info("request body failed request_id=%s route=%s detail=%s", ex.request_id, ex.route, exc.detail)
        request.reset()

    @staticmethod
    def _fail_closed(request: Request, runtime: Runtime, ex: Exchange, exc: Exception) -> None:
        """A bug must never turn into a forwarded request or a traceback page."""
        log.error("internal error request_id=%s %s", ex.request_id, bug_report(exc))
        ex.outcome, ex.reason, ex.bytes_out = "error", Reason.INTERNAL.ident, len(Reason.INTERNAL.body)
        if request.started:
            request.reset()
        else:
            send_refusal(request, Reason.INTERNAL, own=[(runtime.settings.request_ids.header, ex.request_id)])

    def unparseable(self, status: int, peer: str | None) -> str:
        """A request the listener refused before it was parsed whole (400, 414, 431):
        counted and logged like any refusal, with its peer and nothing of its bytes.
        Gives the refusal's request-ID header line.

        Never the request's own ID: its head was not read whole, so nothing says whether
        a trusted proxy sent it. A new one still ties the client's answer to the log line."""
        runtime = self.runtime
        reason = Reason.BAD_REQUEST
        request_id = new_id()
        runtime.unmatched.request("-", status, "denied")
        if runtime.access_log.enabled:
            ex = Exchange(
                request_id=request_id, outcome="denied", reason=reason.ident, bytes_out=len(reason.body), client=peer
            )
            runtime.access_log.emit(ex, status, 0.0)
        return f"{runtime.settings.request_ids.header}: {request_id}\r\n"

    def _finish(self, request: Request, runtime: Runtime, ex: Exchange, status: int) -> None:
        total = time.perf_counter() - ex.started
        route: RouteMetrics = ex.metrics or runtime.unmatched
        if status == 101:
            # A WebSocket's whole life is not a request latency: counted, not timed.
            route.request(request.method, status, ex.outcome)
        else:
            route.answered(request.method, status, ex.outcome, total, ex.upstream_seconds)
        access_log = runtime.access_log
        if access_log.enabled:
            # The access log reads plain values, never a Request (obs imports no proxy type).
            headers = request.headers
            ex.client = request.remote
            ex.method = request.method
            ex.target = request.raw_path
            ex.bytes_in += getattr(request.content, "total_bytes", 0)  # a WebSocket's is set
            ex.referer = headers.get("Referer")
            ex.user_agent = headers.get("User-Agent")
            access_log.emit(ex, status, total)

    async def _handle(self, request: Request, runtime: Runtime, ex: Exchange) -> None:
        # `gateway explain` (explain/walk.py) takes these steps in this order, calling the
        # same functions: a step added or moved here goes there too (its tests compare
        # its verdicts with this handler's answers).
        settings = runtime.settings
        ids = settings.request_ids
        sent = request.headers.getall(ids.header, ())
        # Trust is looked up only when an ID was sent: most requests pay nothing for it.
        ex.request_id = ids.choose(sent, bool(sent) and settings.forwarded.is_trusted(request.remote))
        if request.version < (1, 0):
            # llhttp takes `GET /x` with no version (HTTP/0.9), the pure-Python parser
            # refuses it: refused here, so both parsers give one answer.
            return self._refuse(request, runtime, ex, None, Reason.BAD_REQUEST, "HTTP/0.9 request")
        problem = request_problem(request.method, request.headers)
        if problem is not None:
            return self._refuse(request, runtime, ex, None, *problem)
        normal = normalize_target(request.raw_path)
        if isinstance(normal, Rejected):
            return self._refuse(request, runtime, ex, None, Reason.BAD_PATH, normal.detail)
        path, query = normal
        if path in runtime.published and request.method in ("GET", "HEAD"):
            ex.route, ex.metrics = PUBLISHED_JWKS, runtime.jwks_metrics
            return self._jwks(request, runtime, ex, runtime.published[path])
        host = request.headers.get("Host", "")
        if request.method == "OPTIONS":
            # A CORS preflight asks about the request that would follow: it goes to the
            # route that request would take. Only a route with `cors` answers it (here,
            # never forwarded); otherwise it is an ordinary OPTIONS, routed and
            # authenticated below like any request.
            origin = single(request.headers.getall("Origin", ()))
            asked = single(request.headers.getall("Access-Control-Request-Method", ()))
            if origin is not None and asked is not None:
                route = runtime.table.match(asked, request_host(host), path)
                if route is not None and route.cors is not None:
                    return self._preflight(request, runtime, ex, route, origin, asked)
        route = runtime.table.match(request.method, request_host(host), path)
        if route is None:
            return self._refuse(request, runtime, ex, None, Reason.NO_ROUTE, "")
        ex.route, ex.metrics = route.name, runtime.route_metrics[route.index]
        if route.open and runtime.settings.client_subject_header is None and not route.websocket:
            # What `admit` would answer is known: nothing to check and no identity to add.
            # The most common request pays for no coroutine or record (issue 16).
            return await self._forward(request, runtime, ex, route, route.upstream_path(path), query, host, [])
        subject = request.client_subject
        admission = await admit(runtime, route, request.headers, query, subject)
        if admission.principal is not None:
            _identify(ex, admission.principal)  # a 403 is logged against whom it refused
        if admission.reason is not None:
            return self._refuse(request, runtime, ex, route, admission.reason, admission.detail)
        if route.websocket and is_websocket_upgrade(request.headers):
            upstream_path = route.upstream_path(path)
            handshake = Handshake(
                request.method,
                host,
                path,
                query,
                tuple(request.headers.getall("Authorization", ())),
                subject,
                time.time(),
                _upstream_target(route, upstream_path),
            )
            return await self._websocket(request, runtime, ex, route, upstream_path, host, admission, handshake)
        return await self._forward(
            request, runtime, ex, route, route.upstream_path(path), admission.query, host, admission.claims
        )

    async def reauthorize_websockets(self) -> None:
        """A policy was just committed: every open WebSocket is authorized again by it,
        as if its handshake arrived now (README "WebSockets"). Admitted: it takes the
        new route's token handling and the new idle timeout. Refused: Close 1008
        (`policy_changed`). Its route now sends handshakes to another upstream: Close
        1001 (`upstream_changed`), so the client reconnects there.

        Fails closed and never raises: a connection that could not be checked ends."""
        relays = self.websockets.relays()
        try:
            await self._reauthorize(relays)
        except Exception as exc:
            log.error("websocket re-check failed; ending every open connection %s", bug_report(exc))
            for relay in relays:
                relay.end("policy_changed", POLICY_VIOLATION)

    async def _reauthorize(self, relays: list[Relay]) -> None:
        for n, relay in enumerate(relays):
            if n and not n % _RECHECK_BATCH:
                # Up to 1000 signature checks in a row would hold the loop for tens of
                # milliseconds: the other connections get it between batches.
                await asyncio.sleep(0)
            handshake = relay.handshake
            if handshake is None or relay.closing:
                continue
            # The runtime in force for each one: a later commit may land between batches.
            runtime = self.runtime
            try:
                route, admission = readmit(runtime, handshake)
                if route is None or admission.reason is not None:
                    reason = admission.reason.ident if admission.reason is not None else "internal"
                    log.info("websocket refused by the reloaded policy path=%s reason=%s", handshake.path, reason)
                    relay.end("policy_changed", POLICY_VIOLATION)
                elif _moved(route, handshake):
                    relay.end("upstream_changed", GOING_AWAY)
                else:
                    relay.adopt(
                        runtime.settings.websocket_idle_timeout,
                        admission.lifetime if route.websocket_close_on_expiry else None,
                    )
            except Exception as exc:
                # Fail closed: a connection the new policy could not be asked about ends.
                log.error("websocket re-check failed %s", bug_report(exc))
                relay.end("policy_changed", POLICY_VIOLATION)

    def _jwks(self, request: Request, runtime: Runtime, ex: Exchange, keys: ProviderKeys) -> None:
        """The provider's public keys as a JWKS, so partners can verify tokens themselves."""
        snapshot = keys.snapshot
        cached = self._jwks_cache.get(keys.provider)
        if cached is None or cached[0] is not snapshot:
            doc = {"keys": [dict(k.jwk) for k in snapshot.all() if k.jwk is not None]}
            cached = (snapshot, json.dumps(doc, separators=(",", ":")).encode())
            self._jwks_cache[keys.provider] = cached
        ex.bytes_out = len(cached[1])
        request.send(200, "OK", (*_JWKS_HEADERS, (runtime.settings.request_ids.header, ex.request_id)), cached[1])

    def _preflight(
        self, request: Request, runtime: Runtime, ex: Exchange, route: CompiledRoute, origin: str, method: str
    ) -> None:
        """Answer a CORS preflight for `route` (which has `cors`): 204 with the grant, or
        403 with the reason and no CORS headers. No token is asked for (browsers never
        send credentials on a preflight) and nothing is forwarded."""
        assert route.cors is not None
        ex.route, ex.metrics = route.name, runtime.route_metrics[route.index]
        answer = route.cors.preflight(origin, method, request.headers.getall("Access-Control-Request-Headers", ()))
        if isinstance(answer, Reason):
            return self._refuse(request, runtime, ex, route, answer, "", cors=False)
        answer.append((runtime.settings.request_ids.header, ex.request_id))
        request.send(204, "No Content", answer, b"")

    def _refuse(
        self,
        request: Request,
        runtime: Runtime,
        ex: Exchange,
        route: CompiledRoute | None,
        reason: Reason,
        detail: str,
        cors: bool = True,
    ) -> None:
        ex.outcome = "error" if reason.status >= 500 else "denied"
        ex.reason = reason.ident
        ex.bytes_out = len(reason.body)
        if route is not None and reason in AUTH_REASONS:
            runtime.route_metrics[route.index].auth_failure(reason)
        if detail:
            # The access log has the reason; this is the operator's detail for it.
            # Never request data: the detail strings are fixed in code.
            log.info(
                "refused request_id=%s route=%s reason=%s detail=%s", ex.request_id, ex.route, reason.ident, detail
            )
        scope = challenge_scope(route)
        # On a cors route the browser app must be able to read a 401 (to refresh its
        # token) or a 502: the gateway's own answers carry the grant too.
        own = self._own_headers(request, runtime, ex, route if cors else None)
        send_refusal(request, reason, runtime.settings.realm, scope, own)

    @staticmethod
    def _own_headers(
        request: Request, runtime: Runtime, ex: Exchange, route: CompiledRoute | None
    ) -> list[tuple[str, str]]:
        """The headers the gateway adds to every response: the request ID, and on a
        cors route the CORS grant for the request's origin."""
        own = [(runtime.settings.request_ids.header, ex.request_id)]
        if route is not None and route.cors is not None:
            own += route.cors.actual(single(request.headers.getall("Origin", ())))
        return own

    async def _forward(
        self,
        request: Request,
        runtime: Runtime,
        ex: Exchange,
        route: CompiledRoute,
        path: str,
        query: str,
        host: str,
        claims: list[tuple[str, str]],
    ) -> None:
        settings = runtime.settings
        headers = upstream_headers(
            request.headers, request.remote, request.scheme, settings, ex.request_id, route, host, claims
        )
        failed = request.body_failure
        if failed is not None:
            # Known broken before anything reached the upstream (an upload that failed,
            # or was cut short by a half-close, while it waited its turn): refused.
            return self._bad_body(request, runtime, ex, failed)
        has_body = request.body_exists
        # The client's framing is kept: a declared length (even 0) goes upstream as a
        # length, so upstreams that refuse chunked uploads, or a bodiless POST without
        # one, stay happy; a chunked upload stays chunked.
        length = request.headers.get("Content-Length")
        if has_body and request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
            # The low-level server does not answer Expect; we do, only once the request
            # is allowed, so a refused upload is never read.
            request.send_continue()
        if request.client_gone:
            # The client left while we authenticated it (a key-set fetch, say): a
            # request nobody will read the answer to is not sent (nginx's default,
            # proxy_ignore_client_abort off).
            raise ConnectionResetError("client disconnected")
        slot: UpstreamSlot | None = None
        if settings.upstream_keepalive:
            # Kept-alive upstream connections belong to this client connection alone
            # (see UpstreamSlot: no client can plant a response for another).
            kept = request.upstreams
            slot = kept if isinstance(kept, UpstreamSlot) else self._pool.slot()
            if slot is not kept:
                request.upstreams = slot
        sent = time.perf_counter()
        try:
            upstream = await self._pool.request(
                request.method,
                route.upstream,
                f"{path}?{query}" if query else path,
                headers,
                request.content if has_body else None,
                length,
                route.timeout.connect,
                route.timeout.sock_read,
                slot,
            )
        except UpstreamError as exc:
            return self._refuse(request, runtime, ex, route, _upstream_reason(exc), exc.detail)
        ex.upstream_seconds = time.perf_counter() - sent
        # Not `async with`: two coroutine frames per request for what is one branch.
        try:
            await self._relay(request, runtime, ex, route, upstream)
        except BaseException:
            upstream.close()
            raise
        upstream.release()

    async def _websocket(
        self,
        request: Request,
        runtime: Runtime,
        ex: Exchange,
        route: CompiledRoute,
        path: str,
        host: str,
        admission: Admission,
        handshake: Handshake,
    ) -> None:
        """A WebSocket handshake on a route that takes them: forwarded on a connection
        of its own; on the upstream's 101, the relay (websocket.py) runs until the
        connection ends, and this request's log line is written then."""
        query = admission.query
        problem = handshake_problem(request.method, request.version, request.headers, request.body_exists)
        if problem is not None:
            return self._refuse(request, runtime, ex, route, Reason.BAD_REQUEST, problem)
        settings = runtime.settings
        websockets = self.websockets
        if not websockets.reserve(settings.max_websockets):
            return self._refuse(request, runtime, ex, route, Reason.WEBSOCKETS_FULL, "")
        try:
            headers = upstream_headers(
                request.headers, request.remote, request.scheme, settings, ex.request_id, route, host, admission.claims
            )
            headers += (("Connection", "Upgrade"), ("Upgrade", "websocket"))
            if request.client_gone:
                raise ConnectionResetError("client disconnected")  # as in _forward
            sent = time.perf_counter()
            try:
                upstream = await self._pool.request(
                    "GET",
                    route.upstream,
                    f"{path}?{query}" if query else path,
                    headers,
                    None,
                    None,
                    route.timeout.connect,
                    route.timeout.sock_read,
                    None,
                    upgrade=True,
                )
            except UpstreamError as exc:
                return self._refuse(request, runtime, ex, route, _upstream_reason(exc), exc.detail)
            ex.upstream_seconds = time.perf_counter() - sent
            if upstream.status != 101:
                # Refused upstream (or answered as plain HTTP): relayed as it is, and this
                # connection closes after it (no byte after the handshake is HTTP).
                request.keep_alive = False
                try:
                    await self._relay(request, runtime, ex, route, upstream)
                finally:
                    upstream.close()
                return
            if not switched(upstream.headers):
                upstream.close()
                return self._refuse(request, runtime, ex, route, Reason.UPSTREAM_ERROR, "101 without a WebSocket")
            await self._switch(request, runtime, ex, route, upstream, admission.lifetime, handshake)
        finally:
            websockets.release()

    async def _switch(
        self,
        request: Request,
        runtime: Runtime,
        ex: Exchange,
        route: CompiledRoute,
        upstream: UpstreamResponse,
        lifetime: TokenLifetime,
        handshake: Handshake,
    ) -> None:
        """The upstream said 101: the 101 to the client, then the relay, to the end."""
        settings = runtime.settings
        current = self.runtime
        try:
            if current is not runtime:
                # A reload was committed while the upstream answered: its re-check of open
                # connections could not see this one (not open yet), so it is checked here,
                # before the 101, and refused as a handshake is. Nothing from here to the
                # relay's registration suspends, so no later commit can slip in between.
                new_route, admission = readmit(current, handshake)
                if new_route is None or admission.reason is not None:
                    upstream.close()
                    reason = admission.reason or Reason.INTERNAL
                    return self._refuse(request, runtime, ex, route, reason, "the policy reloaded during the handshake")
                settings, route, lifetime = current.settings, new_route, admission.lifetime
            relay = Relay(
                self.websockets,
                settings.websocket_idle_timeout,
                lifetime if route.websocket_close_on_expiry else None,
                request.tunnel_closed,
                handshake,
                client_frame_rate=settings.websocket_client_frame_rate,
            )
        except BaseException:
            # The upstream has switched protocols: a failed check must not leave its
            # WebSocket open (the client gets its error; found by review).
            upstream.close()
            raise
        try:
            up_transport, up_early = upstream.detach()
        except ConnectionError:
            return self._refuse(request, runtime, ex, route, Reason.UPSTREAM_ERROR, "closed after its 101")
        try:
            settings = runtime.settings
            headers = downstream_response_headers(
                upstream.headers.items(),
                connection_tokens(upstream.headers),
                settings.owned_cors if route.cors is not None else settings.owned,
            )
            headers += self._own_headers(request, runtime, ex, route)
            client, early, eof = request.switch_protocols(upstream.reason, headers, relay)
        except UnsendableHeaderError:
            up_transport.close()
            return self._refuse(request, runtime, ex, route, Reason.UPSTREAM_ERROR, _CONTROL_IN_HEADER)
        except BaseException:
            up_transport.close()
            raise
        if current is not runtime and _moved(route, handshake):
            # Admitted, but the reloaded route sends its handshakes elsewhere: ended at
            # once, as the reload ends open ones (`reauthorize_websockets`).
            asyncio.get_running_loop().call_soon(relay.end, "upstream_changed", GOING_AWAY)
        # An open WebSocket is counted in gateway_websockets_open, not as a request in flight.
        self._in_flight(-1)
        try:
            ex.reason = await relay.run(client, early, eof, up_transport, up_early)
        finally:
            self._in_flight(1)
        ex.bytes_in, ex.bytes_out = relay.bytes_from_client, relay.bytes_from_upstream

    async def _relay(
        self,
        request: Request,
        runtime: Runtime,
        ex: Exchange,
        route: CompiledRoute,
        upstream: UpstreamResponse,
    ) -> None:
        settings = runtime.settings
        cors = route.cors is not None
        headers = downstream_response_headers(
            upstream.headers.items(),
            connection_tokens(upstream.headers),
            settings.owned_cors if cors else settings.owned,
        )
        headers += self._own_headers(request, runtime, ex, route)
        length = upstream.content_length
        if (
            length is not None
            and length <= SMALL_BODY
            and request.method != "HEAD"
            and upstream.status not in (204, 304)
        ):
            # A small body of declared length is read whole and sent with its headers in
            # one write: far fewer syscalls and objects than streaming it, and memory
            # stays bounded by SMALL_BODY per request. Larger bodies always stream.
            try:
                body = await upstream.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = Reason.UPSTREAM_TIMEOUT if isinstance(exc, TimeoutError) else Reason.UPSTREAM_ERROR
                return self._refuse(request, runtime, ex, route, reason, f"body: {type(exc).__name__}")
            ex.bytes_out = len(body)
            try:
                return request.send(upstream.status, upstream.reason, headers, body)
            except UnsendableHeaderError:
                return self._refuse(request, runtime, ex, route, Reason.UPSTREAM_ERROR, _CONTROL_IN_HEADER)
        try:
            request.start(upstream.status, upstream.reason, headers, length)
        except UnsendableHeaderError:
            upstream.close()
            return self._refuse(request, runtime, ex, route, Reason.UPSTREAM_ERROR, _CONTROL_IN_HEADER)
        try:
            async for chunk in upstream.content.iter_any():
                await request.write(chunk)
                ex.bytes_out += len(chunk)
            await request.write_eof()
        except ClientBodyError:
            raise  # the client's body failed, not the relay: the caller says so
        except Exception as exc:
            # Status and headers are gone already (or the client is): the only honest
            # signal left is to cut the client's connection, so that a truncated body
            # can never be taken as a whole one.
            ex.outcome, ex.reason = "error", "relay_failed"
            log.warning(
                "response relay failed request_id=%s route=%s error=%s", ex.request_id, route.name, type(exc).__name__
            )
            upstream.close()
            request.reset()


@dataclass(frozen=True, slots=True)
class Admission:
    """What a matched route's checks decided: refused with `reason` (and the operator's
    `detail`), or admitted with the query to forward, the identity headers and the
    token's lifetime. `principal`: whom the token spoke for, refused or not."""

    reason: Reason | None
    detail: str = ""
    principal: Principal | None = None
    query: str = ""
    claims: list[tuple[str, str]] = field(default_factory=list)
    lifetime: TokenLifetime = NO_TOKEN


async def admit(
    runtime: Runtime,
    route: CompiledRoute,
    headers: CIMultiDictProxy[str],
    query: str,
    subject: str | None,
    admitted_at: float | None = None,
) -> Admission:
    """A matched request's client certificate, token and identity headers, checked by
    `runtime`. The handler's one path, and the WebSocket re-check's on reload
    (`admitted_at`: when its handshake was admitted; see `ProviderVerifier.verify`)."""
    if route.client_subjects is not None and (subject is None or subject not in route.client_subjects):
        detail = "no client certificate" if subject is None else "client certificate subject not accepted"
        return Admission(Reason.CLIENT_CERT_MISMATCH, detail)
    auth = route.auth
    if isinstance(auth, TokenRequirement):
        admission = await _authenticate(runtime, auth, headers, query, admitted_at)
        if admission.reason is not None:
            return admission
    else:
        admission = Admission(None, query=query)
    subject_header = runtime.settings.client_subject_header
    if subject_header is None:
        return admission
    with_subject = _with_subject(subject, subject_header, admission.claims)
    if with_subject is None:
        # A verified subject the upstream cannot be told (a control character):
        # refused, as an unforwardable claim is, never sent on without it.
        detail = "client certificate subject cannot be forwarded"
        return Admission(Reason.CLIENT_CERT_MISMATCH, detail, admission.principal)
    return Admission(None, "", admission.principal, admission.query, with_subject, admission.lifetime)


async def _authenticate(
    runtime: Runtime,
    requirement: TokenRequirement,
    headers: CIMultiDictProxy[str],
    query: str,
    admitted_at: float | None,
) -> Admission:
    found = extract_token(
        headers,
        query,
        allow_query=requirement.allow_query_token,
        max_bytes=runtime.settings.max_token_bytes,
    )
    if isinstance(found, Reason):
        return Admission(found)
    token = found.token
    if token is None:
        return Admission(None, query=found.query) if requirement.optional else Admission(Reason.TOKEN_MISSING)
    # A re-check never reads nor fills the cache: its checks are not a request's (times
    # as of the handshake, no revocation), so its answer must not serve a request.
    entry = runtime.cache.get(token) if admitted_at is None else None
    if entry is None or not requirement.sole_verifier(entry.verifier):
        jws = parse_jws(token)
        if isinstance(jws, Reason):
            return Admission(jws)
        result = await requirement.authenticate(jws, admitted_at)
        if isinstance(result, Reason):
            return Admission(result)
        if isinstance(result, Refused):
            return Admission(result.reason, principal=result.principal)
        verifier, principal, keys = result
        entry = runtime.cache.put(token, verifier, principal, keys) if admitted_at is None else None
    else:
        verifier, principal = entry.verifier, entry.principal
        refusal = requirement.authorize(verifier, principal)
        if refusal is not None:
            return Admission(refusal, principal=principal)
    rendered = entry.headers.get(requirement.headers.serial) if entry is not None else None
    if rendered is None:
        try:
            rendered = requirement.headers.render(principal.provider, principal.claims)
        except UnforwardableError:
            return Admission(Reason.UNFORWARDABLE_CLAIM, principal=principal)
        if entry is not None:
            entry.headers[requirement.headers.serial] = rendered
    return Admission(None, "", principal, found.query, rendered, TokenLifetime.of(verifier, principal))


def readmit(runtime: Runtime, handshake: Handshake) -> tuple[CompiledRoute | None, Admission]:
    """A WebSocket's handshake authorized again by `runtime`, as if it arrived now:
    its route (None: no `websocket` route takes it now) and the admission. Never
    suspends and never fetches: keys are those the prepared policy already has."""
    path = handshake.path
    if path in runtime.published and handshake.method in ("GET", "HEAD"):
        # The handler answers such a handshake with the key set itself, as it would now.
        return None, Admission(Reason.NO_ROUTE, "now a published key set")
    route = runtime.table.match(handshake.method, request_host(handshake.host), path)
    if route is None or not route.websocket:
        return None, Admission(Reason.NO_ROUTE)
    headers = CIMultiDictProxy(CIMultiDict(("Authorization", v) for v in handshake.authorization))
    coro = admit(runtime, route, headers, handshake.query, handshake.client_subject, handshake.admitted_at)
    # With `admitted_at`, nothing on the way awaits anything that can suspend: the
    # coroutine ends on its first step (StopIteration), never leaving a check half done.
    try:
        coro.send(None)
    except StopIteration as done:
        admission: Admission = done.value
        return route, admission
    coro.close()
    raise RuntimeError("the WebSocket re-check suspended")


def _upstream_target(route: CompiledRoute, upstream_path: str) -> tuple[str, str, int, str]:
    """Where a handshake on `route` goes: the origin and the path (its TLS settings are
    not compared: a reload builds new ones even when nothing changed)."""
    upstream = route.upstream
    return upstream.scheme, upstream.host, upstream.port, upstream_path


def _moved(route: CompiledRoute, handshake: Handshake) -> bool:
    """Would `route` send this handshake to another upstream than it went to?"""
    return handshake.upstream != _upstream_target(route, route.upstream_path(handshake.path))


def challenge_scope(route: CompiledRoute | None) -> str:
    """The scope a refusal's challenge names (RFC 6750 §3): the route's, from config."""
    return route.auth.scope_text if route and isinstance(route.auth, TokenRequirement) else ""


def _with_subject(subject: str | None, header: str, claims: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
    """`claims` (never changed: it may be the token cache's) and the client
    certificate's subject, rendered as a claim value is; without a certificate, no
    header (the inbound one was removed with the other identity headers); None for a
    subject no header can carry (a control character)."""
    if subject is None:
        return claims
    try:
        return [*claims, (header, render_claim(subject))]
    except UnforwardableError:
        return None


_UPSTREAM_REASONS = {"unreachable": Reason.UPSTREAM_UNREACHABLE, "timeout": Reason.UPSTREAM_TIMEOUT}


def _upstream_reason(exc: UpstreamError) -> Reason:
    return _UPSTREAM_REASONS.get(exc.kind, Reason.UPSTREAM_ERROR)


def upstream_headers(
    inbound: CIMultiDictProxy[str],
    peer: str | None,
    scheme: str,
    settings: HandlerSettings,
    request_id: str,
    route: CompiledRoute,
    host: str,
    claims: list[tuple[str, str]],
) -> list[tuple[str, str]]:
    """What the upstream gets (besides Host and framing, written by the pool), for a
    request and a WebSocket handshake alike: the client's headers by the rules, the
    verified identity, and the request ID. `gateway explain` prints this list."""
    headers = upstream_request_headers(
        inbound,
        peer=peer,
        scheme=scheme,
        host=host,
        forwarded=settings.forwarded,
        rules=settings.request_headers,
        keep_authorization=route.forward_authorization,
        claims=claims,
    )
    headers.append((settings.request_ids.header, request_id))
    return headers
