"""Properties of claim-header rendering (gateway/auth/forward.py) under generated claims.

The contract is README "Forwarded identity headers": split the header on `,`, then
percent-decode each part, and you have the claim (or its elements) back; a value with a
control character or an invalid code point is refused; one that renders empty is absent.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote, unquote_plus, unquote_to_bytes

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.auth.claims import claim_at
from gateway.auth.forward import ClaimHeaders, UnforwardableError, render_claim

# Every code point, lone surrogates and controls included: claims come from JSON, whose
# `\uXXXX` escapes can spell any of them.
_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    _ANY_TEXT,
    st.sampled_from([" ", " a ", "a,b", "%", "%25", "caf\u00e9, ltd", "\u2028", "\x7f", "a\r\nb", "\ud800", "+"]),
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_ANY_TEXT, inner, max_size=3)),
    max_leaves=10,
)


def _text(value: Any) -> str:
    """A claim (or array element) as README says it is written, before escaping."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _refusable(text: str) -> bool:
    """README: a control character (C0 or DEL) or an invalid code point is refused."""
    return re.search(r"[\x00-\x1f\x7f\ud800-\udfff]", text) is not None


@given(_JSON)
@example("caf\u00e9, ltd")
@example(["a,b", "c"])
@example("ann+ops@example.com")
@example([" a ", ""])
@example({"k": "v\n"})
def test_a_rendered_claim_decodes_back_or_is_refused(value: Any) -> None:
    elements = value if isinstance(value, list) else [value]
    texts = [_text(v) for v in elements]
    try:
        rendered = render_claim(value)
    except UnforwardableError:
        assert any(_refusable(t) for t in texts), value
        return
    assert not any(_refusable(t) for t in texts), value
    # A valid header value, sent as it is by any HTTP writer and read back unchanged:
    # visible ASCII and inner spaces only (no CR, LF, NUL, other controls or non-ASCII),
    # and no outer whitespace, which parsers trim (RFC 9110 §5.5).
    assert re.fullmatch(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?|", rendered), rendered
    if rendered == "":
        # Not forwarded (README): only values that have nothing to say render empty.
        assert texts in ([""], []), value
        return
    parts = rendered.split(",")
    assert [unquote(p, errors="strict") for p in parts] == texts
    # The same with a decoder working on bytes, as a backend in another language would.
    assert [unquote_to_bytes(p).decode("utf-8") for p in parts] == texts
    # And with a form decoder, which reads `+` as a space (Java's URLDecoder).
    assert [unquote_plus(p, errors="strict") for p in parts] == texts


@given(_JSON, _JSON)
def test_distinct_claims_render_distinct_headers(a: Any, b: Any) -> None:
    """Two claims whose elements differ never share a header: a backend cannot be made
    to read one principal as another."""
    elements_a = [_text(v) for v in (a if isinstance(a, list) else [a])]
    elements_b = [_text(v) for v in (b if isinstance(b, list) else [b])]
    try:
        ra, rb = render_claim(a), render_claim(b)
    except UnforwardableError:
        return
    if ra == rb and ra:
        assert elements_a == elements_b


_NAMES = st.sampled_from(["sub", "org", "org.id", "roles", "https://example.com/roles"])
_PAIRS = (("sub", "X-Auth-Subject"), ("org.id", "X-Auth-Org"), ("roles", "X-Auth-Roles"))


@given(st.dictionaries(_NAMES | _ANY_TEXT, _JSON, max_size=4), st.dictionaries(_NAMES, _JSON, max_size=2))
def test_headers_are_the_rendered_claims(claims: dict[str, Any], org: dict[str, Any]) -> None:
    claims.setdefault("org", org)
    headers = ClaimHeaders(pairs=_PAIRS, provider_header="X-Auth-Provider")
    expected: list[tuple[str, str]] = [("X-Auth-Provider", "idp")]
    refused = False
    for path, name in _PAIRS:
        value = claim_at(claims, path)
        if value is None:
            continue
        try:
            text = render_claim(value)
        except UnforwardableError:
            refused = True
            continue
        if text:
            expected.append((name, text))
    if refused:
        # One claim that cannot be written refuses the whole set, never drops a header.
        with pytest.raises(UnforwardableError):
            headers.render("idp", claims)
        return
    assert headers.render("idp", claims) == expected
