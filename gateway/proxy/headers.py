"""Which headers cross the gateway, in each direction. Pure functions over multidicts.

Request headers are compared after `fold`: many CGI, WSGI and PHP stacks read
`X_Forwarded_For`, `X.Forwarded.For` and `X-Forwarded-For` as one header, so a rule
that only knows one spelling is a rule with a hole in it.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth.forward import IdentityHeaders, fold

# RFC 9110 §7.6.1, plus the non-standard ones that real clients still send.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# The gateway frames the upstream request itself and handles Expect with the client.
# Method and URL overrides would let a backend act on a method or path the policy never
# saw (Symfony/IIS `X-Original-URL`, `X-HTTP-Method-Override`, …).
_REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "content-length",
    "expect",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
}
# Only a trusted proxy in front of us may tell us who the client is, and only in the
# standard (hyphenated) spellings.
_FORWARDING = frozenset({"forwarded", "x-real-ip"})
# The upstream's framing does not apply to our hop: the response is re-framed
# (`downstream.Request` writes Content-Length or chunked itself).
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


_NONE: frozenset[str] = frozenset()


def connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """Header names listed in `Connection` (RFC 9110 §7.6.1), folded: hop-by-hop by declaration."""
    if "Connection" not in headers:
        return _NONE
    values = headers.getall("Connection", ())
    if len(values) == 1 and len(values[0]) <= _TOKENS_CACHED_LEN:
        return _tokens(values[0])
    return frozenset(fold(t.strip()) for v in values for t in v.split(",") if t.strip())


# Only short values are memoised: clients choose them, and the cache must stay small.
_TOKENS_CACHED_LEN = 64


@functools.lru_cache(maxsize=1024)
def _tokens(value: str) -> frozenset[str]:
    # Nearly every response says `Connection: keep-alive`; parse each spelling once.
    return frozenset(fold(t.strip()) for t in value.split(",") if t.strip())


@dataclass(frozen=True, slots=True)
class ForwardedFor:
    """How X-Forwarded-* are written, given who may be trusted to have set them."""

    trusted: tuple[Network, ...]

    def is_trusted(self, peer: str | None) -> bool:
        if not self.trusted or peer is None:
            return False
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)


def _spoofable(folded: str) -> bool:
    return folded in _FORWARDING or folded.startswith("x-forwarded-")


def upstream_request_headers(
    inbound: CIMultiDictProxy[str],
    *,
    peer: str | None,
    scheme: str,
    host: str,
    forwarded: ForwardedFor,
    identity: IdentityHeaders,
    keep_authorization: bool,
    claims: list[tuple[str, str]],
) -> CIMultiDict[str]:
    """The headers to send upstream: inbound minus hop-by-hop, identity and spoofable
    ones, then the gateway's own (forwarding and verified identity) added last."""
    drop = connection_tokens(inbound)
    trusted = forwarded.is_trusted(peer)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in inbound.items():
        folded = fold(name)
        if folded in _REQUEST_DROP or folded in drop:
            continue
        if _spoofable(folded) and not (trusted and name.lower() == folded):
            continue
        if folded == "authorization" and not keep_authorization:
            continue
        # SECURITY: removed before anything is added, in every spelling, on every
        # route: a client-supplied identity header must never reach a backend.
        if identity.reserved(folded):
            continue
        out.add(name, value)
    for name, value in claims:
        out.add(name, value)
    # Decided from what survived filtering, so a `Connection: X-Forwarded-Proto` from
    # even a trusted peer cannot leave the upstream without the gateway's own values.
    prior = ", ".join(out.getall("X-Forwarded-For", ()))
    client = peer or ""
    out["X-Forwarded-For"] = f"{prior}, {client}" if prior else client
    if "X-Forwarded-Proto" not in out:
        out["X-Forwarded-Proto"] = scheme
    if "X-Forwarded-Host" not in out and host:
        out["X-Forwarded-Host"] = host
    return out


def downstream_response_headers(
    upstream: Iterable[tuple[str, str]], connection: frozenset[str]
) -> list[tuple[str, str]]:
    """The upstream's response headers minus framing, hop-by-hop and Connection-named ones."""
    return [
        (name, value)
        for name, value in upstream
        if (folded := fold(name)) not in _RESPONSE_DROP and folded not in connection
    ]
