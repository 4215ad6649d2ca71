"""`auto` workers: the affinity mask and the cgroup v2 CPU quota, from files under a root."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.runtime.cpus import (
    CpuBudget,
    affinity_count,
    available_cpus,
    cgroup_quota,
    cpu_budget,
    parse_cpu_max,
    parse_proc_cgroup,
)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("max 100000\n", None),
        ("max\n", None),
        ("150000 100000\n", 1.5),
        ("200000 100000\n", 2.0),
        ("50000 100000\n", 0.5),
        ("100000 50000\n", 2.0),
        ("50000\n", 0.5),  # period left out: the kernel's default 100 ms
        ("", None),
        ("0 100000\n", None),
        ("-1 100000\n", None),
        ("100000 0\n", None),
        ("lots 100000\n", None),
        ("1 2 3\n", None),
    ],
)
def test_cpu_max(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("0::/kubepods.slice/pod-1/cri-containerd-2.scope\n", "/kubepods.slice/pod-1/cri-containerd-2.scope"),
        ("0::/\n", "/"),
        # Hybrid: v1 controllers beside an (empty) v2 hierarchy; the v2 line is still it.
        ("12:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/docker/abc\n", "/docker/abc"),
        ("12:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n", None),  # v1 only
        ("", None),
        ("0:cpu:/x\n", None),
    ],
)
def test_proc_cgroup(text: str, path: str | None) -> None:
    assert parse_proc_cgroup(text) == path


def cgroups(root: Path, quotas: dict[str, str]) -> Path:
    """A cgroup tree under `root`: relative directory -> its cpu.max text."""
    for directory, text in quotas.items():
        (root / directory).mkdir(parents=True, exist_ok=True)
        (root / directory / "cpu.max").write_text(text)
    return root


def test_quota_of_the_cgroup_itself(tmp_path: Path) -> None:
    root = cgroups(tmp_path, {"pod/c": "150000 100000\n"})
    assert cgroup_quota(root, "/pod/c") == 1.5


def test_a_parent_quota_limits_a_child_without_one(tmp_path: Path) -> None:
    root = cgroups(tmp_path, {"pod": "250000 100000\n", "pod/c": "max 100000\n"})
    assert cgroup_quota(root, "/pod/c") == 2.5


def test_the_smallest_quota_on_the_way_up_wins(tmp_path: Path) -> None:
    root = cgroups(tmp_path, {".": "800000 100000\n", "a": "100000 100000\n", "a/b": "300000 100000\n", "a/b/c": "max"})
    assert cgroup_quota(root, "/a/b/c") == 1.0
    assert cgroup_quota(root, "/a/b") == 1.0
    # A sibling's quota is not ours.
    root = cgroups(tmp_path, {"x": "50000 100000\n"})
    assert cgroup_quota(root, "/a/b/c") == 1.0


def test_namespace_root_counts(tmp_path: Path) -> None:
    # With a cgroup namespace the container's own cgroup is `/`, its cpu.max at the top.
    root = cgroups(tmp_path, {".": "150000 100000\n"})
    assert cgroup_quota(root, "/") == 1.5


def test_no_cpu_max_anywhere_is_no_quota(tmp_path: Path) -> None:
    (tmp_path / "pod" / "c").mkdir(parents=True)
    assert cgroup_quota(tmp_path, "/pod/c") is None
    assert cgroup_quota(tmp_path / "absent", "/pod/c") is None


def test_an_unreadable_cpu_max_is_skipped(tmp_path: Path) -> None:
    root = cgroups(tmp_path, {"pod": "200000 100000\n"})
    (root / "pod" / "c" / "cpu.max").mkdir(parents=True)  # reading a directory: OSError
    (root / "pod" / "c" / "d").mkdir()
    (root / "pod" / "c" / "d" / "cpu.max").write_bytes(b"\xff\xfe")
    assert cgroup_quota(root, "/pod/c/d") == 2.0


@pytest.mark.parametrize(
    ("affinity", "quota", "count"),
    [
        (4, None, 4),
        (4, 1.5, 2),  # rounded up
        (4, 2.0, 2),
        (4, 0.2, 1),  # never below one
        (2, 8.0, 2),  # the affinity mask is the smaller
        (1, 1.5, 1),
        (16, 16.0, 16),
    ],
)
def test_budget_is_the_smaller_rounded_up(affinity: int, quota: float | None, count: int) -> None:
    assert CpuBudget.of(affinity, quota) == CpuBudget(count, affinity, quota)


def test_describe() -> None:
    assert CpuBudget.of(4, 1.5).describe() == "2 CPUs: affinity 4, cgroup quota 1.5"
    assert CpuBudget.of(1, None).describe() == "1 CPU: affinity 1, no cgroup quota"
    assert CpuBudget.of(8, 1 / 3).describe() == "1 CPU: affinity 8, cgroup quota 0.33"


def test_budget_from_files(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/pod/c\n")
    root = cgroups(tmp_path / "fs", {"pod": "100000 100000\n", "pod/c": "max 100000\n"})
    assert cpu_budget(proc, root) == CpuBudget(1, affinity_count(), 1.0)
    # cgroup v1: the same files, but no v2 line in /proc/self/cgroup.
    proc.write_text("3:cpu,cpuacct:/pod/c\n")
    assert cpu_budget(proc, root) == CpuBudget(affinity_count(), affinity_count(), None)
    assert cpu_budget(tmp_path / "missing", root).quota is None


def test_this_process() -> None:
    budget = cpu_budget()
    assert 1 <= budget.count <= budget.affinity
    assert available_cpus() == budget.count
