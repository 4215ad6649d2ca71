"""Verified tokens, cached (Envoy's `jwt_cache_config`): token -> verified principal.

An entry is only ever a shortcut for a verification that already succeeded, and is used
only while that verification would still succeed:

* until the token's `exp` + leeway (when a fresh check would first refuse it), and at
  most `max_ttl` after it was verified;
* while the provider's key set is the very snapshot it was verified with (any key
  change, including a refresh, drops it) and the revocation list is the very one it was
  checked against.

Route checks (narrowed audience, scopes, claims) are not cached: they run every time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from gateway.auth.verifier import Principal, ProviderVerifier
from gateway.keys.keyset import KeySet


@dataclass(slots=True)
class Entry:
    verifier: ProviderVerifier
    principal: Principal
    deadline: float
    keys: KeySet
    revoked: frozenset[str] | None
    # Rendered identity headers, per ClaimHeaders (by its serial).
    headers: dict[int, list[tuple[str, str]]] = field(default_factory=dict)


class TokenCache:
    """A bounded LRU of verified tokens. `max_entries` 0 disables it."""

    def __init__(self, max_entries: int, max_ttl: float, hits: Any = None, misses: Any = None) -> None:
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._hits = hits
        self._misses = misses

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> Entry | None:
        if not self.max_entries:
            return None
        entry = self._entries.get(token)
        if entry is not None:
            verifier = entry.verifier
            revocations = verifier.revocations
            if (
                time.time() < entry.deadline
                and entry.keys is verifier.keys.snapshot
                and entry.revoked is (revocations.revoked if revocations is not None else None)
            ):
                self._entries.move_to_end(token)
                if self._hits is not None:
                    self._hits.inc()
                return entry
            del self._entries[token]
        if self._misses is not None:
            self._misses.inc()
        return None

    def put(self, token: str, verifier: ProviderVerifier, principal: Principal, keys: KeySet) -> Entry | None:
        """Remember a verification that just succeeded against `keys`."""
        if not self.max_entries:
            return None
        exp = principal.claims["exp"]  # a checked, bounded number (claims.check_claims)
        deadline = min(float(exp) + verifier.rules.leeway, time.time() + self.max_ttl)
        revocations = verifier.revocations
        entry = Entry(verifier, principal, deadline, keys, revocations.revoked if revocations is not None else None)
        self._entries[token] = entry
        self._entries.move_to_end(token)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return entry
