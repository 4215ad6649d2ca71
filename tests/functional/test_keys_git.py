"""`gateway keys generate` never leaves a private key one `git add .` from a commit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.procs import gateway_cmd

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def gateway(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(gateway_cmd(*args), capture_output=True, text=True, timeout=30, check=False, cwd=cwd)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30, check=True, cwd=cwd).stdout


def repo(tmp_path: Path) -> Path:
    git("init", "-q", str(tmp_path / "repo"), cwd=tmp_path)
    return tmp_path / "repo"


def test_a_new_key_directory_ignores_itself(tmp_path: Path) -> None:
    work = repo(tmp_path)
    result = gateway("keys", "generate", "--dir", "keys", cwd=work)
    assert result.returncode == 0, result.stderr
    kid = result.stdout.strip()
    assert (work / "keys" / f"{kid}.key").exists()
    assert (work / "keys" / ".gitignore").read_text().splitlines()[-1] == "*"
    git("add", ".", cwd=work)
    assert git("diff", "--cached", "--name-only", cwd=work) == ""  # nothing of keys/ staged
    # Rotation into the directory it made goes on working.
    assert gateway("keys", "generate", "--dir", "keys", cwd=work).returncode == 0


def test_a_key_is_not_written_where_git_would_stage_it(tmp_path: Path) -> None:
    work = repo(tmp_path)
    (work / "keys").mkdir()  # made by hand: no .gitignore of ours
    result = gateway("keys", "generate", "--dir", "keys", cwd=work)
    assert result.returncode == 1
    assert "git would not ignore a private key there" in result.stderr
    assert "add the directory to .gitignore" in result.stderr
    assert list((work / "keys").glob("*.key")) == []
    assert not (work / "keys" / "jwks.json").exists()


def test_a_directory_the_repository_ignores_is_fine(tmp_path: Path) -> None:
    work = repo(tmp_path)
    (work / "keys").mkdir()
    (work / ".gitignore").write_text("keys/\n")
    result = gateway("keys", "generate", "--dir", "keys", cwd=work)
    assert result.returncode == 0, result.stderr
    assert not (work / "keys" / ".gitignore").exists()  # an existing directory is left as it is


def test_outside_a_work_tree_nothing_is_checked(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    result = gateway("keys", "generate", "--dir", "keys", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
