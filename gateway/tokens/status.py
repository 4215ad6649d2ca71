"""Whether an issued API token still verifies, from its ledger record (pure functions)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Set
from typing import Any

ACTIVE = "active"
REVOKED = "revoked"
EXPIRED = "expired"
KEY_RETIRED = "key retired"
# Only an active token verifies; the others are listed with the first reason that applies.
STATUSES = (ACTIVE, REVOKED, EXPIRED, KEY_RETIRED)


def token_status(record: dict[str, Any], *, revoked: Set[str], kids: Set[str], now: float) -> str:
    """ACTIVE, or why the gateway refuses the token: revoked, expired, or its key retired.

    A record from before the ledger kept `kid` is not judged on its key.
    """
    if record.get("jti") in revoked:
        return REVOKED
    if record.get("exp", 0) <= now:
        return EXPIRED
    kid = record.get("kid")
    if kid is not None and kid not in kids:
        return KEY_RETIRED
    return ACTIVE


def live_by_kid(records: Iterable[dict[str, Any]], *, revoked: Set[str], now: float) -> Counter[str]:
    """How many tokens each key signed that are neither revoked nor expired."""
    live: Counter[str] = Counter()
    for r in records:
        kid = r.get("kid")
        if isinstance(kid, str) and r.get("jti") not in revoked and r.get("exp", 0) > now:
            live[kid] += 1
    return live
