"""Properties of bearer-token extraction (gateway/auth/extract.py) under generated requests."""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth.extract import QUERY_PARAM, Extracted, bearer_token, extract_token
from gateway.errors import Reason

# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token; the scheme is case-insensitive
# (RFC 9110 §11.1), and only in ASCII: `\u212a` (Kelvin) lower-cases to `k`.
_GRAMMAR = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")
_B64TOKEN = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
_EXTRACT_REASONS = frozenset(
    {Reason.MULTIPLE_AUTHORIZATION, Reason.MALFORMED_AUTHORIZATION, Reason.QUERY_TOKEN, Reason.TOKEN_TOO_LARGE}
)

# "bearer" in every mix of cases.
_BEARER = st.lists(st.booleans(), min_size=6, max_size=6).map(
    lambda upper: "".join(c.upper() if u else c for c, u in zip("bearer", upper, strict=True))
)
_SCHEMES = st.one_of(
    _BEARER,
    st.text(alphabet="bBeEaArR", min_size=5, max_size=7),
    st.sampled_from(["Bearer", "Basic", "Bearr", "Bearer\t", "\u212aearer", "bearer\u00a0", ""]),
)
_TOKENS = st.builds(
    lambda body, pad: body + "=" * pad, st.text(alphabet=_B64TOKEN, min_size=1, max_size=40), st.integers(0, 3)
)
_NOISE = st.text(alphabet=_B64TOKEN + "= \t\r\n\x00\u00e9,;\"'\udcff\u00a0", max_size=40)
_VALUES = st.one_of(
    st.builds(lambda s, sp, t: s + " " * sp + t, _SCHEMES, st.integers(0, 3), st.one_of(_TOKENS, _NOISE)),
    st.text(max_size=50),
)


@given(_BEARER, st.integers(1, 4), _TOKENS)
def test_well_formed_credentials_give_exactly_the_token(scheme: str, spaces: int, token: str) -> None:
    assert bearer_token(scheme + " " * spaces + token) == token


@given(_VALUES)
@example("Bearer a\udcff")
@example("\u212aearer abc")
@example("Bearer ===")
def test_accepts_exactly_the_rfc6750_grammar(value: str) -> None:
    m = _GRAMMAR.fullmatch(value)
    assert bearer_token(value) == (m.group(1) if m else None)


_QUERY_NAMES = st.sampled_from([QUERY_PARAM, "access%5Ftoken", "access_token+", "x", "q", "ACCESS_TOKEN"])
_QUERIES = st.lists(
    st.builds(lambda n, v: f"{n}={v}", _QUERY_NAMES, st.text(alphabet=_B64TOKEN + "%+", max_size=12))
    | st.text(max_size=10),
    max_size=4,
).map("&".join)


@given(st.lists(_VALUES, max_size=3), _QUERIES, st.booleans(), st.integers(1, 60))
def test_extraction_gives_a_token_or_a_closed_reason(
    values: list[str], query: str, allow_query: bool, max_bytes: int
) -> None:
    headers = CIMultiDictProxy(CIMultiDict([("Authorization", v) for v in values]))
    result = extract_token(headers, query, allow_query=allow_query, max_bytes=max_bytes)
    assert isinstance(result, Extracted) or result in _EXTRACT_REASONS, result
    if len(values) > 1:
        assert result == Reason.MULTIPLE_AUTHORIZATION
    if not isinstance(result, Extracted):
        return
    if result.token is not None:
        assert len(result.token) <= max_bytes
    if values and bearer_token(values[0]) is not None:
        # A header token is passed on exactly; the query is then left as it came.
        assert result.token == bearer_token(values[0])
        assert result.query == query
    elif values:
        # Anything else in the header is some other scheme, never a half-read bearer.
        assert values[0].split(maxsplit=1)[:1] != ["bearer"]
        assert not values[0].lower().startswith("bearer ")
    if result.token is None:
        assert result.query == query
