"""Validated model -> runtime objects. Cross-field checks that need the whole file live here."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import aiohttp
from yarl import URL

from gateway.pathnorm import Rejected, normalize_target
from gateway.policy.errors import CompileError, Problem
from gateway.policy.model import JwtAuth, Listen, Policy, Route
from gateway.routing import CompiledRoute, PublicAccess, RouteTable, Upstream

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """What the running gateway uses. Built once; never mutated."""

    source: str
    listen: Listen
    admin_listen: Listen
    trusted_proxies: tuple[Network, ...]
    shutdown_timeout: float
    table: RouteTable


def compile_policy(policy: Policy, source: str) -> CompiledPolicy:
    """Compile or raise CompileError listing everything wrong, by field path."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    routes: list[CompiledRoute] = []
    for i, route in enumerate(policy.routes):
        if route.name in seen:
            problems.append(
                Problem(("routes", i, "name"), f"duplicate route name {route.name!r} (also routes[{seen[route.name]}])")
            )
        seen.setdefault(route.name, i)
        compiled = _compile_route(i, route, policy, problems)
        if compiled is not None:
            routes.append(compiled)
    if problems:
        raise CompileError(problems)
    return CompiledPolicy(
        source=source,
        listen=policy.listen,
        admin_listen=policy.admin.listen,
        trusted_proxies=tuple(ipaddress.ip_network(n, strict=False) for n in policy.server.trusted_proxies),
        shutdown_timeout=policy.server.shutdown_timeout,
        table=RouteTable(tuple(routes)),
    )


def _compile_route(i: int, route: Route, policy: Policy, problems: list[Problem]) -> CompiledRoute | None:
    upstream = _upstream(route.upstream)
    if isinstance(upstream, str):
        problems.append(Problem(("routes", i, "upstream"), upstream))
        return None
    if isinstance(route.auth, JwtAuth):
        known = sorted(policy.providers)
        for j, name in enumerate(route.auth.any_of):
            if name not in policy.providers:
                expected = ", ".join(known) if known else "none are defined under 'providers'"
                problems.append(
                    Problem(
                        ("routes", i, "auth", "any_of", j), f"unknown provider {name!r} (expected one of: {expected})"
                    )
                )
        problems.append(
            Problem(
                ("routes", i, "auth"),
                "token verification is not available in this version yet (expected 'public')",
            )
        )
        return None
    timeouts = route.timeouts
    return CompiledRoute(
        index=i,
        name=route.name,
        exact=route.match.path,
        prefix=route.match.prefix,
        methods=frozenset(route.match.methods) if route.match.methods else None,
        host=route.match.host,
        upstream=upstream,
        strip_prefix=route.strip_prefix,
        # total=None: a 1 GiB stream may legitimately take minutes; `read` bounds each
        # wait for data instead, which is what "too slow" means for a stream.
        timeout=aiohttp.ClientTimeout(total=None, connect=timeouts.connect, sock_read=timeouts.read),
        auth=PublicAccess(),
    )


def _upstream(text: str) -> Upstream | str:
    url = URL(text, encoded=True)
    base = url.raw_path.rstrip("/")
    if base:
        canonical = normalize_target(base)
        if isinstance(canonical, Rejected) or canonical[0] != base:
            return (
                f"base path of {text!r} is not canonical "
                "(expected a path without dot segments or escaped unreserved characters)"
            )
    if url.host is None or url.port is None:
        return f"not a URL: {text!r} (expected http(s)://host[:port][/base])"
    return Upstream(scheme=url.scheme, host=url.host, port=url.port, base=base)
