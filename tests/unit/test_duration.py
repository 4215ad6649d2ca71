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


@pytest.mark.parametrize("text", ["\u0663s", "\uff11m", "1\u0663s", "1.\u0663s"])
def test_parse_rejects_digits_other_than_ascii(text: str) -> None:
    # `\d` matched any Unicode digit and float() reads them: `\u0663s` was 3 s.
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_parse_rejects_a_duration_that_overflows() -> None:
    # float() reads 400 nines as inf: every timeout was accepted as "never".
    with pytest.raises(ValueError, match="too long"):
        parse_duration("9" * 400 + "s")


@pytest.mark.parametrize("text", ["36501d", "9" * 300 + "d", "3153600001s"])
def test_parse_rejects_a_duration_over_a_hundred_years(text: str) -> None:
    # Finite, but no timeout is meant by it, and it would overflow a C timeval (review).
    with pytest.raises(ValueError, match="too long: at most 36500d"):
        parse_duration(text)
    assert parse_duration("36500d") == 36500 * 86400


def test_format_keeps_every_digit() -> None:
    # `:g` kept six digits: 1000001 s printed as `1e+06s` (not even a duration).
    assert [format_duration(s) for s in (1000001, 1234567.5, 0.0000125)] == ["1000001s", "1234567.5s", "0.0125ms"]
    assert parse_duration(format_duration(1e-8)) == pytest.approx(1e-8)
