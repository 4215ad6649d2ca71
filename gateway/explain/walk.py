"""`gateway explain`: what the gateway would do with one request, and why, without serving.

Every decision is made by the request path's own code, called in the handler's order
(`ProxyHandler._handle`): request checks, path canonicalisation, the route table, the
admission (`proxy.handler.admit`: client certificate, token, identity headers), the
refusal's headers and the upstream's headers. This module only walks those steps and
records what each said, so it cannot drift from the gateway.

It starts nothing: no listener, no upstream connection. Local keys (files, HMAC secrets)
were loaded with the policy; remote key sets (`jwks_url`, `oidc_discovery`) are fetched
only when asked (`fetch_keys`), else a token they would verify is left undecided.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp.http_writer import HttpVersion11
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.app import handler_settings
from gateway.auth.forward import fold
from gateway.auth.requirement import TokenRequirement
from gateway.auth.verifier import Principal, ProviderVerifier
from gateway.cors import single
from gateway.errors import Reason
from gateway.explain.remote import fetched, needs_remote_keys
from gateway.explain.report import Explanation, RouteStep
from gateway.obs.metrics import Metrics
from gateway.obs.redact import MARKER, Redactor
from gateway.pathnorm import Rejected, normalize_target
from gateway.policy.compile import CompiledPolicy
from gateway.proxy.handler import (
    HandlerSettings,
    Runtime,
    admit,
    challenge_scope,
    refusal_headers,
    upstream_headers,
)
from gateway.proxy.headers import AUTHORIZATION, DROP, FORWARDING, HOP_BY_HOP, connection_tokens
from gateway.proxy.requestcheck import request_problem
from gateway.proxy.wsframe import handshake_problem, is_websocket_upgrade
from gateway.routing import HOST, METHOD, PATH, CompiledRoute, PublicAccess, request_host

# The request ID is made per request (or taken from a trusted proxy): shown as a placeholder.
REQUEST_ID = "<request id>"
# With no --peer, the client address is unknown: shown as such, and never trusted.
UNKNOWN_PEER = "<client address>"
# Header values never printed: the token, and what carries secrets like it.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_WITHHELD = "(withheld: access_log.subject is false)"


@dataclass(frozen=True, slots=True)
class ExplainRequest:
    """The request to explain, as a client would send it."""

    method: str
    url: str  # `http[s]://authority/target` or an origin-form target `/path?query`
    headers: Sequence[tuple[str, str]] = ()
    peer: str | None = None
    # The verified client certificate's subject, canonical (RFC 4514); None: no certificate.
    client_subject: str | None = None


def split_url(url: str) -> tuple[str, str, str]:
    """(scheme, authority, raw target) of what a client would send; the target is kept
    byte for byte (no decoding, no dot-segment removal: the gateway judges it)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "http", "", url
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    target = rest[end:]
    if target.startswith("?"):
        target = "/" + target
    return scheme.lower(), rest[:end], target or "/"


async def explain(policy: CompiledPolicy, req: ExplainRequest, *, fetch_keys: bool = False) -> Explanation:
    """Walk `req` through the gateway's steps for `policy` (see the module docstring)."""
    settings = handler_settings(policy)
    scheme, authority, target = split_url(req.url)
    pairs = list(req.headers)
    if authority and not any(fold(n) == "host" for n, _ in pairs):
        pairs.insert(0, ("Host", authority))  # what a client sends for this URL
    headers = CIMultiDictProxy(CIMultiDict(pairs))
    redactor = policy.access_log.redactor
    host = headers.get("Host", "")
    out = Explanation(req.method, redactor.target(target), host)
    # The handler's order from here on (ProxyHandler._handle).
    problem = request_problem(req.method, headers)
    if problem is not None:
        return _refuse(out, settings, None, *problem)
    normal = normalize_target(target)
    if isinstance(normal, Rejected):
        out.path_refused = normal.detail
        return _refuse(out, settings, None, Reason.BAD_PATH, normal.detail)
    path, query = normal
    out.canonical_path = redactor.target(path)
    if path in policy.published and req.method in ("GET", "HEAD"):
        out.status, out.answered_by = 200, "gateway"
        out.notes.append(f"the gateway serves this path itself: the public keys of provider {_keys(policy, path)}")
        return out
    if req.method == "OPTIONS":
        origin = single(headers.getall("Origin", ()))
        asked = single(headers.getall("Access-Control-Request-Method", ()))
        if origin is not None and asked is not None:
            route = policy.table.match(asked, request_host(host), path)
            if route is not None and route.cors is not None:
                return _preflight(out, settings, route, headers, origin, asked)
    route = _walk(out, policy, req.method, request_host(host), path)
    if route is None:
        return _refuse(out, settings, None, Reason.NO_ROUTE, "")
    out.route = route.name
    out.requirement = route.auth.describe()
    if route.client_subjects is not None:
        out.requirement += f" + client certificate, one of {len(route.client_subjects)} subjects"
    # The handler's one admission step (client certificate, token, identity headers),
    # with a disabled token cache: the cache only ever shortcuts this same verification.
    runtime = Runtime.build(policy.table, settings, policy.access_log, Metrics(), policy.published, cache_entries=0)
    subject = req.client_subject
    auth = route.auth
    offline: list[ProviderVerifier] = []
    if isinstance(auth, TokenRequirement):
        # Which remote key sets the token needs is asked only once the client
        # certificate passed: admitting the route without its token requirement runs
        # that check alone (it comes first), so a refusal there needs no keys at all.
        bare = await admit(runtime, dataclasses.replace(route, auth=PublicAccess()), headers, query, subject)
        if bare.reason is None:
            offline = needs_remote_keys(auth, headers, query, settings.max_token_bytes)
    if offline and not fetch_keys:
        out.decided = False
        for verifier in offline:
            remote = ", ".join(s.label for s in verifier.keys.sources if s.snapshot is None)
            out.notes.append(
                f"the token would be verified by provider {verifier.name!r} with remote keys ({remote}): "
                "not fetched (run again with --fetch-keys)"
            )
        return out
    async with contextlib.AsyncExitStack() as stack:
        if offline:
            # Kept running while the token is checked: an unknown kid refetches, as in
            # the gateway.
            await stack.enter_async_context(fetched(offline, out))
        admission = await admit(runtime, route, headers, query, subject)
    if admission.principal is not None:
        _principal(out, policy, admission.principal)
    if admission.reason is not None:
        return _refuse(out, settings, route, admission.reason, admission.detail)
    query, claims = admission.query, admission.claims
    if isinstance(auth, TokenRequirement):
        if admission.principal is None:
            out.notes.append("no token: this optional route forwards the request without identity headers")
        elif not policy.access_log.log_subject:
            claims = _mask_subject(auth, claims)
    if subject is None and (route.client_subjects is not None or settings.client_subject_header is not None):
        out.notes.append("no client certificate presented (--client-cert-subject to give one)")
    peer = req.peer or UNKNOWN_PEER  # not an address: never a trusted proxy
    forwarded = upstream_headers(headers, peer, scheme, settings, REQUEST_ID, route, host, claims)
    if route.websocket and is_websocket_upgrade(headers):
        problem_text = handshake_problem(req.method, HttpVersion11, headers, False)
        if problem_text is not None:
            return _refuse(out, settings, route, Reason.BAD_REQUEST, problem_text)
        forwarded += (("Connection", "Upgrade"), ("Upgrade", "websocket"))
        out.notes.append("a WebSocket handshake: relayed once the upstream answers 101")
    upstream = route.upstream
    upstream_target = route.upstream_path(path) + (f"?{query}" if query else "")
    out.upstream_url = redactor.url(f"{upstream.scheme}://{upstream.authority}{upstream_target}")
    out.upstream_headers = [("Host", upstream.authority), *(_shown(n, v, redactor) for n, v in forwarded)]
    out.stripped = _stripped(headers, settings, peer, route)
    return out


def _keys(policy: CompiledPolicy, path: str) -> str:
    return repr(policy.published[path].provider)


def _walk(out: Explanation, policy: CompiledPolicy, method: str, host: str, path: str) -> CompiledRoute | None:
    """Every route in table order with the test it failed, up to the first that matches.
    The verdict is the table's own `match`; the walk only explains it."""
    chosen = policy.table.match(method, host, path)
    found: CompiledRoute | None = None
    for route in policy.table.routes:
        if found is not None:
            out.routes.append(
                RouteStep(route.index, route.name, route.describe_match(), "not tried", "first match wins")
            )
            continue
        failed = route.mismatch(method, host, path)
        if failed is None:
            found = route
        out.routes.append(
            RouteStep(
                route.index,
                route.name,
                route.describe_match(),
                failed or "matched",
                _why(route, failed, method, host, path),
            )
        )
    if found is not chosen:
        # The table's index and the linear walk use the one rule (`mismatch`): a
        # difference is a bug in the index, and explain must not paper over it.
        raise RuntimeError(f"route table picked {chosen and chosen.name!r}, the walk {found and found.name!r}")
    return found


def _why(route: CompiledRoute, failed: str | None, method: str, host: str, path: str) -> str:
    if failed == PATH:
        if route.exact is not None:
            return f"path {path} is not {route.exact}"
        return f"path {path} is not under {route.prefix} (segment-aware)"
    if failed == METHOD:
        return f"method {method} is not one of {','.join(sorted(route.methods or ()))}"
    if failed == HOST:
        return f"host {host or '(none)'} is not {route.host}"
    return "path, method and host"


def _refuse(
    out: Explanation, settings: HandlerSettings, route: CompiledRoute | None, reason: Reason, detail: str
) -> Explanation:
    """The handler's refusal (`ProxyHandler._refuse`): its status and its headers."""
    out.status, out.reason, out.detail, out.answered_by = reason.status, reason.ident, detail, "gateway"
    out.response_headers = list(refusal_headers(reason, settings.realm, challenge_scope(route)))
    out.response_headers.append((settings.request_ids.header, REQUEST_ID))
    return out


def _preflight(
    out: Explanation,
    settings: HandlerSettings,
    route: CompiledRoute,
    headers: CIMultiDictProxy[str],
    origin: str,
    asked: str,
) -> Explanation:
    """A CORS preflight the gateway answers itself (`ProxyHandler._preflight`)."""
    assert route.cors is not None
    out.route, out.requirement = route.name, route.auth.describe()
    out.notes.append(f"a CORS preflight for {asked} on route {route.name!r}: answered by the gateway, never forwarded")
    answer = route.cors.preflight(origin, asked, headers.getall("Access-Control-Request-Headers", ()))
    if isinstance(answer, Reason):
        return _refuse(out, settings, route, answer, "")
    out.status, out.answered_by = 204, "gateway"
    out.response_headers = [*answer, (settings.request_ids.header, REQUEST_ID)]
    return out


def _principal(out: Explanation, policy: CompiledPolicy, principal: Principal) -> None:
    """Who the token speaks for. Its claims are what the operator asks about and are
    shown, except `sub` where the access log may not write it either (personal data)."""
    out.provider = principal.provider
    claims = dict(principal.claims)
    if not policy.access_log.log_subject and "sub" in claims:
        claims["sub"] = _WITHHELD
    out.claims = claims


def _mask_subject(auth: TokenRequirement, claims: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The identity headers with the value of the one carrying `sub` withheld."""
    from_sub = {header for path, header in auth.headers.pairs if path == "sub"}
    return [(n, _WITHHELD if n in from_sub else v) for n, v in claims]


def _shown(name: str, value: str, redactor: Redactor) -> tuple[str, str]:
    """A header as printed: never a token or a secret (the access log's rules)."""
    folded = fold(name)
    if folded in _SECRET_HEADERS or redactor.is_secret(name):
        return name, MARKER
    return name, redactor.text(value)


def _stripped(
    inbound: CIMultiDictProxy[str], settings: HandlerSettings, peer: str, route: CompiledRoute
) -> list[tuple[str, str]]:
    """The client's headers the upstream does not get, with the rule that drops each.
    The rules are `RequestHeaderRules.kind`'s; only the wording is explain's."""
    named = connection_tokens(inbound)
    trusted = settings.forwarded.is_trusted(peer)
    out: list[tuple[str, str]] = []
    for name in dict.fromkeys(inbound.keys()):
        kind, folded = settings.request_headers.kind(name)
        bare = folded.removeprefix("http-")
        if kind == DROP:
            if folded in HOP_BY_HOP:
                why = "hop-by-hop (RFC 9110 §7.6.1)"
            elif settings.identity.reserved(folded) or settings.identity.reserved(bare):
                why = "identity header: only the gateway sets these"
            elif folded == fold(settings.request_ids.header):
                why = "the gateway sets the request ID"
            elif folded == "host":
                why = "the upstream gets its own Host (the client's is in X-Forwarded-Host)"
            elif folded in ("content-length", "expect"):
                why = "framing: the gateway writes its own"
            else:
                why = "never forwarded (a path, method or host override, or a forwarding header's CGI spelling)"
        elif named and folded in named:
            why = "named in Connection (hop-by-hop)"
        elif kind >= FORWARDING and not trusted:
            why = "forwarding header from a peer not in server.trusted_proxies"
        elif kind == AUTHORIZATION and not route.forward_authorization:
            why = "the token: the route does not forward Authorization"
        else:
            continue
        out.append((name, why))
    return out
