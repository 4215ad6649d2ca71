"""How many CPUs this process may really use: its affinity mask and its cgroup v2 quota.

`os.cpu_count()` is the host's count. In a container limited to 1.5 CPUs on a 16-core
host, 16 workers would share 1.5 CPUs: each gets throttled by the CFS quota, and latency
suffers rather than throughput growing. So `auto` counts what the scheduler will give us.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class CpuBudget:
    """`count` CPUs to use: the smaller of `affinity` (CPUs we may run on) and the cgroup
    CPU `quota` (in CPUs, None when there is none) rounded up; at least 1."""

    count: int
    affinity: int
    quota: float | None

    @classmethod
    def of(cls, affinity: int, quota: float | None) -> CpuBudget:
        # Rounded up: a quota of 1.5 CPUs is best used by two workers that each idle at
        # times, not by one that can never use the other half.
        count = affinity if quota is None else min(affinity, math.ceil(quota))
        return cls(max(1, count), affinity, quota)

    def describe(self) -> str:
        """`2 CPUs: affinity 4, cgroup quota 1.5`, for `gateway check`."""
        quota = "no cgroup quota" if self.quota is None else f"cgroup quota {round(self.quota, 2):g}"
        return f"{self.count} CPU{'' if self.count == 1 else 's'}: affinity {self.affinity}, {quota}"


def parse_cpu_max(text: str) -> float | None:
    """A cgroup v2 `cpu.max` (`$QUOTA $PERIOD` in µs) as CPUs; None for `max` or anything unreadable."""
    fields = text.split()
    if not fields or fields[0] == "max" or len(fields) > 2:
        return None
    try:
        quota = int(fields[0])
        # The kernel always writes the period; 100 ms is its default should one not.
        period = int(fields[1]) if len(fields) == 2 else 100_000
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def parse_proc_cgroup(text: str) -> str | None:
    """This process's cgroup v2 path from `/proc/self/cgroup` (the `0::/path` line), or None."""
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if hierarchy == "0" and sep and not controllers and path.startswith("/"):
            return path
    return None


def cgroup_quota(cgroup_root: Path, cgroup: str) -> float | None:
    """The smallest CPU quota of `cgroup` and its ancestors up to the root, in CPUs.

    A parent's quota limits all of its children together, so a child's `max` does not
    mean unlimited. Missing or unreadable `cpu.max` files (cgroup v1, the real root, the
    cpu controller not enabled) count as no quota."""
    found: list[float] = []
    leaf = PurePosixPath(cgroup)
    for directory in (leaf, *leaf.parents):
        try:
            text = (cgroup_root / directory.relative_to("/") / "cpu.max").read_text(encoding="ascii")
        except (OSError, ValueError):
            continue
        quota = parse_cpu_max(text)
        if quota is not None:
            found.append(quota)
    return min(found, default=None)


def affinity_count() -> int:
    """CPUs the scheduler may run this process on (a taskset or a cpuset narrows the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # no affinity API (macOS): the host's count is the best guess


def cpu_budget(proc_cgroup: Path = PROC_SELF_CGROUP, cgroup_root: Path = CGROUP_ROOT) -> CpuBudget:
    """This process's CPU budget now. Reads a few small files: call it at load, not per request."""
    try:
        cgroup = parse_proc_cgroup(proc_cgroup.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cgroup = None  # not Linux, or /proc not mounted: no quota we can see
    quota = cgroup_quota(cgroup_root, cgroup) if cgroup is not None else None
    return CpuBudget.of(affinity_count(), quota)


def available_cpus() -> int:
    """The CPUs this process may really use (affinity and cgroup v2 quota), at least 1."""
    return cpu_budget().count
