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

from multidict import CIMultiDictProxy

from gateway.auth.forward import IdentityHeaders, fold
from gateway.overrides import is_override

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
# (Path, method, host and scheme overrides are dropped too: see `gateway.overrides`.)
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "expect"}
# Only a trusted proxy in front of us may tell us who the client is, and only in the
# standard (hyphenated) spellings. Besides X-Forwarded-*: the client-address headers
# that CDNs write and backends read (Rails reads Client-IP, rate limiters
# True-Client-IP and CF-Connecting-IP; the widely copied PHP "client IP" snippet reads
# X-Forwarded and Forwarded-For as well).
_FORWARDING = frozenset(
    {
        "forwarded",
        "x-forwarded",
        "forwarded-for",
        "x-real-ip",
        "client-ip",
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "x-originating-ip",
        "x-remote-ip",
        "x-remote-addr",
        "x-proxyuser-ip",
        "x-original-for",
    }
)
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


# What a request header's name alone decides (see `RequestHeaderRules.kind`).
DROP, KEEP, AUTHORIZATION, FORWARDING, XFF, XFP, XFH = range(7)
_TRACKED = {"x-forwarded-for": XFF, "x-forwarded-proto": XFP, "x-forwarded-host": XFH}
# Memoised spellings: short names only, and a bounded number of them, because clients
# choose header names.
_MEMO_NAME_LEN = 64
_MEMO_ENTRIES = 4096


class RequestHeaderRules:
    """Which inbound request headers may cross, decided once per header spelling.

    Everything but the peer's trust, the route's `forward_authorization` and the
    request's own `Connection` list depends on the name alone; the per-request loop
    is then one dict lookup per header."""

    __slots__ = ("_identity", "_memo", "_owned")

    def __init__(self, identity: IdentityHeaders, owned: frozenset[str] = frozenset()) -> None:
        self._identity = identity
        # Folded names the gateway writes itself (the request ID): a client's are dropped.
        self._owned = owned
        self._memo: dict[str, tuple[int, str]] = {}

    def kind(self, name: str) -> tuple[int, str]:
        """(what the name decides, the folded name)."""
        known = self._memo.get(name)
        if known is not None:
            return known
        folded = fold(name)
        # The CGI spelling (`HTTP_X_AUTH_SUBJECT`), which some IIS and PHP stacks look a
        # header up by: whatever a rule says of a name, it says of that spelling too.
        bare = folded[5:] if folded.startswith("http-") else ""
        if (
            folded in _REQUEST_DROP
            or folded in self._owned
            or is_override(folded)
            or self._identity.reserved(folded)
            or (bare and (bare in self._owned or self._identity.reserved(bare) or _spoofable(bare)))
        ):
            # SECURITY: identity and override headers are removed in every spelling, on
            # every route, from every peer: a backend must never read a client's word
            # for who the caller is or which path or method the policy allowed. A
            # forwarding header in the CGI spelling is never the standard spelling.
            kind = DROP
        elif _spoofable(folded):
            # Only a trusted proxy may set these, and only in the standard spelling.
            kind = _TRACKED.get(folded, FORWARDING) if name.lower() == folded else DROP
        elif folded == "authorization":
            kind = AUTHORIZATION
        else:
            kind = KEEP
        if len(name) <= _MEMO_NAME_LEN and len(self._memo) < _MEMO_ENTRIES:
            self._memo[name] = (kind, folded)
        return kind, folded


def upstream_request_headers(
    inbound: CIMultiDictProxy[str],
    *,
    peer: str | None,
    scheme: str,
    host: str,
    forwarded: ForwardedFor,
    rules: RequestHeaderRules,
    keep_authorization: bool,
    claims: list[tuple[str, str]],
) -> list[tuple[str, str]]:
    """The headers to send upstream: inbound minus hop-by-hop, identity and spoofable
    ones, then the gateway's own (verified identity, then forwarding) added last."""
    drop = connection_tokens(inbound)
    trusted = forwarded.is_trusted(peer)
    out: list[tuple[str, str]] = []
    prior: list[str] = []
    has_proto = has_host = False
    for name, value in inbound.items():
        kind, folded = rules.kind(name)
        if kind == DROP or (drop and folded in drop):
            continue
        if kind >= FORWARDING:
            if not trusted:
                continue
            if kind == XFF:
                prior.append(value)  # extended below, not passed twice
                continue
            if kind == XFP:
                has_proto = True
            elif kind == XFH:
                has_host = True
        elif kind == AUTHORIZATION and not keep_authorization:
            continue
        out.append((name, value))
    # Claim headers can never be forwarding headers (refused at load).
    out += claims
    # Decided from what survived filtering, so a `Connection: X-Forwarded-Proto` from
    # even a trusted peer cannot leave the upstream without the gateway's own values.
    client = peer or ""
    out.append(("X-Forwarded-For", f"{', '.join(prior)}, {client}" if prior else client))
    if not has_proto:
        out.append(("X-Forwarded-Proto", scheme))
    if not has_host and host:
        out.append(("X-Forwarded-Host", host))
    return out


# Response header name -> its folded form, or "" when the name is always dropped.
_response_memo: dict[str, str] = {}


def _response_kind(name: str) -> str:
    folded = fold(name)
    kept = "" if folded in _RESPONSE_DROP else folded
    if len(name) <= _MEMO_NAME_LEN and len(_response_memo) < _MEMO_ENTRIES:
        _response_memo[name] = kept
    return kept


def downstream_response_headers(
    upstream: Iterable[tuple[str, str]], connection: frozenset[str], owned: frozenset[str] = _NONE
) -> list[tuple[str, str]]:
    """The upstream's response headers minus framing, hop-by-hop and Connection-named
    ones, and minus `owned` (folded names the gateway writes itself: the request ID, a
    cors route's policy headers)."""
    out = []
    for name, value in upstream:
        folded = _response_memo.get(name)
        if folded is None:
            folded = _response_kind(name)
        if folded and folded not in connection and folded not in owned:
            out.append((name, value))
    return out
