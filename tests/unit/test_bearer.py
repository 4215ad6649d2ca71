"""The bearer-token scanner agrees with RFC 6750's grammar, written as a regex, on every input."""

from __future__ import annotations

import random
import re

from gateway.auth.extract import bearer_token

# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token (the scheme is case-insensitive).
GRAMMAR = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")


def reference(value: str) -> str | None:
    m = GRAMMAR.fullmatch(value)
    return m.group(1) if m else None


def test_agrees_with_the_grammar_on_random_and_edge_inputs() -> None:
    rng = random.Random(11)  # noqa: S311 - reproducible test inputs, not secrets
    cases = [
        "", "Bearer", "Bearer ", "Bearer  ", "bearer a", "BEARER a", "BeArEr a.b.c", "Bearer  a", "Bearer\ta",
        "Bearer a ", " Bearer a", "Bearer a=", "Bearer a==", "Bearer =", "Bearer a=b", "Bearer a\n", "Bearer é",
        "Bearer a\x00", "Bearera", "Basic abc", "Bearer a\udcff", "Bearer ~+/-._", "Bearer a,b",
        "\u212aearer a", "BEARER\u212a a",
    ]  # fmt: skip
    token_chars = "ABCxyz019-._~+/"
    noise = token_chars + "= \t\n\x00é,;\"'\udcff"
    for _ in range(6000):
        scheme = rng.choice(["Bearer", "bearer", "BEARER", "Bearer", "Bearer", "Bearr", "Bearer\t", ""])
        spaces = " " * rng.choice([0, 1, 1, 1, 2, 3])
        alphabet = token_chars if rng.random() < 0.6 else noise
        body = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
        pad = "=" * rng.choice([0, 0, 0, 1, 2])
        cases.append(scheme + spaces + body + pad)
    accepted = 0
    for case in cases:
        assert bearer_token(case) == reference(case), repr(case)
        accepted += reference(case) is not None
    # Both outcomes were exercised, many times.
    assert 1000 < accepted < len(cases) - 1000
