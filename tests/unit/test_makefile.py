"""The Makefile: `make run` installs the runtime only; the dev tools come with test and lint."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(target: str, tmp_path: Path) -> str:
    # A venv path that does not exist, so every install step is due; -n prints them.
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def test_run_installs_the_package_without_its_dev_tools(tmp_path: Path) -> None:
    out = dry_run("run", tmp_path)
    assert "pip install --quiet -e .;" in out
    assert "[dev]" not in out


@pytest.mark.parametrize("target", ["venv", "lint", "test-quick"])
def test_the_developer_targets_install_the_dev_tools(target: str, tmp_path: Path) -> None:
    assert "pip install --quiet -e '.[dev]'" in dry_run(target, tmp_path)
