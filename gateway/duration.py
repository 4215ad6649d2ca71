"""Human durations such as `30s`, `500ms`, `2m`, `1h30m`."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# [0-9], not \d: \d is any Unicode digit (`\u0663s`), which float() reads as well.
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"
EXPECTED = "expected a duration such as 500ms, 30s, 2m, 1h or 90d"
# Nothing the policy times is meant to last longer; past it, a value is a typo, and a
# huge float would overflow the first C timeval it reached (threading, select).
MAX_SECONDS = 100 * 365 * 86400.0


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
    if not math.isfinite(total) or total > MAX_SECONDS:
        # float() reads 400 nines as inf: no timeout or interval is meant by that.
        raise ValueError(f"not a duration: {text!r} (too long: at most 36500d)")
    return total


def format_duration(seconds: float) -> str:
    """The shortest readable spelling, for `gateway check` output."""
    if seconds < 1 and seconds > 0:
        return f"{_number(seconds * 1000)}ms"
    if seconds % 86400 == 0 and seconds >= 86400:
        return f"{_number(seconds / 86400)}d"
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{_number(seconds / 3600)}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{_number(seconds / 60)}m"
    return f"{_number(seconds)}s"


def _number(value: float) -> str:
    """`value` as a duration's number is written: all its digits (`:g` keeps 6, so
    1000001 s showed as `1e+06s`), never an exponent (which the parser refuses)."""
    text = f"{value:.15g}"
    if "e" in text:
        text = f"{value:.15f}".rstrip("0").rstrip(".")
    return text
