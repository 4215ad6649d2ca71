"""All the keys of one provider: the union of its sources, as one swapped snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

from gateway.keys.keyset import KeySet
from gateway.keys.sources import KeySource


class ProviderKeys:
    """Merges the snapshots of a provider's sources; rebuilt only when one changes."""

    def __init__(self, provider: str, sources: Sequence[KeySource]) -> None:
        self.provider = provider
        self.sources = tuple(sources)
        self.snapshot = KeySet.of(())
        self._rebuild()

    def _rebuild(self) -> None:
        self.snapshot = KeySet.of(k for s in self.sources if s.snapshot is not None for k in s.snapshot.all())

    @property
    def ready(self) -> bool:
        """Every source has loaded at least once (and not gone stale)."""
        return all(s.snapshot is not None for s in self.sources)

    async def start(self, session: aiohttp.ClientSession) -> None:
        for source in self.sources:
            await source.start(session, self._rebuild)

    async def stop(self) -> None:
        for source in self.sources:
            await source.stop()

    async def refresh_for_unknown_kid(self) -> bool:
        """Ask remote sources to refetch (each rate-limited); True if any did."""
        results = await asyncio.gather(*(s.refresh_for_unknown_kid() for s in self.sources))
        return any(results)
