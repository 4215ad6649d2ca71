"""Keep private keys out of git: a key directory we create ignores itself, and a key is
never written where `git add .` would stage it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# What Python's venv writes into a new environment: a directory that ignores itself,
# whatever the repository's own .gitignore says.
GITIGNORE = "# Created by `gateway keys generate`: private keys must never be committed.\n*\n"


class UnignoredKeyError(Exception):
    """A private key would be written into a git work tree where git would not ignore it."""


def ignore_new_directory(directory: Path) -> None:
    """Write `directory/.gitignore` ignoring everything (call only for a directory just made)."""
    (directory / ".gitignore").write_text(GITIGNORE)


def check_ignored(key_path: Path) -> None:
    """Raise UnignoredKeyError if `key_path` is in a git work tree and git would not ignore it.

    Without git, or outside a work tree, there is nothing to check.
    """
    git = shutil.which("git")
    if git is None:
        return
    try:
        # `check-ignore` takes paths that do not exist yet. Exit 0: ignored; 1: not
        # ignored; 128: not a work tree (or another git error), nothing to guard.
        result = subprocess.run(  # noqa: S603 (git from PATH, fixed arguments, a path as data after --)
            [git, "check-ignore", "-q", "--", key_path.name],
            cwd=key_path.parent,
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return
    if result.returncode == 1:
        raise UnignoredKeyError(
            f"{key_path.parent} is in a git work tree and git would not ignore a private key there "
            f"(one `git add .` from a commit): add the directory to .gitignore, or put "
            f"a .gitignore containing '*' in it, then run this again"
        )
