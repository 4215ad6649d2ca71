"""Config errors that name the file, the line, the field and what was expected."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """`('routes', 2, 'upstream')` -> `routes[2].upstream`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # A key is whatever the file spelled: one with a newline or another control
            # character would split the report (a line without its `file:line:`) or
            # rewrite the terminal. Quoted and escaped, as repr() writes it.
            out += ("." if out else "") + (part if part.isprintable() else repr(part))
    return out or "(top level)"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the policy, located by its field path."""

    path: Path
    message: str


class ConfigError(ValueError):
    """The policy file is invalid. `str()` is the full, operator-facing report."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = tuple(lines)


class CompileError(Exception):
    """Raised by compile steps; the loader turns it into a located ConfigError."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = tuple(problems)
