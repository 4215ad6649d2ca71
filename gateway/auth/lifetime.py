"""How long a verified token stays good: its `exp`, and whether its `jti` is revoked now.

A plain value the handler hands to what outlives the request (the WebSocket relay),
so that the relay needs no verifier and no claim dict, and Auth knows no transport.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.auth.verifier import Principal, ProviderVerifier


class RevokedIds(Protocol):
    """A revocation list in force (tokens/revocation.py swaps `revoked` on change)."""

    @property
    def revoked(self) -> frozenset[str]: ...


@dataclass(frozen=True, slots=True)
class TokenLifetime:
    """`expires_at`: the token's `exp` (Unix time), or None when it has none. `jti` and
    `revocations`: where to look whether it has been revoked since (None: it cannot be);
    `provider`, whose list that is (a reload replaces the list)."""

    expires_at: float | None
    provider: str = ""
    jti: str | None = None
    revocations: RevokedIds | None = None

    @classmethod
    def of(cls, verifier: ProviderVerifier, principal: Principal) -> TokenLifetime:
        claims = principal.claims
        exp = claims.get("exp")
        # claims.py has refused an `exp` that is not a number (bools too).
        expires = float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
        jti = claims.get("jti")
        if not isinstance(jti, str) or verifier.revocations is None:
            return cls(expires, principal.provider)
        return cls(expires, principal.provider, jti, verifier.revocations)

    def revoked(self, current: RevokedIds | None = None) -> bool:
        """Is the token on its provider's list: `current` if given (the list in force
        after a reload), else the one it was verified against."""
        source = current if current is not None else self.revocations
        return source is not None and self.revocations is not None and self.jti in source.revoked


# A request that carried no token (a public route, or an optional token not sent).
NO_TOKEN = TokenLifetime(None)
