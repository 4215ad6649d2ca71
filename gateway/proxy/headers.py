"""Which headers cross the gateway, in each direction. Pure functions over multidicts."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth.forward import IdentityHeaders

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
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "expect"}
# Only a trusted proxy in front of us may tell us who the client is.
_FORWARDING = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"})
# The upstream's framing does not apply to our hop; aiohttp re-frames.
_RESPONSE_DROP = HOP_BY_HOP

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """Header names listed in `Connection` (RFC 9110 §7.6.1): hop-by-hop by declaration."""
    values = headers.getall("Connection", ())
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


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
        lower = name.lower()
        if lower in _REQUEST_DROP or lower in drop:
            continue
        if lower in _FORWARDING and not trusted:
            continue
        if lower == "authorization" and not keep_authorization:
            continue
        # SECURITY: removed before anything is added, in every spelling, on every
        # route: a client-supplied identity header must never reach a backend.
        if identity.reserved(name):
            continue
        out.add(name, value)
    for name, value in claims:
        out.add(name, value)
    client = peer or ""
    prior = ", ".join(inbound.getall("X-Forwarded-For", ())) if trusted else ""
    out["X-Forwarded-For"] = f"{prior}, {client}" if prior else client
    if not (trusted and "X-Forwarded-Proto" in inbound):
        out["X-Forwarded-Proto"] = scheme
    if not (trusted and "X-Forwarded-Host" in inbound) and host:
        out["X-Forwarded-Host"] = host
    return out


def downstream_response_headers(upstream: Iterable[tuple[str, str]], connection: frozenset[str]) -> CIMultiDict[str]:
    """The upstream's response headers minus hop-by-hop and Connection-named ones."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream:
        lower = name.lower()
        if lower in _RESPONSE_DROP or lower in connection:
            continue
        out.add(name, value)
    return out
