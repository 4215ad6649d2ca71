"""Strict parsing of a compact JWS (RFC 7515) before any crypto.

Stricter than PyJWT on purpose: non-canonical base64url (padding, stray characters,
non-zero trailing bits) and JSON with repeated keys are refused, not normalised, so a
token's header and claims have one spelling and one meaning. (An ECDSA signature has two
valid forms, s and n-s, by the nature of ECDSA; many signers emit either, so both are
accepted: identify tokens by `jti`, never by their string.) Header members that would let the token
choose its own key (`jku`, `x5u`, `jwk`, `x5c`) are refused outright.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from gateway.errors import Reason

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
# RFC 7515 §4.1: members by which a token names (or carries) its own key.
_KEY_BEARING = frozenset({"jku", "x5u", "jwk", "x5c"})


@dataclass(frozen=True, slots=True)
class Jws:
    """A parsed, not yet verified, token. Nothing here is trusted until verified."""

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


def b64url_decode(segment: str) -> bytes | None:
    """Decode unpadded base64url, or None unless `segment` is its canonical spelling."""
    spare = _SPARE_MASK.get(len(segment) % 4)
    if spare is None or _SEGMENT.fullmatch(segment) is None:
        return None
    # Non-zero spare bits give several spellings of the same bytes: take only one.
    # (Checked on the last character instead of re-encoding the whole segment.)
    if spare and _VALUE[segment[-1]] & spare:
        return None
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("duplicate member")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


# Built once: json.loads with hooks constructs a new decoder on every call, which cost
# about as much as decoding a token's claims.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = _DECODER.decode(data.decode("utf-8"))
    except (ValueError, RecursionError):  # ValueError covers UnicodeDecodeError, JSONDecodeError
        # RecursionError: a few thousand `[` nest deeper than the parser's stack.
        return None
    return value if isinstance(value, dict) else None


def parse_jws(token: str) -> Jws | Reason:
    """Split, decode and sanity-check a compact JWS. Returns the reason when refused."""
    parts = token.split(".")
    if len(parts) != 3:
        return Reason.MALFORMED_TOKEN
    raw_header, raw_claims, raw_sig = (b64url_decode(p) for p in parts)
    if raw_header is None or raw_claims is None or raw_sig is None:
        return Reason.MALFORMED_TOKEN
    if not raw_header.startswith(b"{"):
        # Every JOSE library writes `{"` first, so a token always starts `eyJ`: the
        # access log's JWT redaction relies on that shape.
        return Reason.MALFORMED_TOKEN
    header = _json_object(raw_header)
    claims = _json_object(raw_claims)
    if header is None or claims is None:
        return Reason.MALFORMED_TOKEN
    alg = header.get("alg")
    kid = header.get("kid")
    if not isinstance(alg, str) or not (kid is None or isinstance(kid, str)):
        return Reason.MALFORMED_TOKEN
    if not _KEY_BEARING.isdisjoint(header):
        return Reason.KEY_IN_TOKEN
    # We implement no JWS extensions, so any `crit` names something we do not
    # understand (RFC 7515 §4.1.11); `b64` (RFC 7797) changes what is signed.
    if "crit" in header or "b64" in header:
        return Reason.UNKNOWN_CRIT
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return Jws(header, claims, signing_input, raw_sig, alg, kid)
