"""What `gateway explain` found: the record of each step, as text for people and JSON for machines."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Shape of `--json`; bumped when a field changes meaning or goes away (added fields do not).
JSON_VERSION = 1


@dataclass(frozen=True, slots=True)
class RouteStep:
    """One route of the table, as the request met it."""

    index: int
    name: str
    match: str
    result: str  # "matched", "path", "method", "host" (the test it failed), "not tried"
    why: str


@dataclass(slots=True)
class Explanation:
    """Everything `gateway explain` reports. `decided` False: remote keys were needed."""

    method: str
    target: str
    host: str
    canonical_path: str | None = None
    path_refused: str | None = None
    routes: list[RouteStep] = field(default_factory=list)
    route: str | None = None
    requirement: str | None = None
    decided: bool = True
    status: int = 0
    reason: str | None = None
    detail: str = ""
    answered_by: str = "upstream"  # or "gateway" (a refusal, a preflight, a published JWKS)
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    provider: str | None = None
    claims: dict[str, Any] | None = None
    upstream_url: str | None = None
    upstream_headers: list[tuple[str, str]] = field(default_factory=list)
    stripped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return self.decided and self.reason is not None

    def to_json(self) -> dict[str, Any]:
        """The stable `--json` shape (README, "gateway explain")."""
        return {
            "version": JSON_VERSION,
            "request": {"method": self.method, "target": self.target, "host": self.host},
            "path": {"canonical": self.canonical_path, "refused": self.path_refused},
            "routes": [
                {"index": r.index, "name": r.name, "match": r.match, "result": r.result, "why": r.why}
                for r in self.routes
            ],
            "route": self.route,
            "requirement": self.requirement,
            "verdict": {
                "decided": self.decided,
                "forwarded": self.decided and self.reason is None and self.answered_by == "upstream",
                "answered_by": self.answered_by if self.decided else None,
                "status": self.status if self.decided else None,
                "reason": self.reason,
                "detail": self.detail,
                "headers": [list(h) for h in self.response_headers],
            },
            "principal": None if self.provider is None else {"provider": self.provider, "claims": self.claims},
            "upstream": None
            if self.upstream_url is None
            else {
                "url": self.upstream_url,
                "headers": [list(h) for h in self.upstream_headers],
                "stripped": [{"name": n, "why": w} for n, w in self.stripped],
            },
            "notes": self.notes,
        }


def render(out: Explanation) -> str:
    """The human-readable report."""
    lines = [f"request: {out.method} {out.target}" + (f"  (Host: {out.host})" if out.host else "")]
    if out.path_refused is not None:
        lines.append(f"path: refused: {out.path_refused}")
    elif out.canonical_path is not None:
        lines.append(f"path: {out.canonical_path}")
    if out.routes:
        lines.append("routes (first match wins):")
        for r in out.routes:
            verdict = "matches" if r.result == "matched" else r.result if r.result == "not tried" else "no"
            mark = "->" if r.result == "matched" else "  "
            lines.append(f"  {mark} [{r.index}] {r.name} ({r.match}): {verdict}: {r.why}")
    if out.requirement is not None:
        lines.append(f"route: {out.route}  requires: {out.requirement}")
    if out.provider is not None and out.claims is not None:
        lines.append(f"token: verified by provider {out.provider!r}; claims:")
        lines.extend(f"  {k}: {_claim_text(v)}" for k, v in out.claims.items())
    if not out.decided:
        lines.append("verdict: undecided: the token needs remote keys")
    elif out.reason is not None:
        lines.append(
            f"verdict: refused by the gateway: {out.status} {out.reason}" + (f" ({out.detail})" if out.detail else "")
        )
    elif out.answered_by == "gateway":
        lines.append(f"verdict: answered by the gateway: {out.status}")
    else:
        lines.append("verdict: forwarded (the status is the upstream's)")
    for name, value in out.response_headers:
        lines.append(f"  {name}: {value}")
    if out.upstream_url is not None:
        lines.append(f"upstream: {out.upstream_url}")
        lines.append("upstream request headers:")
        lines.extend(f"  {n}: {v}" for n, v in out.upstream_headers)
        if out.stripped:
            lines.append("client headers not forwarded:")
            lines.extend(f"  {n}: {w}" for n, w in out.stripped)
    lines.extend(f"note: {n}" for n in out.notes)
    return "\n".join(lines)


def _claim_text(value: Any) -> str:
    """A claim as JSON writes it, a plain string as it is. Claims are the issuer's users'
    words (a `name`): a string with a control or format character (a terminal escape,
    a right-to-left override) is printed escaped, never raw to the operator's terminal."""
    if isinstance(value, str) and value.isprintable():
        return value
    return json.dumps(value)
