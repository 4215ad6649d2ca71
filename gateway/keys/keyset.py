"""Verification keys bound to what they may verify, and immutable sets of them.

A key's *kind* (RSA, an EC curve, an EdDSA curve, or an HMAC secret) is fixed when it is
parsed; an algorithm is only ever tried with a key of a kind it fits, so a token cannot
talk the gateway into verifying HS256 with an RSA public key.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from cryptography.x509 import load_pem_x509_certificate

MIN_RSA_BITS = 2048
# RSA public exponents: 65537 (F4) or larger, odd, and below 2**32. A small exponent
# (3, or 1, which makes "encryption" the identity) has a history of signature forgeries
# against lax padding checks (Bleichenbacher 2006); an even one is not RSA at all; a huge
# one makes every verification as slow as a private-key operation. Real keys use 65537.
MIN_RSA_EXPONENT = 65537
MAX_RSA_EXPONENT = 2**32 - 1

# Algorithm -> the key kinds it may be used with.
ALG_KINDS: Mapping[str, frozenset[str]] = {
    **{a: frozenset({"RSA"}) for a in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": frozenset({"EC-P-256"}),
    "ES384": frozenset({"EC-P-384"}),
    "ES512": frozenset({"EC-P-521"}),
    "EdDSA": frozenset({"OKP-Ed25519", "OKP-Ed448"}),
    **{a: frozenset({"oct"}) for a in ("HS256", "HS384", "HS512")},
}
_PUBLIC_MEMBERS = frozenset({"kty", "crv", "x", "y", "n", "e", "kid", "alg", "use", "key_ops"})
_CURVES = {"secp256r1": "EC-P-256", "secp384r1": "EC-P-384", "secp521r1": "EC-P-521"}


class UnusableKeyError(ValueError):
    """A key that cannot be used; the message says why (never the key material)."""


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """One public key (or HMAC secret), with the algorithms it may verify."""

    kid: str | None
    kind: str
    alg: str | None  # the JWK's own `alg`, binding it to exactly one algorithm
    key: Any = field(repr=False)
    # The public JWK as read (for publishing a key set); None for PEM keys and secrets.
    jwk: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    def fits(self, alg: str) -> bool:
        return self.kind in ALG_KINDS.get(alg, frozenset()) and (self.alg is None or self.alg == alg)


# Edwards-curve public keys of small order (RFC 8032 §5.1.7, §5.2.7 leave them to the
# verifier). With such a key a signature anyone can compute (R = the identity, S = 0)
# verifies for every message, or half of them: OpenSSL accepts both the key and that
# signature. Identified by y with the sign of x ignored (libsodium's `has_small_order`
# list); a y that is not reduced mod p is not a canonical encoding at all.
_ED25519_P = 2**255 - 19
_ED25519_ORDER8_Y = 0x5FC536D880238B13933C6D305ACDFD5F098EFF289F4C345B027B2C28F95E826
_ED25519_SMALL_Y = frozenset({0, 1, _ED25519_P - 1, _ED25519_ORDER8_Y, _ED25519_P - _ED25519_ORDER8_Y})
_ED448_P = 2**448 - 2**224 - 1
_ED448_SMALL_Y = frozenset({0, 1, _ED448_P - 1})


def _check_edwards_point(raw: bytes, curve: str) -> None:
    if curve == "Ed25519":
        y, p, small = int.from_bytes(raw, "little") & ((1 << 255) - 1), _ED25519_P, _ED25519_SMALL_Y
    else:  # Ed448: 57 bytes, the last one holding only the sign of x
        if raw[-1] & 0x7F:
            raise UnusableKeyError(f"{curve} public key is not a canonical encoding")
        y, p, small = int.from_bytes(raw[:-1], "little"), _ED448_P, _ED448_SMALL_Y
    if y >= p:
        raise UnusableKeyError(f"{curve} public key is not a canonical encoding")
    if y in small:
        raise UnusableKeyError(f"{curve} public key is a point of small order (anyone could sign for it)")


def _check_rsa_exponent(e: int) -> None:
    if not (MIN_RSA_EXPONENT <= e <= MAX_RSA_EXPONENT and e % 2):
        shown = str(e) if e.bit_length() <= 64 else f"of {e.bit_length()} bits"
        raise UnusableKeyError(
            f"RSA public exponent {shown} (expected an odd exponent from {MIN_RSA_EXPONENT} to 2**32-1)"
        )


def kind_of(key: Any) -> str:
    """The kind of a cryptography public key (or `oct` for bytes); refuse weak or odd keys."""
    if isinstance(key, bytes):
        return "oct"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise UnusableKeyError(f"RSA key of {key.key_size} bits (expected at least {MIN_RSA_BITS})")
        _check_rsa_exponent(key.public_numbers().e)
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = _CURVES.get(key.curve.name)
        if curve is None:
            raise UnusableKeyError(f"unsupported elliptic curve {key.curve.name}")
        return curve
    if isinstance(key, ed25519.Ed25519PublicKey):
        _check_edwards_point(key.public_bytes(Encoding.Raw, PublicFormat.Raw), "Ed25519")
        return "OKP-Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        _check_edwards_point(key.public_bytes(Encoding.Raw, PublicFormat.Raw), "Ed448")
        return "OKP-Ed448"
    raise UnusableKeyError(f"unsupported key type {type(key).__name__}")


def from_pem(data: bytes) -> VerifyKey:
    """A PEM public key or certificate. Private keys are refused: the gateway only verifies."""
    if b"PRIVATE KEY" in data:
        raise UnusableKeyError("this is a private key (expected a public key or certificate)")
    try:
        if b"BEGIN CERTIFICATE" in data:
            key: Any = load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except ValueError:
        raise UnusableKeyError("not a PEM public key or certificate") from None
    return VerifyKey(kid=None, kind=kind_of(key), alg=None, key=key)


# RFC 7517 §4.3: the `key_ops` values that go with each `use`.
_OPS_OF_USE: Mapping[str, frozenset[str]] = {
    "sig": frozenset({"sign", "verify"}),
    "enc": frozenset({"encrypt", "decrypt", "wrapKey", "unwrapKey", "deriveKey", "deriveBits"}),
}


def verifies_signatures(jwk: Mapping[str, Any]) -> bool:
    """Whether a JWK is meant for verifying signatures, by `use` and `key_ops`
    (RFC 7517 §4.2, §4.3); raise UnusableKeyError when they are malformed or disagree.

    A key that lists `key_ops` without `verify` is not for us, whatever else it could do:
    a key published for encryption must not verify tokens."""
    use = jwk.get("use")
    if "use" in jwk and not isinstance(use, str):
        raise UnusableKeyError("JWK 'use' must be a string")
    ops = jwk.get("key_ops")
    if "key_ops" in jwk and (
        not isinstance(ops, list) or not all(isinstance(op, str) for op in ops) or len(set(ops)) != len(ops)
    ):
        raise UnusableKeyError("JWK 'key_ops' must be an array of distinct strings")
    if use is not None and ops is not None:
        # §4.3: `use` and `key_ops` SHOULD NOT be used together, and MUST agree if they
        # are. A key that says two things is refused, not read whichever way suits.
        allowed = _OPS_OF_USE.get(use)
        if allowed is None or not allowed.issuperset(ops):
            raise UnusableKeyError(f"JWK 'use' {use!r} and 'key_ops' {sorted(ops)} disagree")
    if ops is not None:
        return "verify" in ops
    return use is None or use == "sig"


def from_jwk(jwk: Mapping[str, Any], *, allow_oct: bool) -> VerifyKey | None:
    """One JWK; None for keys not meant for verifying signatures (`use: enc`, or
    `key_ops` without `verify`)."""
    if not verifies_signatures(jwk):
        return None
    kty = jwk.get("kty")
    if kty == "oct" and not allow_oct:
        raise UnusableKeyError("symmetric (oct) key in a key set that may only hold public keys")
    if any(p in jwk for p in ("d", "p", "q", "dp", "dq", "qi")):
        raise UnusableKeyError("JWK contains private key material (expected public keys only)")
    kid = jwk.get("kid")
    alg = jwk.get("alg")
    # Present means a string (RFC 7517 §4.4, §4.5): a `"kid": null` key would otherwise
    # join the unnamed keys, tried for every token whose kid is unknown.
    if any(name in jwk and not isinstance(jwk[name], str) for name in ("kid", "alg")):
        raise UnusableKeyError("JWK 'kid' and 'alg' must be strings")
    if alg is not None and alg not in ALG_KINDS:
        raise UnusableKeyError(f"JWK alg {alg!r} is not supported")
    if kty == "RSA" and isinstance(jwk.get("e"), str):
        # Checked before parsing: the library refuses e = 1 or an even e with a bare
        # ValueError, and the operator should read which key and why.
        try:
            raw_e = base64.urlsafe_b64decode(jwk["e"] + "=" * (-len(jwk["e"]) % 4))
        except (binascii.Error, ValueError):
            raw_e = b""  # PyJWK reports it below
        if raw_e:
            _check_rsa_exponent(int.from_bytes(raw_e, "big"))
    try:
        # The key's type comes from kty/crv; its `alg` is checked against that below,
        # so a mislabelled key is reported as such rather than as unparseable.
        parsed = jwt.PyJWK({k: v for k, v in jwk.items() if k != "alg"})
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
        raise UnusableKeyError(f"unusable JWK ({type(exc).__name__})") from None
    key = parsed.key
    public = {k: v for k, v in jwk.items() if k in _PUBLIC_MEMBERS}
    verify_key = VerifyKey(kid=kid, kind=kind_of(key), alg=alg, key=key, jwk=public)
    if alg is not None and not verify_key.fits(alg):
        raise UnusableKeyError(f"JWK alg {alg!r} does not fit its key type {verify_key.kind}")
    return verify_key


@dataclass(frozen=True, slots=True)
class ParsedJwks:
    """A JWKS read: the usable keys, the keys refused (and why), and the keys skipped
    because they are not for verifying signatures. Messages never hold key material."""

    keys: list[VerifyKey]
    problems: list[str]
    skipped: list[str]


def _label(i: int, item: Mapping[str, Any]) -> str:
    kid = item.get("kid")
    return f"keys[{i}]" + (f" (kid {kid!r})" if isinstance(kid, str) and len(kid) <= 100 else "")


def from_jwks_bytes(data: bytes, *, allow_oct: bool) -> ParsedJwks:
    """A JWKS (or a single JWK) document, sorted into usable, refused and skipped keys."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise UnusableKeyError("not JSON (expected a JWK or a JWKS with a 'keys' array)") from None
    if isinstance(doc, dict) and "keys" in doc:
        items = doc["keys"]
        if not isinstance(items, list):
            raise UnusableKeyError("'keys' is not an array")
    elif isinstance(doc, dict) and "kty" in doc:
        items = [doc]
    else:
        raise UnusableKeyError("expected a JWK or a JWKS with a 'keys' array")
    parsed = ParsedJwks([], [], [])
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            parsed.problems.append(f"keys[{i}]: not an object")
            continue
        try:
            key = from_jwk(item, allow_oct=allow_oct)
        except UnusableKeyError as exc:
            parsed.problems.append(f"{_label(i, item)}: {exc}")
            continue
        if key is None:
            parsed.skipped.append(f"{_label(i, item)}: not a signature verification key (by its use/key_ops)")
        else:
            parsed.keys.append(key)
    return parsed


@dataclass(frozen=True, slots=True)
class KeySet:
    """An immutable snapshot: swapped whole when keys change, never edited in place."""

    by_kid: Mapping[str, tuple[VerifyKey, ...]]
    unnamed: tuple[VerifyKey, ...]

    @classmethod
    def of(cls, keys: Iterable[VerifyKey]) -> KeySet:
        by_kid: dict[str, list[VerifyKey]] = {}
        unnamed: list[VerifyKey] = []
        for key in keys:
            if key.kid is None:
                unnamed.append(key)
            else:
                by_kid.setdefault(key.kid, []).append(key)
        return cls({k: tuple(v) for k, v in by_kid.items()}, tuple(unnamed))

    def __len__(self) -> int:
        return len(self.unnamed) + sum(len(v) for v in self.by_kid.values())

    def all(self) -> Iterable[VerifyKey]:
        yield from self.unnamed
        for keys in self.by_kid.values():
            yield from keys

    def knows(self, kid: str) -> bool:
        return kid in self.by_kid

    def candidates(self, kid: str | None, alg: str) -> tuple[VerifyKey, ...]:
        """Keys to try: by `kid` when the token names one (else keys without a kid);
        by kind alone when it does not."""
        if kid is None:
            pool: Iterable[VerifyKey] = self.all()
        else:
            pool = self.by_kid.get(kid) or self.unnamed
        return tuple(k for k in pool if k.fits(alg))


EMPTY = KeySet({}, ())
