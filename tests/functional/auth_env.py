"""A gateway with JWT routes in front of a recording upstream and a real IdP."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from gateway.app import Gateway
from tests.conftest import Upstream
from tests.factories import IdentityProvider, SigningKey, write
from tests.rawhttp import RawResponse, get, raw_request

HMAC_SECRET = b"0123456789abcdef0123456789abcdef-test-secret"
PEM_ISSUER = "https://pem.test"
HMAC_ISSUER = "https://hmac.test"


@dataclass
class AuthEnv:
    gateway: Gateway
    upstream: Upstream
    idp: IdentityProvider

    async def call(self, path: str, token: str | None = None, *headers: str, method: str = "GET") -> RawResponse:
        auth = (f"Authorization: Bearer {token}",) if token is not None else ()
        return await raw_request(self.gateway.public_port, get(path, *auth, *headers, method=method))


async def wait_ready(gateway: Gateway, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if not gateway.not_ready():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not ready: {gateway.not_ready()}")


def policy_text(idp: IdentityProvider, upstream: Upstream, pem_key: SigningKey, tmp_path: Path, remote: str) -> str:
    pem = write(tmp_path / "pem-key.pem", pem_key.public_pem())
    u = upstream.url
    return f"""
    identity:
      realm: orders
      claims:
        sub: X-Auth-Subject
        iss: X-Auth-Issuer
        email: X-User-Email
        org.id: X-Auth-Org
        roles: X-Auth-Roles
        n: X-Auth-N
        flag: X-Auth-Flag
    providers:
      corp:
        issuer: "{idp.issuer}"
        audiences: [orders-api, billing-api]
        algorithms: [RS256, ES256, EdDSA]
        keys: [{{jwks_url: "{idp.url}/jwks"}}]
        remote: {remote}
      corp-at:
        issuer: "{idp.issuer}"
        audiences: [orders-api]
        algorithms: [RS256]
        typ: at+jwt
        max_lifetime: 1h
        required_claims: [jti]
        keys: [{{oidc_discovery: true}}]
        remote: {remote}
      shared:
        issuer: {HMAC_ISSUER}
        audiences: [orders-api]
        algorithms: [HS256]
        leeway: 1s
        keys: [{{hmac_secret: {{env: GATEWAY_TEST_HMAC}}}}]
      pem:
        issuer: {PEM_ISSUER}
        audiences: [orders-api]
        algorithms: [RS256]
        keys: [{{pem_file: "{pem}"}}]
    routes:
      - {{name: public, match: {{prefix: /public}}, upstream: "{u}", auth: public}}
      - name: admin
        match: {{prefix: /admin}}
        upstream: "{u}"
        auth: {{any_of: [corp], scopes: [admin:write], claims: {{role: [admin, ops], org.id: acme}}}}
      - name: narrow
        match: {{prefix: /billing}}
        upstream: "{u}"
        auth: {{any_of: [corp], audiences: [billing-api]}}
      - name: mixed
        match: {{prefix: /mixed}}
        upstream: "{u}"
        auth: {{any_of: [corp, shared], audiences: [orders-api, billing-api]}}
      - {{name: maybe, match: {{prefix: /maybe}}, upstream: "{u}", auth: {{any_of: [corp], optional: true}}}}
      - {{name: query, match: {{prefix: /query}}, upstream: "{u}", auth: {{any_of: [corp], allow_query_token: true}}}}
      - name: passauth
        match: {{prefix: /passauth}}
        upstream: "{u}"
        forward_authorization: true
        auth: {{any_of: [corp], forward_claims: {{email: null, name: X-Auth-Name}}}}
      - {{name: typed, match: {{prefix: /typed}}, upstream: "{u}", auth: {{any_of: [corp-at]}}}}
      - name: orders
        match: {{prefix: /orders}}
        upstream: "{u}"
        auth: {{any_of: [corp, shared, pem]}}
    """
