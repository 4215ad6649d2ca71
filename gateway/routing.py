"""The compiled route table: ordered, first match wins, segment-aware prefixes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp

from gateway.auth.requirement import TokenRequirement


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a route forwards to. `base` has no trailing slash (`""` for none)."""

    scheme: str
    host: str
    port: int
    base: str
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


def _index(route: CompiledRoute) -> int:
    return route.index


def request_host(header: str) -> str:
    """The Host header's name, lower-cased, without the port."""
    if header.startswith("["):
        end = header.find("]")
        return header[: end + 1].lower() if end > 0 else header.lower()
    return header.partition(":")[0].lower()


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Ordered routes; the first that matches wins.

    Matching walks the path's segment prefixes (`/`, `/a`, `/a/b`, …) through two
    dicts built once, so its cost follows the path's depth, not the number of routes;
    candidates are then tried in table order, which keeps first-match semantics."""

    routes: tuple[CompiledRoute, ...]
    _exact: dict[str, tuple[CompiledRoute, ...]] = field(init=False, repr=False, compare=False)
    _prefix: dict[str, tuple[CompiledRoute, ...]] = field(init=False, repr=False, compare=False)

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

    def match(self, method: str, host: str, path: str) -> CompiledRoute | None:
        candidates: list[CompiledRoute] = list(self._exact.get(path, ()))
        prefixes = self._prefix
        found = prefixes.get("/")
        if found:
            candidates.extend(found)
        end = path.find("/", 1)
        while True:
            key = path if end < 0 else path[:end]
            if key != "/":
                found = prefixes.get(key)
                if found:
                    candidates.extend(found)
            if end < 0:
                break
            end = path.find("/", end + 1)
        if len(candidates) > 1:
            candidates.sort(key=_index)
        for route in candidates:
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
