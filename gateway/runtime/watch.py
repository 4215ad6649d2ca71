"""Noticing that the policy changed on disk: the policy file and every file it names.

Polling `stat`, through symlinks. A Kubernetes ConfigMap volume updates by writing a new
directory and swapping the `..data` symlink to it: the path the policy was given by
stays the same, and what it resolves to changes (another inode). inotify would watch
the link's directory rather than the file and is not in the standard library; a stat of
a handful of files once a second costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence

log = logging.getLogger("gateway.runtime")

POLL_SECONDS = 1.0
# A change is acted on once the files have looked the same for this long: an editor or
# a copy writing a file in several steps is read when it is done, not half-way.
SETTLE_SECONDS = 0.25

# (device, inode, mtime, size), or None for a file that cannot be stat'ed.
Stamp = tuple[int, int, int, int] | None


def stamps(paths: Sequence[str]) -> tuple[Stamp, ...]:
    out: list[Stamp] = []
    for path in paths:
        try:
            st = os.stat(path)  # follows symlinks: a swapped `..data` gives another inode
        except OSError:
            out.append(None)
            continue
        out.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class PolicyWatch:
    """Calls `changed()` when any watched file changes; `changed` returns the files to
    watch from then on (a new policy may name other files) and the stamps they had
    before they were read, so that a change made while reading is noticed next time."""

    def __init__(
        self,
        paths: Sequence[str],
        changed: Callable[[], Awaitable[tuple[Sequence[str], tuple[Stamp, ...]]]],
        poll: float = POLL_SECONDS,
        settle: float = SETTLE_SECONDS,
    ) -> None:
        self._paths = tuple(paths)
        self._stamps = stamps(self._paths)
        self._changed = changed
        self._poll = poll
        self._settle = settle

    def rebase(self, paths: Sequence[str], seen: tuple[Stamp, ...]) -> None:
        """Watch these paths from now on; `seen` is what they were when last read."""
        self._paths = tuple(paths)
        self._stamps = seen

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            paths = self._paths
            now = await asyncio.to_thread(stamps, paths)
            if now == self._stamps:
                continue
            # Let it settle: the same stamps twice, `settle` apart.
            while True:
                await asyncio.sleep(self._settle)
                again = await asyncio.to_thread(stamps, paths)
                if again == now:
                    break
                now = again
            if self._paths != paths or now == self._stamps:
                # Rebased meanwhile: a reload (SIGHUP) read the files since. What it did
                # not read, the next poll finds.
                continue
            changed = [p for p, a, b in zip(paths, self._stamps, now, strict=True) if a != b]
            log.info("policy input changed (%s): reloading", ", ".join(changed))
            self.rebase(*await self._changed())
