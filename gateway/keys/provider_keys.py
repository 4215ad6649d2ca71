"""All the keys of one provider: the union of its sources, as one swapped snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import aiohttp

from gateway.keys.keyset import KeySet
from gateway.keys.sources import KeySource


class KeyObserver(Protocol):
    """Where a provider reports key loads and fetches (the metrics)."""

    def fetched(self, ok: bool) -> None: ...

    def keys(self, count: int, loaded: bool) -> None: ...


class ProviderKeys:
    """Merges the snapshots of a provider's sources; rebuilt only when one changes."""

    def __init__(self, provider: str, sources: Sequence[KeySource]) -> None:
        self.provider = provider
        self.sources = tuple(sources)
        self.snapshot = KeySet.of(())
        self._observer: KeyObserver | None = None
        self._rebuild()

    def _rebuild(self) -> None:
        self.snapshot = KeySet.of(k for s in self.sources if s.snapshot is not None for k in s.snapshot.all())

    @property
    def ready(self) -> bool:
        """Every source has loaded at least once (and not gone stale)."""
        return all(s.snapshot is not None for s in self.sources)

    async def start(self, session: aiohttp.ClientSession, observer: KeyObserver) -> None:
        self._observer = observer
        for source in self.sources:
            await source.start(session, self._changed, observer.fetched)
        # Sources loaded at compile time (files, secrets) count as loaded now.
        observer.keys(len(self.snapshot), loaded=len(self.snapshot) > 0)

    def _changed(self, loaded: bool) -> None:
        self._rebuild()
        if self._observer is not None:
            self._observer.keys(len(self.snapshot), loaded)

    async def stop(self) -> None:
        for source in self.sources:
            await source.stop()

    async def refresh_for_unknown_kid(self) -> bool:
        """Ask remote sources to refetch (each rate-limited); True if any did."""
        results = await asyncio.gather(*(s.refresh_for_unknown_kid() for s in self.sources))
        return any(results)
