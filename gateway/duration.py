"""Human durations such as `30s`, `500ms`, `2m`, `1h30m`."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
DURATION_PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"
EXPECTED = "expected a duration such as 500ms, 30s, 2m, 1h or 90d"


def parse_duration(text: str) -> float:
    """Return seconds for a duration string; raise ValueError naming what was expected."""
    pos = 0
    total = 0.0
    if not isinstance(text, str) or not text:
        raise ValueError(f"not a duration: {text!r} ({EXPECTED})")
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None:
            raise ValueError(f"not a duration: {text!r} ({EXPECTED})")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total


def format_duration(seconds: float) -> str:
    """The shortest readable spelling, for `gateway check` output."""
    if seconds < 1 and seconds > 0:
        return f"{seconds * 1000:g}ms"
    if seconds % 86400 == 0 and seconds >= 86400:
        return f"{seconds / 86400:g}d"
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds / 3600:g}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"
