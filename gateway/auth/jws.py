"""Strict parsing of a compact JWS (RFC 7515) before any crypto.

Stricter than PyJWT on purpose: non-canonical base64url (padding, stray characters,
non-zero trailing bits) and JSON with repeated keys are refused, not normalised, so a
token's header and claims have one spelling and one meaning. (An ECDSA signature has two
valid forms, s and n-s, by the nature of ECDSA; many signers emit either, so both are
accepted: identify tokens by `jti`, never by their string.) Header members that would let the token
choose its own key (`jku`, `x5u`, `jwk`, `x5c`) are refused outright.
"""

from __future__ import annotations

import binascii
import json
from typing import Any, NamedTuple

from gateway.errors import Reason

# RFC 7515 §4.1: members by which a token names (or carries) its own key.
_KEY_BEARING = frozenset({"jku", "x5u", "jwk", "x5c"})
# RFC 7515 §4.1.4, §4.1.9, §4.1.10: strings when present. `"kid": null` is not "no
# kid" (it would select keys as if none were named), and a non-string `typ` is not a
# type we could compare: a present member of another type makes the token malformed.
_STRING_MEMBERS = ("kid", "typ", "cty")


class Jws(NamedTuple):
    """A parsed, not yet verified, token. Nothing here is trusted until verified.

    (A NamedTuple, not a frozen dataclass: as immutable, and four times cheaper to
    build, which matters on the path every unknown token takes.)"""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes
    alg: str
    kid: str | None


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUE = {c: i for i, c in enumerate(_ALPHABET)}
# How many low bits of the last character carry no data, by len(segment) % 4.
_SPARE_MASK = {0: 0, 2: 0b1111, 3: 0b11}
# base64url to standard base64, byte for byte; every byte outside the base64url
# alphabet (including `+`, `/` and `=`) becomes `*`, which strict decoding refuses.
_TO_STANDARD = bytes(
    b if chr(b) in _ALPHABET[:62] else {ord("-"): ord("+"), ord("_"): ord("/")}.get(b, ord("*")) for b in range(256)
)
_PADDING = (b"", b"", b"==", b"=")


def b64url_decode(segment: str) -> bytes | None:
    """Decode unpadded base64url, or None unless `segment` is its canonical spelling."""
    spare = _SPARE_MASK.get(len(segment) % 4)
    if spare is None or not segment.isascii():
        return None
    # Non-zero spare bits give several spellings of the same bytes: take only one.
    # (Checked on the last character instead of re-encoding the whole segment.)
    if spare and _VALUE.get(segment[-1], 0) & spare:
        return None
    # One C pass to translate, one to decode; strict mode refuses any byte outside
    # the alphabet, so no separate character check is needed.
    data = segment.encode("ascii").translate(_TO_STANDARD) + _PADDING[len(segment) % 4]
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate member")
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


# Built once: json.loads with hooks constructs a new decoder on every call, which cost
# about as much as decoding a token's claims.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)


# How deep a header or claim set may nest objects and arrays. Real ones nest a few levels
# (Keycloak's resource_access.<client>.roles: 3). Our own limit, far below the parser's:
# that one depends on the Python (3.11 refuses 1 000 `[`, 3.13 parses 3 000), and the
# same token must mean the same on every Python we run on.
_MAX_NESTING = 32


def _nests_within(value: dict[str, Any], limit: int) -> bool:
    """Whether containers in `value` nest at most `limit` deep; level by level, linear."""
    level: list[Any] = [value]
    for _ in range(limit):
        level = [v for c in level for v in (c.values() if isinstance(c, dict) else c) if isinstance(v, dict | list)]
        if not level:
            return True
    return False


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = _DECODER.decode(data.decode("utf-8"))
    except (ValueError, RecursionError):  # ValueError covers UnicodeDecodeError, JSONDecodeError
        # RecursionError: nesting deeper than the parser's stack (see _MAX_NESTING).
        return None
    if not isinstance(value, dict):
        return None
    # Nesting deeper than the limit takes more `[` and `{` than that: two C counts spare
    # nearly every token the walk.
    if data.count(b"[") + data.count(b"{") > _MAX_NESTING and not _nests_within(value, _MAX_NESTING):
        return None
    return value


def parse_jws(token: str) -> Jws | Reason:
    """Split, decode and sanity-check a compact JWS. Returns the reason when refused."""
    parts = token.split(".")
    if len(parts) != 3:
        return Reason.MALFORMED_TOKEN
    raw_header, raw_claims, raw_sig = (b64url_decode(p) for p in parts)
    if raw_header is None or raw_claims is None or raw_sig is None:
        return Reason.MALFORMED_TOKEN
    if not parts[0].startswith("eyJ"):
        # Every JOSE library writes `{"` and a member name first, so a token always
        # starts `eyJ`: the access log's JWT redaction relies on that shape. (Checking
        # for `{` alone let `{ "alg": …}` and `{"0": …}` through: `eyAi…`, `eyIw…`.)
        return Reason.MALFORMED_TOKEN
    header = _json_object(raw_header)
    claims = _json_object(raw_claims)
    if header is None or claims is None:
        return Reason.MALFORMED_TOKEN
    alg = header.get("alg")
    if not isinstance(alg, str):
        return Reason.MALFORMED_TOKEN
    for name in _STRING_MEMBERS:
        if name in header and not isinstance(header[name], str):
            return Reason.MALFORMED_TOKEN
    kid = header.get("kid")
    if not _KEY_BEARING.isdisjoint(header):
        return Reason.KEY_IN_TOKEN
    # We implement no JWS extensions, so any `crit` names something we do not
    # understand (RFC 7515 §4.1.11); `b64` (RFC 7797) changes what is signed.
    if "crit" in header or "b64" in header:
        return Reason.UNKNOWN_CRIT
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return Jws(header, claims, signing_input, raw_sig, alg, kid)
