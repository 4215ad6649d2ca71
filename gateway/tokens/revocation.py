"""The revocation list: a JSON file of revoked token ids, written by `gateway tokens
revoke` and watched by the running gateway.

File format: `{"revoked": [{"jti": …, "client": …, "exp": …, "revoked_at": …}, …]}`.
The gateway re-reads it within a few seconds of a change, off the event loop. A file
that cannot be parsed is reported loudly and the last good list stays in force.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gateway.filestamp import file_stamp
from gateway.tokens.files import locked, write_atomic

log = logging.getLogger("gateway.tokens")

POLL_SECONDS = 1.0
# Entries are kept this long past a token's `exp`: longer than any leeway, so pruning
# can never revive a token a verifier would still accept.
PRUNE_MARGIN = 86400.0


class RevocationError(ValueError):
    """The file is not a revocation list; the message says why (no token ids)."""


def parse(data: bytes) -> list[dict[str, Any]]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise RevocationError("not JSON") from None
    entries = doc.get("revoked") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise RevocationError("expected an object with a 'revoked' list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("jti"), str):
            raise RevocationError(f"revoked[{i}] has no string 'jti'")
    return entries


def read(path: Path) -> list[dict[str, Any]]:
    """The entries, or [] when the file does not exist yet (nothing revoked)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return parse(data)


def add(path: Path, entries: Iterable[dict[str, Any]]) -> int:
    """Append entries (deduplicated by jti, expired ones pruned); return how many are new."""
    with locked(path.parent):
        current = read(path)
        now = time.time()
        known = {e["jti"] for e in current}
        fresh = [e for e in entries if e["jti"] not in known]
        kept = [e for e in current if not isinstance(e.get("exp"), int | float) or e["exp"] + PRUNE_MARGIN > now]
        write_atomic(path, (json.dumps({"revoked": kept + fresh}, indent=1) + "\n").encode(), 0o644)
    return len(fresh)


class RevocationWatcher:
    """The running gateway's view of one revocation file: a frozenset swapped on change."""

    def __init__(self, provider: str, path: Path, *, must_exist: bool = False) -> None:
        """`must_exist`: a list of this provider's has been seen (by the supervisor, or
        by the running policy): its absence now is an accident, never "nothing revoked"."""
        self.provider = provider
        self.path = path
        # Stamped before reading: a revocation written meanwhile is a change the first
        # poll reads (stamped after, it would be taken for what was read, and lost).
        self._stamp = file_stamp(self.path)
        if self._stamp is None and must_exist:
            raise RevocationError(
                "the revocation list is gone (this provider has had one): a worker does not start without it"
            )
        self.revoked: frozenset[str] = frozenset(e["jti"] for e in read(path))  # raises at load
        if self._stamp is None:
            log.info("provider %s: revocation file %s does not exist yet: no tokens revoked", provider, path)
        self._seen = self._stamp is not None
        self._task: asyncio.Task[None] | None = None
        self.on_reload: Callable[[bool, int], None] = lambda ok, count: None

    def start(self, on_reload: Callable[[bool, int], None]) -> None:
        self.on_reload = on_reload
        on_reload(True, len(self.revoked))
        self._task = asyncio.create_task(self._watch(), name=f"watch revocations of {self.provider}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            stamp = await asyncio.to_thread(file_stamp, self.path)
            if stamp == self._stamp:
                continue
            self._stamp = stamp
            try:
                if stamp is None and self._seen:
                    # Once a list existed, its disappearance is an accident to report,
                    # never a reason to un-revoke every token.
                    raise RevocationError("the file has disappeared")
                entries = await asyncio.to_thread(read, self.path)
            except Exception as exc:  # anything: keep the last good list and say so
                detail = str(exc) if isinstance(exc, RevocationError | OSError) else type(exc).__name__
                log.error(
                    "provider %s: revocation file %s is unusable (%s): the last good list (%d tokens) stays in force",
                    self.provider,
                    self.path,
                    detail,
                    len(self.revoked),
                )
                self.on_reload(False, len(self.revoked))
                continue
            self.revoked = frozenset(e["jti"] for e in entries)
            self._seen = self._seen or stamp is not None
            log.info("provider %s: %d revoked token(s) loaded from %s", self.provider, len(self.revoked), self.path)
            self.on_reload(True, len(self.revoked))
