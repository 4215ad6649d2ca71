from __future__ import annotations

import pytest

from gateway.duration import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("500ms", 0.5), ("2m", 120), ("1h30m", 5400), ("90d", 90 * 86400), ("1.5s", 1.5)],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "s", "30 s", "-1s", "1y", "1s2"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_format() -> None:
    assert [format_duration(s) for s in (0.25, 5, 120, 7200, 86400 * 90)] == ["250ms", "5s", "2m", "2h", "90d"]
