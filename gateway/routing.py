"""The compiled route table: ordered, first match wins, segment-aware prefixes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
from yarl import URL

from gateway.auth.requirement import TokenRequirement


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a route forwards to. `base` has no trailing slash (`""` for none)."""

    scheme: str
    host: str
    port: int
    base: str

    def url(self, path: str, query: str) -> URL:
        """The upstream URL for an already-canonical path; nothing is re-encoded."""
        # SECURITY: encoded=True stops yarl from resolving dot segments or re-quoting,
        # so the upstream receives byte-for-byte the path the policy matched.
        return URL.build(
            scheme=self.scheme,
            host=self.host,
            port=self.port,
            path=path,
            query_string=query,
            encoded=True,
        )

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

    def matches(self, method: str, host: str, path: str) -> bool:
        """True when this route takes the request. `path` must be canonical."""
        if self.exact is not None:
            if path != self.exact:
                return False
        elif not _under(path, self.prefix or "/"):
            return False
        if self.methods is not None and method not in self.methods:
            return False
        return self.host is None or self.host == host

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
            return _under(later.exact, self.prefix or "/")
        return _under(later.prefix or "/", self.prefix or "/")


def _under(path: str, prefix: str) -> bool:
    """Segment-aware prefix test: `/orders` covers `/orders` and `/orders/7`, not `/ordersX`."""
    if prefix == "/":
        return True
    return path == prefix or (path.startswith(prefix) and path[len(prefix)] == "/")


def request_host(header: str) -> str:
    """The Host header's name, lower-cased, without the port."""
    if header.startswith("["):
        end = header.find("]")
        return header[: end + 1].lower() if end > 0 else header.lower()
    return header.partition(":")[0].lower()


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Ordered routes; the first that matches wins."""

    routes: tuple[CompiledRoute, ...]

    def match(self, method: str, host: str, path: str) -> CompiledRoute | None:
        for route in self.routes:
            if route.matches(method, host, path):
                return route
        return None

    def shadowed(self) -> Iterator[tuple[CompiledRoute, CompiledRoute]]:
        """Pairs (later, earlier) where `later` can never match because of `earlier`."""
        for j, later in enumerate(self.routes):
            for earlier in self.routes[:j]:
                if earlier.shadows(later):
                    yield later, earlier
                    break
