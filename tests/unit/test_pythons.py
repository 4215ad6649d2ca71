"""The Pythons we claim are the ones tested, built for and shipped: one list, kept in step."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _claimed() -> list[str]:
    """The Makefile's PYTHONS: the versions `make test` runs the suite on."""
    found = re.search(r"^PYTHONS \?= (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert found, "Makefile: no `PYTHONS ?= …` line"
    return found[1].split()


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_pyproject_claims_what_make_test_runs() -> None:
    pythons = _claimed()
    oldest = min(pythons, key=_key)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    prefix = "Programming Language :: Python :: "
    classified = [c.removeprefix(prefix) for c in project["project"]["classifiers"] if c.startswith(prefix)]
    assert classified == pythons
    assert project["project"]["requires-python"] == f">={oldest}"
    assert project["tool"]["mypy"]["python_version"] == oldest
    assert project["tool"]["ruff"]["target-version"] == "py" + oldest.replace(".", "")


def test_the_docker_image_runs_a_tested_python() -> None:
    """On a pinned base: a full version tag, for the reader, and the digest, which is what
    Docker pulls (a tag is moved by every rebuild of the official image)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    pinned = re.search(
        r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}$", dockerfile, re.MULTILINE
    )
    assert pinned, "Dockerfile: no `ARG PYTHON_IMAGE=python:X.Y.Z-slim-<debian>@sha256:<digest>`"
    assert pinned[1] in _claimed()
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert bases
    assert all(base == "${PYTHON_IMAGE}" for base in bases), bases


def test_ci_runs_the_readmes_test_command() -> None:
    assert "\nmake test " in (ROOT / "README.md").read_text()
    commands = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert commands[-1] == "make test"
