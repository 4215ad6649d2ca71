"""The one request handler: normalise, route, forward. Knows nothing of listeners."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import traceback
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from gateway.auth.extract import extract_token
from gateway.auth.forward import IdentityHeaders, UnforwardableError
from gateway.auth.jws import parse_jws
from gateway.auth.requirement import TokenRequirement
from gateway.errors import Reason
from gateway.pathnorm import Rejected, normalize_target
from gateway.proxy.headers import (
    ForwardedFor,
    connection_tokens,
    downstream_response_headers,
    upstream_request_headers,
)
from gateway.proxy.requestcheck import request_problem
from gateway.routing import CompiledRoute, RouteTable, request_host

log = logging.getLogger("gateway.proxy")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_JSON = "application/json"


def error_response(reason: Reason, realm: str = "gateway", scope: str = "") -> web.Response:
    """The small JSON body every refusal carries, plus its RFC 6750 challenge.

    Never echoes request data: the body is fixed per reason."""
    headers = {"Cache-Control": "no-store"}
    challenge = reason.www_authenticate(realm, scope)
    if challenge is not None:
        headers["WWW-Authenticate"] = challenge
    if reason is Reason.KEYS_UNAVAILABLE:
        headers["Retry-After"] = "5"
    return web.Response(status=reason.status, body=reason.body, content_type=_JSON, headers=headers)


@dataclass(frozen=True, slots=True)
class HandlerSettings:
    """Process-wide values the handler reads; compiled from the policy."""

    forwarded: ForwardedFor
    identity: IdentityHeaders
    realm: str
    max_token_bytes: int


def _reset(request: web.BaseRequest) -> None:
    """Abort the client connection with a TCP reset, not a FIN: for an HTTP/1.0 body
    delimited by close, a clean close would make a truncated body look complete."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class ProxyHandler:
    """Callable for aiohttp's low-level server: one instance per running policy."""

    def __init__(self, table: RouteTable, session: aiohttp.ClientSession, settings: HandlerSettings) -> None:
        self._table = table
        self._session = session
        self._settings = settings

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except Exception as exc:
            # Fail closed: a bug must never turn into a forwarded request or a traceback
            # page. The message is left out of the log: aiohttp puts URLs (and so query
            # secrets) into exception text; the frames say where it broke.
            log.error(
                "internal error %s\n%s", type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__)).rstrip()
            )
            return error_response(Reason.INTERNAL)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        problem = request_problem(request.method, request.headers)
        if problem is not None:
            return self._refuse(request, None, *problem)
        normal = normalize_target(request.raw_path)
        if isinstance(normal, Rejected):
            return self._refuse(request, None, Reason.BAD_PATH, normal.detail)
        path, query = normal
        host = request.headers.get("Host", "")
        route = self._table.match(request.method, request_host(host), path)
        if route is None:
            return self._refuse(request, None, Reason.NO_ROUTE, "")
        claims: list[tuple[str, str]] = []
        auth = route.auth
        if isinstance(auth, TokenRequirement):
            outcome = await self._authenticate(request, auth, query)
            if isinstance(outcome, Reason):
                return self._refuse(request, route, outcome, "")
            query, claims = outcome
        return await self._forward(request, route, route.upstream_path(path), query, host, claims)

    async def _authenticate(
        self, request: web.BaseRequest, requirement: TokenRequirement, query: str
    ) -> tuple[str, list[tuple[str, str]]] | Reason:
        """(query to forward, identity headers), or why the request is refused."""
        found = extract_token(
            request.headers,
            query,
            allow_query=requirement.allow_query_token,
            max_bytes=self._settings.max_token_bytes,
        )
        if isinstance(found, Reason):
            return found
        if found.token is None:
            return (found.query, []) if requirement.optional else Reason.TOKEN_MISSING
        jws = parse_jws(found.token)
        if isinstance(jws, Reason):
            return jws
        principal = await requirement.authenticate(jws)
        if isinstance(principal, Reason):
            return principal
        try:
            return found.query, requirement.headers.render(principal.provider, principal.claims)
        except UnforwardableError:
            return Reason.UNFORWARDABLE_CLAIM

    def _refuse(
        self, request: web.BaseRequest, route: CompiledRoute | None, reason: Reason, detail: str
    ) -> web.Response:
        # Operators get the reason and detail; the method is from a closed token grammar
        # and the route name is from config. The path, query and token are never logged.
        log.info(
            "refused method=%s route=%s status=%d reason=%s detail=%s",
            request.method,
            route.name if route else "-",
            reason.status,
            reason.ident,
            detail or "-",
        )
        scope = route.auth.scope_text if route and isinstance(route.auth, TokenRequirement) else ""
        return error_response(reason, self._settings.realm, scope)

    async def _forward(
        self,
        request: web.BaseRequest,
        route: CompiledRoute,
        path: str,
        query: str,
        host: str,
        claims: list[tuple[str, str]],
    ) -> web.StreamResponse:
        settings = self._settings
        headers = upstream_request_headers(
            request.headers,
            peer=request.remote,
            scheme=request.scheme,
            host=host,
            forwarded=settings.forwarded,
            identity=settings.identity,
            keep_authorization=route.forward_authorization,
            claims=claims,
        )
        has_body = request.body_exists
        if has_body:
            length = request.headers.get("Content-Length")
            if length is not None:
                # Keep the client's framing: upstreams that refuse chunked uploads stay happy.
                headers["Content-Length"] = length
            if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
                # The low-level server does not answer Expect; we do, only once the
                # request is allowed, so a refused upload is never read.
                await request.writer.write(_CONTINUE)
        try:
            upstream = await self._session.request(
                request.method,
                route.upstream.url(path, query),
                headers=headers,
                data=request.content if has_body else None,
                timeout=route.timeout,
                allow_redirects=False,
                # No aiohttp default headers (Accept, User-Agent, Accept-Encoding):
                # the upstream sees what the client sent.
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            )
        except aiohttp.ConnectionTimeoutError:
            return self._refuse(request, route, Reason.UPSTREAM_UNREACHABLE, "connect timeout")
        except aiohttp.ServerTimeoutError:
            return self._refuse(request, route, Reason.UPSTREAM_TIMEOUT, "no response in time")
        except TimeoutError:
            return self._refuse(request, route, Reason.UPSTREAM_TIMEOUT, "timeout")
        except aiohttp.ClientConnectorError as exc:
            return self._refuse(request, route, Reason.UPSTREAM_UNREACHABLE, type(exc).__name__)
        except aiohttp.ClientError as exc:
            return self._refuse(request, route, Reason.UPSTREAM_ERROR, type(exc).__name__)
        async with upstream:
            return await self._relay(request, route, upstream)

    async def _relay(
        self, request: web.BaseRequest, route: CompiledRoute, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=downstream_response_headers(upstream.headers.items(), connection_tokens(upstream.headers)),
        )
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except Exception as exc:
            # Status and headers are gone already (or the client is): the only honest
            # signal left is to cut the client's connection, so that a truncated body
            # can never be taken as a whole one.
            log.warning("response relay failed route=%s error=%s", route.name, type(exc).__name__)
            upstream.close()
            _reset(request)
        return response
