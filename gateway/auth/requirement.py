"""A route's token requirement: which providers, optional or not, and what it must grant."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.auth.claims import ClaimRule
from gateway.auth.forward import ClaimHeaders
from gateway.auth.jws import Jws
from gateway.auth.verifier import Principal, ProviderVerifier
from gateway.errors import Reason
from gateway.keys.keyset import KeySet


@dataclass(frozen=True, slots=True)
class Refused:
    """A token that verified, refused by the route's own checks: why, and whose it was
    (so the refusal can be logged against the subject)."""

    reason: Reason
    principal: Principal


@dataclass(frozen=True, slots=True)
class TokenRequirement:
    """Compiled from a route's `auth:` mapping; shared verifiers, nothing per request."""

    providers: tuple[ProviderVerifier, ...]
    by_issuer: Mapping[str, tuple[ProviderVerifier, ...]]
    optional: bool
    scopes: frozenset[str]
    scope_text: str  # for the 403 challenge's scope="…" (from config, never from tokens)
    claim_rules: tuple[ClaimRule, ...]
    # Per provider: its audiences narrowed by the route's (absent: the provider's own).
    audiences: Mapping[str, frozenset[str]]
    headers: ClaimHeaders
    allow_query_token: bool

    def describe(self) -> str:
        names = ",".join(p.name for p in self.providers)
        mode = "optional" if self.optional else "required"
        extra = f" scopes={self.scope_text}" if self.scopes else ""
        return f"jwt {mode} any_of={names}{extra}"

    def sole_verifier(self, verifier: ProviderVerifier) -> bool:
        """True when `verifier` is the only provider this route would try for its
        issuer: then a cached verification by it gives the same answer as a fresh one.
        (With several providers for one issuer, the fresh path decides, in route order.)"""
        chosen = self.by_issuer.get(verifier.rules.issuer)
        return chosen is not None and len(chosen) == 1 and chosen[0] is verifier

    def authorize(self, verifier: ProviderVerifier, principal: Principal) -> Reason | None:
        """The route's own checks on a verified principal: run on every request."""
        narrowed = self.audiences.get(verifier.name)
        if narrowed is not None:
            aud = principal.claims["aud"]  # checked: a string or a list of strings
            if (aud not in narrowed) if isinstance(aud, str) else narrowed.isdisjoint(aud):
                return Reason.AUDIENCE_MISMATCH
        if not self.scopes <= principal.scopes:
            return Reason.INSUFFICIENT_SCOPE
        for rule in self.claim_rules:
            if not rule.matches(principal.claims):
                return Reason.CLAIM_MISMATCH
        return None

    def verifiers_for(self, jws: Jws) -> tuple[ProviderVerifier, ...] | Reason:
        """The providers that would verify `jws`, in route order, chosen by its
        unverified `iss`; or why none can. (`gateway explain` asks it which key sets a
        token needs.)"""
        iss = jws.claims.get("iss")
        if not isinstance(iss, str):
            return Reason.MISSING_CLAIM if iss is None else Reason.INVALID_CLAIM
        # The unverified `iss` only chooses which provider verifies; that provider then
        # checks it exactly, after the signature.
        verifiers = self.by_issuer.get(iss)
        if verifiers is None:
            return Reason.ISSUER_MISMATCH
        return verifiers

    async def authenticate(
        self, jws: Jws, admitted_at: float | None = None
    ) -> tuple[ProviderVerifier, Principal, KeySet] | Reason | Refused:
        """Verify with the provider(s) for the token's issuer, then authorise.

        Returns the verifier, principal and key set (for the cache), or the reason
        (`Refused` when the token verified but the route's checks refused it).
        `admitted_at`: a re-check, see `ProviderVerifier.verify`."""
        verifiers = self.verifiers_for(jws)
        if isinstance(verifiers, Reason):
            return verifiers
        first: Reason | Refused | None = None
        for verifier in verifiers:
            result = await verifier.verify(jws, admitted_at)
            if isinstance(result, Reason):
                first = first or result
                continue
            principal, keys = result
            refusal = self.authorize(verifier, principal)
            if refusal is None:
                return verifier, principal, keys
            first = first or Refused(refusal, principal)
        return first or Reason.INTERNAL
