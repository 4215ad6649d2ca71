"""Properties of duration parsing and display (gateway/duration.py) under generated text."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.duration import DURATION_PATTERN, MAX_SECONDS, format_duration, parse_duration

# The documented grammar (`500ms`, `30s`, `1h30m`), in ASCII digits only.
_GRAMMAR = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d))+")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Up to 10**4 of any unit, four parts at most: within MAX_SECONDS (100 years).
_NUMBERS = st.one_of(
    st.integers(0, 10**4).map(str),
    st.builds(lambda a, b: f"{a}.{b}", st.integers(0, 10**4), st.text("0123456789", min_size=1, max_size=4)),
)
_PARTS = st.lists(st.tuples(_NUMBERS, st.sampled_from(sorted(_UNITS))), min_size=1, max_size=4)


def _parse(text: str) -> float | None:
    try:
        value = parse_duration(text)
    except ValueError:
        return None
    assert math.isfinite(value), (text, value)
    assert value >= 0, (text, value)
    return value


@given(st.one_of(st.text(max_size=12), st.text("0123456789.msdh\u0663\uff11 -e+", max_size=12)))
@example("\u0663s")  # ARABIC-INDIC DIGIT THREE: a digit to `\d` and to float()
@example("9" * 400 + "s")  # float() gives inf
@example("1e5s")
def test_accepts_exactly_the_grammar(text: str) -> None:
    well_formed = _GRAMMAR.fullmatch(text) is not None
    total = sum(float(n) * _UNITS[u] for n, u in re.findall(r"([0-9.]+)(ms|s|m|h|d)", text)) if well_formed else 0
    # Well-formed and at most MAX_SECONDS (an overflow to inf is refused, not read as
    # "forever", and so is anything past a hundred years).
    assert (_parse(text) is not None) == (well_formed and total <= MAX_SECONDS), text
    # The JSON schema's pattern says the same (it is what editors check against).
    assert (re.search(DURATION_PATTERN, text) is not None) == (_GRAMMAR.fullmatch(text) is not None), text


@given(_PARTS)
def test_a_duration_is_the_sum_of_its_parts(parts: list[tuple[str, str]]) -> None:
    text = "".join(n + u for n, u in parts)
    assert _parse(text) == pytest.approx(sum(float(n) * _UNITS[u] for n, u in parts), rel=1e-12)


@given(_PARTS)
@example([("1000001", "s")])
@example([("1234567", "s")])
@example([("0", "s")])
def test_what_gateway_check_prints_reads_back_as_the_same_duration(parts: list[tuple[str, str]]) -> None:
    seconds = _parse("".join(n + u for n, u in parts))
    assert seconds is not None
    shown = format_duration(seconds)
    assert _parse(shown) == pytest.approx(seconds, rel=1e-9), shown
