"""Minting API tokens and keeping the issuance ledger.

A token is an ordinary JWT from the API-token provider, verified by the same code as
every other provider. The ledger (JSON lines) records what was issued, never the token.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from gateway.duration import format_duration
from gateway.policy.model import Policy
from gateway.tokens import keystore
from gateway.tokens.files import locked

# Claims the CLI sets itself; `--claim` may not override them.
RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope", "scp"})


class MintError(Exception):
    """Issuing failed; the message is for the operator."""


@dataclass(frozen=True)
class ApiTokenProvider:
    """Everything the token tools need about one API-token provider."""

    name: str
    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    max_lifetime: float
    default_ttl: float
    typ: str
    key_dir: Path
    ledger: Path
    revocation_file: Path


def api_token_provider(policy: Policy, config_file: str, name: str | None) -> ApiTokenProvider:
    """The provider with `api_tokens:` (the only one, or the one named)."""
    candidates = {n: p for n, p in policy.providers.items() if p.api_tokens is not None}
    if not candidates:
        raise MintError(f"{config_file}: no provider has an 'api_tokens' section")
    if name is None:
        if len(candidates) > 1:
            raise MintError(
                f"several API-token providers; choose one with --provider ({', '.join(sorted(candidates))})"
            )
        name = next(iter(candidates))
    provider = candidates.get(name)
    if provider is None or provider.api_tokens is None:
        raise MintError(f"no API-token provider {name!r} (expected one of: {', '.join(sorted(candidates))})")
    base = Path(config_file).resolve().parent  # as compile.py
    tokens = provider.api_tokens
    key_dir = base / tokens.signing_keys
    assert provider.max_lifetime is not None
    assert provider.revocation_file is not None
    return ApiTokenProvider(
        name=name,
        issuer=provider.issuer,
        audiences=provider.audiences,
        algorithms=provider.algorithms,
        max_lifetime=provider.max_lifetime,
        default_ttl=tokens.default_ttl,
        typ=tokens.typ,
        key_dir=key_dir,
        ledger=base / tokens.ledger if tokens.ledger else key_dir / "ledger.jsonl",
        revocation_file=base / provider.revocation_file,
    )


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def issue(
    p: ApiTokenProvider,
    *,
    client: str,
    scopes: list[str],
    audience: str,
    ttl: float | None,
    extra: dict[str, str],
) -> tuple[str, dict[str, Any]]:
    """Sign a token with the newest key and append its ledger record. Returns both."""
    if not client or any(ord(c) < 0x20 or ord(c) == 0x7F for c in client):
        raise MintError("--client must be a non-empty name without control characters")
    if audience not in p.audiences:
        raise MintError(f"audience {audience!r} is not one of the provider's: {', '.join(p.audiences)}")
    lifetime = p.default_ttl if ttl is None else ttl
    if not 0 < lifetime <= p.max_lifetime:
        raise MintError(
            f"--ttl {format_duration(lifetime)} is outside (0, {format_duration(p.max_lifetime)}] (max_lifetime)"
        )
    clash = sorted(RESERVED_CLAIMS & extra.keys())
    if clash:
        raise MintError(f"--claim cannot set {', '.join(clash)} (set by the gateway)")
    try:
        key = keystore.newest(p.key_dir)
    except keystore.KeyStoreError as exc:
        raise MintError(str(exc)) from None
    if key.alg not in p.algorithms:
        raise MintError(f"the newest key {key.kid} is {key.alg}, which the provider does not accept ({p.algorithms})")
    now = int(time.time())
    exp = now + int(lifetime)
    # Hex, 128 bits: a base64url id can start with "-", which a shell command line
    # (`gateway tokens revoke JTI`) would read as an option.
    jti = secrets.token_hex(16)
    claims: dict[str, Any] = {**extra, "iss": p.issuer, "sub": client, "aud": audience, "iat": now, "exp": exp}
    claims["jti"] = jti
    if scopes:
        claims["scope"] = " ".join(scopes)
    token = jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid, "typ": p.typ})
    record = {
        "jti": jti,
        "client": client,
        "scopes": scopes,
        "audience": audience,
        "issued": _iso(now),
        "expires": _iso(exp),
        "exp": exp,
        "kid": key.kid,
    }
    with locked(p.ledger.parent):
        fd = os.open(p.ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return token, record


def ledger(p: ApiTokenProvider) -> list[dict[str, Any]]:
    """Every issuance record, oldest first."""
    try:
        lines = p.ledger.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise MintError(f"cannot read the ledger {p.ledger}: {type(exc).__name__}") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("jti"), str):
            raise MintError(f"{p.ledger}:{n}: not a ledger record")
        out.append(record)
    return out
