"""Real keys and real tokens for tests, and a real JWKS/OIDC server that can misbehave."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass
class SigningKey:
    """A private key, its algorithm and kid, and its public half as JWK and PEM."""

    alg: str
    kid: str
    private: Any

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if self.alg.startswith(("RS", "PS")):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif self.alg.startswith("ES"):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def rsa_key(kid: str = "rsa-1", alg: str = "RS256") -> SigningKey:
    return SigningKey(alg, kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str = "ec-1") -> SigningKey:
    return SigningKey("ES256", kid, ec.generate_private_key(ec.SECP256R1()))


def ed_key(kid: str = "ed-1") -> SigningKey:
    return SigningKey("EdDSA", kid, ed25519.Ed25519PrivateKey.generate())


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.public_jwk() for k in keys]}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(
    iss: str = "https://idp.test", aud: Any = "orders-api", sub: str = "alice", ttl: float = 300, **extra: Any
) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": iss, "aud": aud, "sub": sub, "iat": now, "exp": now + ttl, **extra}


def sign(key: SigningKey | bytes, payload: dict[str, Any], *, alg: str | None = None, **header: Any) -> str:
    """A real token. `key` is a SigningKey, or HMAC secret bytes (then pass `alg`)."""
    # jws.encode, not jwt.encode: tests need claims PyJWT would refuse to write.
    body = json.dumps(payload).encode()
    if isinstance(key, bytes):
        return jwt.api_jws.encode(body, key, algorithm=alg or "HS256", headers=header or None)
    hdr = {"kid": key.kid, **header}
    hdr = {k: v for k, v in hdr.items() if v is not None}
    return jwt.api_jws.encode(body, key.private, algorithm=alg or key.alg, headers=hdr)


def sign_with_header(key: SigningKey, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """A real signature over exactly `header` (no member added or dropped), for header
    shapes PyJWT would not write (`"kid": null`, a numeric `typ`)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}".encode()
    algorithm = jwt.get_algorithm_by_name(key.alg)
    signature = algorithm.sign(signing_input, algorithm.prepare_key(key.private))
    return f"{signing_input.decode()}.{b64(signature)}"


def raw_token(header: dict[str, Any] | str, payload: dict[str, Any] | str, signature: bytes = b"") -> str:
    """A token assembled by hand, for shapes no library would produce."""
    h = header if isinstance(header, str) else json.dumps(header)
    p = payload if isinstance(payload, str) else json.dumps(payload)
    return f"{b64(h.encode())}.{b64(p.encode())}.{b64(signature)}"


@dataclass
class IdentityProvider:
    """A real OIDC issuer on a real socket: discovery, JWKS, and knobs to misbehave."""

    keys: list[SigningKey]
    server: TestServer | None = None
    jwks_hits: int = 0
    discovery_hits: int = 0
    fail: bool = False
    hang: float = 0.0
    # When set, each JWKS answer first takes a permit (a test releases them one by one).
    gate: asyncio.Semaphore | None = None
    cache_control: str | None = None
    discovery_issuer: str | None = None
    body_override: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def issuer(self) -> str:
        return self.url

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_hits += 1
        if self.gate is not None:
            await self.gate.acquire()  # and keep it: one release, one answer
        if self.hang:
            await asyncio.sleep(self.hang)
        if self.fail:
            return web.Response(status=500)
        headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
        body = self.body_override if self.body_override is not None else json.dumps(jwks(*self.keys)).encode()
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_hits += 1
        if self.fail:
            return web.Response(status=500)
        return web.json_response(
            {"issuer": self.discovery_issuer or self.issuer, "jwks_uri": f"{self.url}/jwks", **self.extra}
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()


def write(path: Path, data: bytes | str | dict[str, Any]) -> str:
    if isinstance(data, dict):
        data = json.dumps(data)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)
