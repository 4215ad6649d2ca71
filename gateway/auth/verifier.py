"""Verifying one token against one provider: alg, typ, key, signature, then claims.

The only module that calls PyJWT, and only for its algorithm implementations: parsing is
ours (strict, see jws.py), and claims are checked by claims.py with our own types.
Signature first, claims after: an unverified token learns nothing from which claim
would have failed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jwt.algorithms import Algorithm, get_default_algorithms

from gateway.auth.claims import ClaimRules, check_claims, scopes_of, typ_matches
from gateway.auth.jws import Jws
from gateway.errors import Reason
from gateway.keys.keyset import KeySet, VerifyKey
from gateway.keys.provider_keys import ProviderKeys
from gateway.tokens.revocation import RevocationWatcher

_ALGORITHMS: Mapping[str, Algorithm] = get_default_algorithms()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for. Built once per request, never from unverified data."""

    provider: str
    claims: Mapping[str, Any]
    scopes: frozenset[str]


def _signature_ok(jws: Jws, key: VerifyKey) -> bool:
    try:
        return bool(_ALGORITHMS[jws.alg].verify(jws.signing_input, key.key, jws.signature))
    except (TypeError, ValueError):
        # A key/algorithm mismatch raises TypeError, not a PyJWTError; fits() should
        # make it impossible, and if not, it is a refusal, never a 500 or a pass.
        return False


@dataclass(frozen=True, slots=True)
class ProviderVerifier:
    """How tokens from one named issuer are verified."""

    name: str
    algorithms: frozenset[str]
    audiences: frozenset[str]
    rules: ClaimRules
    keys: ProviderKeys
    revocations: RevocationWatcher | None = None

    async def verify(self, jws: Jws, admitted_at: float | None = None) -> tuple[Principal, KeySet] | Reason:
        """The principal and the key set that verified it, or the first reason the
        token is refused. Audiences are the provider's own; routes narrow them after.

        `admitted_at`: re-verifying a token a connection was admitted with at that time
        (a WebSocket on reload): with the keys on hand only, never a fetch, so it never
        suspends; its times checked as of then, and revocation left to the connection's
        own lifetime (which may outlive its token, `websocket_close_on_expiry`)."""
        if jws.alg not in self.algorithms:
            # Covers `none` in any casing and HS256-with-the-RSA-public-key confusion:
            # neither is ever on a provider's list.
            return Reason.ALG_NOT_ALLOWED
        if not typ_matches(jws.header, self.rules.typ):
            return Reason.TYP_MISMATCH
        keys = self.keys.snapshot
        if not len(keys):
            return Reason.KEYS_UNAVAILABLE
        if (
            jws.kid is not None
            and admitted_at is None
            and not keys.knows(jws.kid)
            and await self.keys.refresh_for_unknown_kid()
        ):
            keys = self.keys.snapshot
        candidates = keys.candidates(jws.kid, jws.alg)
        if not candidates:
            return Reason.UNKNOWN_KID
        if not any(_signature_ok(jws, key) for key in candidates):
            return Reason.BAD_SIGNATURE
        now = time.time() if admitted_at is None else admitted_at
        reason = check_claims(jws.claims, self.rules, self.audiences, now)
        if reason is not None:
            return reason
        if admitted_at is None and self.revocations is not None and jws.claims.get("jti") in self.revocations.revoked:
            return Reason.REVOKED
        return Principal(self.name, jws.claims, scopes_of(jws.claims)), keys
