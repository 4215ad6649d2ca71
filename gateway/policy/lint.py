"""Warnings about a valid policy: settings that load and run, but are likely mistakes.

Each is located by its field path (the loader turns it into `file:line`). None of them
stops `gateway check` or `run`: each can be meant (README, "gateway check").
"""

from __future__ import annotations

import ipaddress

from gateway.auth.requirement import TokenRequirement
from gateway.duration import format_duration
from gateway.policy.compile import CompiledPolicy
from gateway.policy.errors import Problem
from gateway.policy.model import Listen, Policy
from gateway.routing import CompiledRoute, under

# A token valid this long outlives a quarter's key rotation and access review: leaked,
# it stays useful for months (PCI DSS v4 8.3.9 and 8.6.3 settle on 90 days for
# credentials that are not otherwise rotated). Longer is allowed, and warned about.
LONG_LIFETIME = 90 * 86400.0
_WILDCARDS = frozenset({"0.0.0.0", "::"})


def lint(policy: Policy, compiled: CompiledPolicy) -> list[Problem]:
    """Every warning for a policy that compiled; `compiled` is `policy`, compiled."""
    routes = compiled.table.routes
    out: list[Problem] = []
    for later, earlier in compiled.table.shadowed():
        out.append(
            Problem(
                ("routes", later.index, "match"),
                f"route {later.name!r} (routes[{later.index}]) can never match: every request it takes "
                f"is taken first by {earlier.name!r} (routes[{earlier.index}])",
            )
        )
    shadowed = {later.index for later, _ in compiled.table.shadowed()}
    for route in routes:
        if route.index not in shadowed:
            out.extend(_public_under_protected(route, routes))
        auth = route.auth
        if isinstance(auth, TokenRequirement) and auth.optional and not _gets_identity(route, auth):
            out.append(
                Problem(
                    ("routes", route.index, "auth", "optional"),
                    f"route {route.name!r} is optional, but its upstream receives no identity (no claim headers, "
                    "no provider header, no Authorization): it cannot tell a verified caller from an anonymous one",
                )
            )
        if route.upstream.scheme == "http" and not _loopback(route.upstream.host):
            out.append(
                Problem(
                    ("routes", route.index, "upstream"),
                    f"route {route.name!r} forwards over plain http to {route.upstream.authority}, not a loopback "
                    "host: identity headers and request bodies cross the network unencrypted and unauthenticated",
                )
            )
    used = {p.name for r in routes if isinstance(r.auth, TokenRequirement) for p in r.auth.providers}
    for name, provider in policy.providers.items():
        if name not in used:
            out.append(Problem(("providers", name), f"provider {name!r} is used by no route (no auth.any_of names it)"))
        if provider.max_lifetime is not None and provider.max_lifetime > LONG_LIFETIME:
            out.append(
                Problem(
                    ("providers", name, "max_lifetime"),
                    f"provider {name!r} accepts tokens valid for {format_duration(provider.max_lifetime)}, longer "
                    f"than {format_duration(LONG_LIFETIME)}: a leaked token stays useful that long (revocation aside)",
                )
            )
    if _same_port(compiled.listen, compiled.admin_listen):
        out.append(
            Problem(
                ("admin", "listen"),
                f"admin.listen {compiled.admin_listen} and listen {compiled.listen} are one port: "
                "`gateway run` cannot bind both",
            )
        )
    return out


def _public_under_protected(route: CompiledRoute, routes: tuple[CompiledRoute, ...]) -> list[Problem]:
    """A public route inside a token-protected prefix (other than the catch-all `/`,
    whose public exceptions, such as a health check, are the usual default-deny
    policy) and reachable by some request that prefix's route would also take."""
    if isinstance(route.auth, TokenRequirement):
        return []
    path = route.exact if route.exact is not None else route.prefix or "/"
    out = []
    for other in routes:
        auth = other.auth
        if (
            other is route
            or not isinstance(auth, TokenRequirement)
            or auth.optional
            or other.prefix in (None, "/")
            or not under(path, other.prefix or "/")
            or (route.host is not None and other.host is not None and route.host != other.host)
            or (route.methods is not None and other.methods is not None and not route.methods & other.methods)
        ):
            continue
        out.append(
            Problem(
                ("routes", route.index, "auth"),
                f"route {route.name!r} is public, under the prefix {other.prefix} that {other.name!r} "
                f"(routes[{other.index}]) protects ({auth.describe()}): requests it takes need no token",
            )
        )
    return out


def _gets_identity(route: CompiledRoute, auth: TokenRequirement) -> bool:
    """Whether the upstream learns who verified, when someone did (auth.forward)."""
    return bool(auth.headers.pairs) or auth.headers.provider_header is not None or route.forward_authorization


def _loopback(host: str) -> bool:
    # RFC 6761 §6.3: `localhost` and names under it are the loopback interface.
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_port(a: Listen, b: Listen) -> bool:
    """Two listen addresses one process cannot both bind (port 0 picks a free one). A
    wildcard takes its own family's port only: asyncio binds `::` IPv6-only."""
    if a.port != b.port or a.port == 0:
        return False
    return any(x == y or (_v6(x) == _v6(y) and _WILDCARDS & {x, y}) for x in _addrs(a.host) for y in _addrs(b.host))


def _addrs(host: str) -> tuple[str, ...]:
    # No resolving in a lint: `localhost` is the one name whose addresses are known.
    return ("127.0.0.1", "::1") if host == "localhost" else ("0.0.0.0",) if host == "" else (host,)


def _v6(host: str) -> bool:
    return ":" in host
