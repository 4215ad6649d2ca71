"""Properties of compact JWS parsing (gateway/auth/jws.py) under generated tokens."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.auth.jws import Jws, b64url_decode, parse_jws
from gateway.errors import Reason

# What parse_jws may refuse with; anything else (or any exception) is a bug.
_PARSE_REASONS = frozenset({Reason.MALFORMED_TOKEN, Reason.KEY_IN_TOKEN, Reason.UNKNOWN_CRIT})
# One real key for the whole module: generating one per example would dominate the run.
_KEY = ed25519.Ed25519PrivateKey.generate()
_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _parse(token: str) -> Jws | Reason:
    result = parse_jws(token)
    assert isinstance(result, Jws) or result in _PARSE_REASONS, result
    # What the access log's JWT redaction looks for (jws.py, obs/jwtshape.py).
    assert not isinstance(result, Jws) or token.startswith("eyJ"), token
    return result


# JSON values as a token may carry them: no NaN or infinities (JSON has none), integers
# well inside the parser's digit limit, nesting within the module's limit of 32.
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)
_OBJECTS = st.dictionaries(st.text(max_size=8), _JSON, max_size=4)
# Header members parse_jws refuses on purpose (key-bearing, extensions) are left out:
# they are checked below, one property each. `kid`, `typ` and `cty` must be strings
# when present (jws.py), so only the fixed part of a header holds them.
_REFUSED_MEMBERS = frozenset({"jku", "x5u", "jwk", "x5c", "crit", "b64"})
_TYPED_MEMBERS = frozenset({"alg", "kid", "typ", "cty"})
_HEADERS = st.fixed_dictionaries(
    {"alg": st.just("EdDSA")},
    optional={"kid": st.text(max_size=10), "typ": st.sampled_from(["JWT", "at+jwt", "application/at+jwt"])},
).flatmap(
    lambda fixed: st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in _TYPED_MEMBERS and k not in _REFUSED_MEMBERS), _JSON, max_size=3
    ).map(lambda extra: {**fixed, **extra})
)
_SEPARATORS = st.sampled_from([(",", ":"), (", ", ": ")])
# The refusals below each take one edit of a generated token: fewer examples cover
# them, and keep this file at a few seconds (generating headers dominates its time).
_FEWER = settings(max_examples=60)


def _encode(value: dict[str, Any], separators: tuple[str, str], ascii_only: bool) -> bytes:
    return json.dumps(value, separators=separators, ensure_ascii=ascii_only).encode()


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def _signed(header: bytes, payload: bytes) -> tuple[str, bytes]:
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    signature = _KEY.sign(signing_input.encode())
    return f"{signing_input}.{_b64(signature)}", signature


@given(st.text(max_size=80))
@example("..")
@example("eyJ.eyJ.")
def test_any_text_gives_a_jws_or_a_parse_reason(token: str) -> None:
    _parse(token)


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=4))
def test_any_segments_give_a_jws_or_a_parse_reason(segments: list[bytes]) -> None:
    _parse(".".join(_b64(s) for s in segments))


@given(_JSON, _JSON, st.binary(max_size=70))
@example({"alg": "x", "kid": None}, {}, b"")
@example({"0": 1, "alg": "x"}, {}, b"")  # `eyIw…`: not the shape the access log redacts
@example({"alg": "x", "a": _nested(40)}, {}, b"")
def test_any_json_gives_a_jws_or_a_parse_reason(header: Any, payload: Any, signature: bytes) -> None:
    _parse(f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}.{_b64(signature)}")


@given(st.integers(0, 5000), st.sampled_from("[{"), st.booleans())
@example(3000, "[", False)
def test_any_nesting_gives_a_jws_or_a_parse_reason(depth: int, opener: str, in_header: bool) -> None:
    # Deeper than json.dumps (or the parser's stack) goes: written by hand.
    closer = "]" if opener == "[" else "}"
    inner = (opener if opener == "[" else '{"a":') * depth + "0" + closer * depth
    nested = f'{{"alg":"x","n":{inner}}}'.encode()
    header, payload = (nested, b"{}") if in_header else (b'{"alg":"x"}', nested)
    _parse(f"{_b64(header)}.{_b64(payload)}.")


@given(_HEADERS, _OBJECTS, _SEPARATORS, st.booleans())
def test_canonical_tokens_round_trip(
    header: dict[str, Any], payload: dict[str, Any], separators: tuple[str, str], ascii_only: bool
) -> None:
    raw_header, raw_payload = _encode(header, separators, ascii_only), _encode(payload, separators, ascii_only)
    token, signature = _signed(raw_header, raw_payload)
    parsed = _parse(token)
    assert isinstance(parsed, Jws), parsed
    assert parsed.header == header
    assert parsed.claims == payload
    assert parsed.alg == "EdDSA"
    assert parsed.kid == header.get("kid")
    assert parsed.signature == signature
    assert parsed.signing_input == token.rpartition(".")[0].encode()
    # An independent verifier agrees on what was signed and what it says.
    verified = jwt.api_jws.decode_complete(token, _KEY.public_key(), algorithms=["EdDSA"])
    assert verified["header"] == header
    assert json.loads(verified["payload"]) == payload


@_FEWER
@given(_HEADERS, _OBJECTS, st.integers(0, 2), st.sampled_from(["=", "==", "+", "/", " ", "\n", "\u00e9"]))
def test_other_spellings_of_a_token_are_refused(
    header: dict[str, Any], payload: dict[str, Any], which: int, extra: str
) -> None:
    token, _ = _signed(_encode(header, (",", ":"), True), _encode(payload, (",", ":"), True))
    parts = token.split(".")
    parts[which] += extra
    assert _parse(".".join(parts)) == Reason.MALFORMED_TOKEN


@_FEWER
@given(_HEADERS, st.sampled_from(sorted(_REFUSED_MEMBERS)), _JSON)
def test_key_bearing_and_extension_members_are_refused(header: dict[str, Any], member: str, value: Any) -> None:
    token, _ = _signed(_encode({**header, member: value}, (",", ":"), True), b"{}")
    expected = Reason.UNKNOWN_CRIT if member in ("crit", "b64") else Reason.KEY_IN_TOKEN
    assert _parse(token) == expected


@_FEWER
@given(_HEADERS, st.data(), _JSON)
def test_a_repeated_header_member_is_refused(header: dict[str, Any], data: st.DataObject, value: Any) -> None:
    member = data.draw(st.sampled_from(sorted(header)))
    text = _encode(header, (",", ":"), True)[:-1] + f",{json.dumps(member)}:{json.dumps(value)}}}".encode()
    token, _ = _signed(text, b"{}")
    assert _parse(token) == Reason.MALFORMED_TOKEN


@given(st.binary(max_size=64))
def test_b64url_round_trips(data: bytes) -> None:
    assert b64url_decode(_b64(data)) == data


@given(st.text(alphabet=_B64URL + "=+/ .", max_size=24) | st.text(max_size=12))
@example("QQ")
@example("QR")
def test_b64url_accepts_one_spelling_only(segment: str) -> None:
    data = b64url_decode(segment)
    if data is not None:
        assert _b64(data) == segment
