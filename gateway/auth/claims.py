"""Claim checks after the signature is verified. Pure functions of claims and the clock."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import Reason


@dataclass(frozen=True, slots=True)
class ClaimRules:
    """A provider's rules for the registered claims (RFC 7519 §4.1)."""

    issuer: str
    leeway: float
    max_lifetime: float | None
    typ: str | None  # normalised: lower case, without `application/`
    required: tuple[str, ...]


def normalise_typ(value: str) -> str:
    """RFC 7515 §4.1.9: `typ` is case-insensitive and may omit `application/`."""
    value = value.lower()
    return value[len("application/") :] if value.startswith("application/") else value


_MAX_TIME = 2**53  # far beyond any real timestamp; keeps arithmetic in float range


def is_number(value: Any) -> bool:
    """A JSON number usable as a time: not a bool or a string, finite, and bounded
    (an integer such as 10**400 would overflow float arithmetic)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -_MAX_TIME < value < _MAX_TIME
    return isinstance(value, float) and math.isfinite(value) and abs(value) < _MAX_TIME


def typ_matches(header: Mapping[str, Any], wanted: str | None) -> bool:
    if wanted is None:
        return True
    typ = header.get("typ")
    return isinstance(typ, str) and normalise_typ(typ) == wanted


def _registered_types_ok(claims: Mapping[str, Any]) -> bool:
    """RFC 7519 §4.1: each registered claim, when present, has its fixed type.

    Present means present: `null` is not read as absent, and nothing is coerced, so
    `"sub": 123` and `"sub": "123"` can never name the same principal. `sub` and `jti`
    must also be non-empty: an empty subject is no identity, and an empty `jti` no id
    to revoke by. (StringOrURI values are not parsed as URIs: `iss` must equal the
    configured issuer exactly, and real subjects such as `auth0|123` are not URIs.)"""
    for name in ("sub", "jti"):
        if name in claims:
            value = claims[name]
            if not isinstance(value, str) or not value:
                return False
    return all(name not in claims or is_number(claims[name]) for name in ("nbf", "iat"))


def check_claims(claims: Mapping[str, Any], rules: ClaimRules, audiences: frozenset[str], now: float) -> Reason | None:
    """The first reason these verified claims are unacceptable, or None."""
    exp = claims.get("exp")
    if exp is None:
        return Reason.MISSING_CLAIM
    if not is_number(exp):
        return Reason.INVALID_CLAIM
    for name in rules.required:
        if claims.get(name) is None:
            return Reason.MISSING_CLAIM
    if not _registered_types_ok(claims):
        return Reason.INVALID_CLAIM
    iss = claims.get("iss")
    if iss is None:
        return Reason.MISSING_CLAIM
    if not isinstance(iss, str):
        return Reason.INVALID_CLAIM
    if iss != rules.issuer:
        return Reason.ISSUER_MISMATCH
    aud = claims.get("aud")
    if aud is None:
        return Reason.MISSING_CLAIM
    if isinstance(aud, str):
        if aud not in audiences:
            return Reason.AUDIENCE_MISMATCH
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        if audiences.isdisjoint(aud):
            return Reason.AUDIENCE_MISMATCH
    else:
        return Reason.INVALID_CLAIM
    leeway = rules.leeway
    if now - leeway >= exp:
        return Reason.EXPIRED
    # Types already checked: present means a bounded number.
    nbf = claims.get("nbf")
    if nbf is not None and nbf - leeway > now:
        return Reason.NOT_YET_VALID
    iat = claims.get("iat")
    if iat is not None and iat - leeway > now:
        return Reason.ISSUED_IN_FUTURE
    if rules.max_lifetime is not None:
        start = iat if iat is not None else now
        if exp - start > rules.max_lifetime:
            return Reason.LIFETIME_TOO_LONG
    return None


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """Scopes from `scope` (space-delimited, RFC 8693 §4.2) and `scp` (array or string)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            # RFC 6749 §3.3: separated by single spaces only; str.split() would also
            # split on \x1f, NBSP and others, minting scopes the IdP never granted.
            found.update(v for v in value.split(" ") if v)
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
    return frozenset(found)


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name, or by dot path into nested objects. A literal name wins, so
    namespaced claims such as `https://example.com/roles` still work. None if absent."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


@dataclass(frozen=True, slots=True)
class ClaimRule:
    """`claim` must equal one of `accepted`; an array claim must contain one of them."""

    claim: str
    accepted: tuple[Any, ...]

    def matches(self, claims: Mapping[str, Any]) -> bool:
        value = claim_at(claims, self.claim)
        if value is None:
            return False
        if isinstance(value, list):
            return any(_same(item, a) for item in value for a in self.accepted)
        return any(_same(value, a) for a in self.accepted)


def _same(value: Any, wanted: Any) -> bool:
    # JSON equality without Python's True == 1 and 1 == 1.0 conflations.
    return type(value) is type(wanted) and value == wanted
