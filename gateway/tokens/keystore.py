"""The API-token signing keys: a directory of private keys plus the public `jwks.json`.

`generate` adds a key (rotation); the newest key signs; `retire` removes one. The JWKS
lists keys oldest first, so its last entry with a private key is the newest. Private
keys are written 0600 and never leave the directory; the gateway only reads the JWKS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.tokens import gitguard
from gateway.tokens.files import locked, write_atomic

JWKS_FILE = "jwks.json"
# Keys `retire` removed: kid, alg and when, so `keys list` can still name them.
RETIRED_FILE = "retired.json"
ALGORITHMS = ("EdDSA", "ES256", "RS256")
# RFC 7638 §3.2: the required members of each key type, in lexicographic order.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


class KeyStoreError(Exception):
    """A key store operation failed; the message is for the operator."""


def thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url)."""
    members = {k: jwk[k] for k in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _new_private_key(alg: str) -> Any:
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise KeyStoreError(f"unsupported algorithm {alg!r} (expected one of {', '.join(ALGORITHMS)})")


def public_jwk(private: Any, alg: str) -> dict[str, Any]:
    public = private.public_key()
    if alg == "EdDSA":
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    elif alg == "ES256":
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "use": "sig", "alg": alg}


def read_jwks(directory: Path) -> list[dict[str, Any]]:
    path = directory / JWKS_FILE
    if not path.exists():
        return []
    try:
        keys = json.loads(path.read_text())["keys"]
    except (ValueError, KeyError, TypeError, RecursionError, OSError) as exc:
        raise KeyStoreError(f"{path} is not a JWKS ({type(exc).__name__})") from None
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise KeyStoreError(f"{path}: 'keys' is not a list of JWK objects")
    return keys


def _write_jwks(directory: Path, keys: list[dict[str, Any]]) -> None:
    write_atomic(directory / JWKS_FILE, (json.dumps({"keys": keys}, indent=2) + "\n").encode(), 0o644)


def generate(directory: Path, alg: str = "EdDSA") -> str:
    """Add a new signing key; return its kid. Existing keys stay (rotation)."""
    private = _new_private_key(alg)
    jwk = public_jwk(private, alg)
    kid = thumbprint(jwk)
    jwk = {"kid": kid, **jwk}
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # The directory stays readable (the gateway reads jwks.json; private keys are 0600)
    # but never writable by others, whatever the umask: whoever can swap jwks.json can
    # mint accepted tokens.
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(directory.stat().st_mode & ~0o022)
    if created:
        gitguard.ignore_new_directory(directory)
    try:
        gitguard.check_ignored(directory / f"{kid}.key")
    except gitguard.UnignoredKeyError as exc:
        raise KeyStoreError(str(exc)) from None
    with locked(directory):
        keys = read_jwks(directory)
        # O_EXCL and mode 0600 from the first byte: the key is never world-readable.
        fd = os.open(directory / f"{kid}.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
        finally:
            os.close(fd)
        _write_jwks(directory, [*keys, jwk])
    return kid


def retire(directory: Path, kid: str, *, allow_last: bool = False) -> int:
    """Remove a key from the JWKS and delete its private key; return how many remain."""
    if not (directory / JWKS_FILE).exists():
        raise KeyStoreError(f"no key store in {directory} ({JWKS_FILE} is missing)")
    with locked(directory):
        keys = read_jwks(directory)
        remaining = [k for k in keys if k.get("kid") != kid]
        if len(remaining) == len(keys):
            known = ", ".join(str(k.get("kid")) for k in keys) or "none"
            raise KeyStoreError(f"no key {kid!r} in {directory / JWKS_FILE} (known: {known})")
        if not remaining and not allow_last:
            raise KeyStoreError(
                f"{kid} is the last key: retiring it makes every token of this provider fail "
                "(generate a new key first, or pass --force)"
            )
        _write_jwks(directory, remaining)
        gone = next(k for k in keys if k.get("kid") == kid)
        record = {"kid": kid, "alg": gone.get("alg"), "retired": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_atomic(
            directory / RETIRED_FILE, (json.dumps([*read_retired(directory), record], indent=2) + "\n").encode()
        )
        (directory / f"{kid}.key").unlink(missing_ok=True)
    return len(remaining)


def read_retired(directory: Path) -> list[dict[str, Any]]:
    """The keys `retire` removed from this directory, oldest first."""
    path = directory / RETIRED_FILE
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
    except (ValueError, RecursionError, OSError) as exc:
        raise KeyStoreError(f"{path} is not a list of retired keys ({type(exc).__name__})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise KeyStoreError(f"{path} is not a list of retired keys")
    return records


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: Any


def newest(directory: Path) -> SigningKey:
    """The key new tokens are signed with: the last in the JWKS with a private key here."""
    for jwk in reversed(read_jwks(directory)):
        kid = jwk.get("kid")
        path = directory / f"{kid}.key"
        if isinstance(kid, str) and path.exists():
            try:
                private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (ValueError, TypeError, OSError):
                raise KeyStoreError(f"{path} is not a readable private key") from None
            return SigningKey(kid, str(jwk.get("alg")), private)
    raise KeyStoreError(f"no signing key in {directory} (run: gateway keys generate --dir {directory})")
