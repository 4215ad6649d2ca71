"""Properties of JWT removal from logged text (gateway/obs/jwtshape.py, redact.py)."""

from __future__ import annotations

import base64
import json

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.obs.jwtshape import without_jwts
from gateway.obs.redact import MARKER, Redactor

_REDACTOR = Redactor()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# A token's parts as a JOSE library writes them: a JSON object whose first member name
# starts with a letter (`{"a…` is `eyJ…`; parse_jws refuses any other start), then bytes.
_HEADER = st.dictionaries(
    st.text("abcdefghijklmnopqrstuvwxyzABCXYZ_", min_size=1, max_size=5), st.text(max_size=8), min_size=1, max_size=3
).map(lambda d: _b64(json.dumps(d).encode()))
_PART = st.binary(min_size=6, max_size=40).map(_b64)
# Dots as sent, or escaped (a token inside a URL-encoded value).
_DOT = st.sampled_from([".", ".", "%2E", "%2e"])
# Text around the token: anything, including base64url runs that extend its chain.
_CONTEXT = st.text(max_size=12) | st.text("ABCeyJ.-_%2E/?&= ", max_size=12)


@st.composite
def _logged(draw: st.DrawFn) -> tuple[str, list[str]]:
    header, payload, signature = draw(_HEADER), draw(_PART), draw(_PART)
    parts = [header, payload, signature]
    if draw(st.booleans()):  # a JWE: five parts
        parts += [draw(_PART), draw(_PART)]
    token = parts[0] + "".join(draw(_DOT) + p for p in parts[1:])
    return draw(_CONTEXT) + token + draw(_CONTEXT), parts[1:]


@given(_logged())
@example(("x=eyJhIjoiYiJ9.cGF5bG9hZA.c2lnbmF0dXJl&y", ["cGF5bG9hZA", "c2lnbmF0dXJl"]))
@example(("eyJa.eyJhIjoiYiJ9%2ecGF5bG9hZA%2Ec2lnbmF0dXJl", ["cGF5bG9hZA", "c2lnbmF0dXJl"]))
def test_no_part_of_a_token_survives(logged: tuple[str, list[str]]) -> None:
    text, secrets = logged
    for out in (without_jwts(text, MARKER), _REDACTOR.text(text), _REDACTOR.target("/p/" + text)):
        for secret in secrets:
            # Parts after the first are the claims and the signature: none may be logged.
            # (Six bytes at least: eight characters that cannot occur by chance.)
            assert secret not in out, (text, out)


@given(st.text(max_size=60), st.booleans())
def test_text_without_eyj_is_left_alone(text: str, cut: bool) -> None:
    if "eyJ" not in text:
        assert without_jwts(text, MARKER, cut) == text


@given(st.text("eyJ.%2E-_aZ09", max_size=80), st.booleans())
def test_what_is_kept_is_the_text_in_order(text: str, cut: bool) -> None:
    # Redaction only replaces chains: the pieces outside them come through in order.
    out = without_jwts(text, MARKER, cut)
    pieces = out.split(MARKER)
    pos = 0
    for piece in pieces:
        found = text.find(piece, pos)
        assert found >= 0, (text, out)
        pos = found + len(piece)
