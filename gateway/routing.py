"""The compiled route table: ordered, first match wins, segment-aware prefixes."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp

from gateway.auth.requirement import TokenRequirement
from gateway.cors import CorsPolicy
from gateway.upstream_tls import UpstreamTls

# What `CompiledRoute.mismatch` says a request failed on.
PATH = "path"
METHOD = "method"
HOST = "host"


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a route forwards to. `base` has no trailing slash (`""` for none)."""

    scheme: str
    host: str
    port: int
    base: str
    # TLS settings of an `https` origin the policy names in `upstream_tls`; None: the
    # defaults (verified against the system's CAs).
    tls: UpstreamTls | None = None
    # The Host header the upstream receives: computed once here, not per request.
    authority: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        object.__setattr__(self, "authority", host if self.port == default else f"{host}:{self.port}")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base}"


@dataclass(frozen=True, slots=True)
class PublicAccess:
    """The route needs no token."""

    def describe(self) -> str:
        return "public"


AuthRequirement = PublicAccess | TokenRequirement


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """Everything the request path needs about one route, precomputed."""

    index: int
    name: str
    exact: str | None
    prefix: str | None
    methods: frozenset[str] | None
    host: str | None
    upstream: Upstream
    strip_prefix: bool
    timeout: aiohttp.ClientTimeout
    auth: AuthRequirement
    forward_authorization: bool
    # Browser callers from other origins; None: none (the route behaves as before CORS).
    cors: CorsPolicy | None = None
    # The client certificate subjects (RFC 4514, canonical) the route accepts; None: any
    # client, with a certificate or without.
    client_subjects: frozenset[str] | None = None
    websocket: bool = False
    websocket_close_on_expiry: bool = True
    # Public, and no client certificate asked for: its requests have nothing to check.
    open: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.host is not None and self.host.endswith("."):
            # `api.example.com.` is the same name; requests are compared without it too.
            object.__setattr__(self, "host", self.host.removesuffix("."))
        object.__setattr__(self, "open", isinstance(self.auth, PublicAccess) and self.client_subjects is None)

    def matches(self, method: str, host: str, path: str) -> bool:
        """True when this route takes the request. `path` must be canonical."""
        return self.mismatch(method, host, path) is None

    def mismatch(self, method: str, host: str, path: str) -> str | None:
        """Which test the request fails, checked in this order (`PATH`, `METHOD`,
        `HOST`), or None when this route takes it. `path` must be canonical.

        The one matching rule: the table matches with it and `gateway explain` reports
        it, so the two cannot disagree. (Constant strings: no allocation per request.)"""
        if self.exact is not None:
            if path != self.exact:
                return PATH
        elif not under(path, self.prefix or "/"):
            return PATH
        if self.methods is not None and method not in self.methods:
            return METHOD
        if self.host is None or self.host == host:
            return None
        return HOST

    def upstream_path(self, path: str) -> str:
        """Base path + (path, minus the matched prefix if strip_prefix)."""
        if self.strip_prefix and self.prefix is not None and self.prefix != "/":
            path = path[len(self.prefix) :]
        joined = self.upstream.base + path
        return joined or "/"

    def describe_match(self) -> str:
        what = f"path {self.exact}" if self.exact is not None else f"prefix {self.prefix}"
        methods = ",".join(sorted(self.methods)) if self.methods else "*"
        host = self.host or "*"
        return f"{what}  methods={methods}  host={host}"

    def shadows(self, later: CompiledRoute) -> bool:
        """True if every request `later` would take is already taken by `self`."""
        if self.methods is not None and (later.methods is None or not later.methods <= self.methods):
            return False
        if self.host is not None and self.host != later.host:
            return False
        if self.exact is not None:
            return later.exact == self.exact
        if later.exact is not None:
            return under(later.exact, self.prefix or "/")
        return under(later.prefix or "/", self.prefix or "/")


def under(path: str, prefix: str) -> bool:
    """Segment-aware prefix test: `/orders` covers `/orders` and `/orders/7`, not `/ordersX`."""
    if prefix == "/":
        return True
    return path == prefix or (path.startswith(prefix) and path[len(prefix)] == "/")


def _index(route: CompiledRoute) -> int:
    return route.index


# RFC 3986 §3.2.2 reg-name, narrowed to what DNS and backends agree on: dot-separated
# labels of letters, digits, `-` and `_` (one trailing dot, the same name, is removed first).
# No label can hold a `.`, so each character has one place in the pattern and a failed
# match gives back at most one step per character: linear in the value's length.
_REG_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
# RFC 1035 §2.3.4 as written (a trailing dot aside); longer is no host name at all.
_MAX_NAME = 253
_DIGITS = frozenset("0123456789")


def parse_host(header: str) -> str | None:
    """The name in a Host header, lower-cased, without the port or a trailing dot; None
    when the value is not `name[:port]` or `[IPv6]` with an optional port.

    One spelling per host, so that routing, the upstream and the logs agree: the port
    is 1-65535 in decimal without leading zeros (`:99999`, `:0`, `:0080` and an empty
    `name:` are refused); no userinfo, percent-escapes, IP zone IDs or IPvFuture."""
    if len(header) > _MAX_NAME + 7:  # name, dot, ":65535"; also bounds the memo's keys
        return None
    return _parse_host(header)


# Clients choose Host values, so the memo is small and its keys are short (see above).
@functools.lru_cache(maxsize=256)
def _parse_host(header: str) -> str | None:
    if not header.isascii():
        # Before any lower(): some non-ASCII letters lower-case to ASCII ones (the
        # Kelvin sign U+212A to `k`), which would route `\u212aiosk.test` as `kiosk.test`.
        return None
    if header.startswith("["):
        end = header.find("]")
        literal, port = header[1:end], header[end + 1 :]
        if end < 0 or not literal.isascii() or "%" in literal:
            return None
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return None
        name = header[: end + 1].lower()
    else:
        name, colon, digits = header.partition(":")
        port = colon + digits
        name = name.lower().removesuffix(".")
        if len(name) > _MAX_NAME or _REG_NAME.fullmatch(name) is None:
            return None
    if port and not _valid_port(port):
        return None
    return name


def _valid_port(port: str) -> bool:
    """`port` is ":" then 1-65535 written canonically."""
    digits = port[1:]
    return (
        port[0] == ":"
        and 0 < len(digits) <= 5
        and digits[0] != "0"
        and _DIGITS.issuperset(digits)
        and int(digits) <= 65535
    )


def request_host(header: str) -> str:
    """The Host header's name as routes compare it (see `parse_host`); a value that is no
    host (refused before routing, see `proxy.requestcheck`) matches no host route."""
    name = parse_host(header)
    return header if name is None else name


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Ordered routes; the first that matches wins.

    Matching walks the path's segment prefixes (`/`, `/a`, `/a/b`, …) through two
    dicts built once, so its cost follows the path's depth, not the number of routes;
    candidates are then tried in table order, which keeps first-match semantics."""

    routes: tuple[CompiledRoute, ...]
    _exact: dict[str, tuple[CompiledRoute, ...]] = field(init=False, repr=False, compare=False)
    _prefix: dict[str, tuple[CompiledRoute, ...]] = field(init=False, repr=False, compare=False)
    _longest: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact: dict[str, list[CompiledRoute]] = {}
        prefix: dict[str, list[CompiledRoute]] = {}
        for route in self.routes:
            if route.exact is not None:
                exact.setdefault(route.exact, []).append(route)
            else:
                prefix.setdefault(route.prefix or "/", []).append(route)
        object.__setattr__(self, "_exact", {k: tuple(v) for k, v in exact.items()})
        object.__setattr__(self, "_prefix", {k: tuple(v) for k, v in prefix.items()})
        object.__setattr__(self, "_longest", max(map(len, prefix), default=0))

    def match(self, method: str, host: str, path: str) -> CompiledRoute | None:
        candidates: list[CompiledRoute] = list(self._exact.get(path, ()))
        prefixes = self._prefix
        found = prefixes.get("/")
        if found:
            candidates.extend(found)
        # Only segment prefixes no longer than the longest configured prefix can be
        # keys, so the walk stops there: it slices at most `longest` characters per
        # segment within that length, O(len(path) + longest²) whatever the path. (It
        # sliced every segment prefix of the path before: quadratic, 9 ms at 8 KB.)
        longest = self._longest
        end = path.find("/", 1)
        while 0 < end <= longest:
            if end > 1:  # `path[:1]` is the root, taken above
                found = prefixes.get(path[:end])
                if found:
                    candidates.extend(found)
            end = path.find("/", end + 1)
        if end < 0 and 1 < len(path) <= longest:
            found = prefixes.get(path)
            if found:
                candidates.extend(found)
        if len(candidates) > 1:
            candidates.sort(key=_index)
        for route in candidates:
            if route.mismatch(method, host, path) is None:
                return route
        return None

    def shadowed(self) -> Iterator[tuple[CompiledRoute, CompiledRoute]]:
        """Pairs (later, earlier) where `later` can never match because of `earlier`."""
        for j, later in enumerate(self.routes):
            for earlier in self.routes[:j]:
                if earlier.shadows(later):
                    yield later, earlier
                    break
