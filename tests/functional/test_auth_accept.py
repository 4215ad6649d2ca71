"""Tokens that must pass, and exactly what the upstream then receives."""

from __future__ import annotations

import time

from tests.factories import SigningKey, claims, sign
from tests.functional.auth_env import HMAC_ISSUER, HMAC_SECRET, PEM_ISSUER, AuthEnv


async def test_each_algorithm_and_key_source_is_accepted(
    env: AuthEnv, rsa: SigningKey, ec: SigningKey, ed: SigningKey, rsa_pem: SigningKey
) -> None:
    iss = env.idp.issuer
    tokens = {
        "RS256 via JWKS URL": sign(rsa, claims(iss)),
        "ES256 via JWKS URL": sign(ec, claims(iss)),
        "EdDSA via JWKS URL": sign(ed, claims(iss)),
        "HS256 via env secret": sign(HMAC_SECRET, claims(HMAC_ISSUER)),
        "RS256 via PEM file, no kid": sign(rsa_pem, claims(PEM_ISSUER), kid=None),
    }
    for what, token in tokens.items():
        resp = await env.call("/orders/1", token)
        assert resp.status == 200, what
    assert [s.headers["x-auth-provider"] for s in env.upstream.seen] == [["corp"]] * 3 + [["shared"], ["pem"]]


async def test_identity_headers_forwarded_and_authorization_consumed(env: AuthEnv, rsa: SigningKey) -> None:
    token = sign(
        rsa,
        claims(
            env.idp.issuer,
            sub="caf\u00e9 100%, really",
            email="a@example.com",
            org={"id": "acme"},
            roles=["admin", "ops,eu"],
            n=42,
            flag=True,
        ),
    )
    resp = await env.call("/orders/1", token)
    assert resp.status == 200
    seen = env.upstream.last.headers
    assert seen["x-auth-subject"] == ["caf%C3%A9 100%25%2C really"]
    assert seen["x-auth-issuer"] == [env.idp.issuer]
    assert seen["x-user-email"] == ["a@example.com"]
    assert seen["x-auth-org"] == ["acme"]
    assert seen["x-auth-roles"] == ["admin,ops%2Ceu"]
    assert seen["x-auth-n"] == ["42"]
    assert seen["x-auth-flag"] == ["true"]
    assert seen["x-auth-provider"] == ["corp"]
    assert "authorization" not in seen


async def test_claims_that_render_empty_are_not_forwarded(env: AuthEnv, rsa: SigningKey) -> None:
    # An empty header is "absent" to some backends and a value to others: make it absent.
    token = sign(rsa, claims(env.idp.issuer, email="", roles=[], n=0, flag=False))
    resp = await env.call("/orders/1", token, "X-User-Email: mallory@example.com")
    assert resp.status == 200
    seen = env.upstream.last.headers
    assert "x-user-email" not in seen
    assert "x-auth-roles" not in seen
    assert seen["x-auth-n"] == ["0"]
    assert seen["x-auth-flag"] == ["false"]
    assert seen["x-auth-subject"] == ["alice"]


async def test_route_overrides_claim_headers_and_may_forward_authorization(env: AuthEnv, rsa: SigningKey) -> None:
    token = sign(rsa, claims(env.idp.issuer, email="a@example.com", name="Alice"))
    resp = await env.call("/passauth", token)
    assert resp.status == 200
    seen = env.upstream.last.headers
    assert seen["authorization"] == [f"Bearer {token}"]
    assert "x-user-email" not in seen  # dropped by the route's `email: null`
    assert seen["x-auth-name"] == ["Alice"]


async def test_audience_as_array_and_narrowed_route(env: AuthEnv, rsa: SigningKey) -> None:
    both = sign(rsa, claims(env.idp.issuer, aud=["other", "orders-api"]))
    assert (await env.call("/orders", both)).status == 200
    billing = sign(rsa, claims(env.idp.issuer, aud="billing-api"))
    assert (await env.call("/billing", billing)).status == 200
    # orders-api is one of the provider's audiences, but this route narrowed them.
    resp = await env.call("/billing", both)
    assert resp.status == 401


async def test_scopes_and_claims_grant_access(env: AuthEnv, rsa: SigningKey) -> None:
    ok = [
        claims(env.idp.issuer, scope="read admin:write", role="ops", org={"id": "acme"}),
        claims(env.idp.issuer, scp=["admin:write"], role=["viewer", "admin"], org={"id": "acme"}),
    ]
    for payload in ok:
        resp = await env.call("/admin", sign(rsa, payload))
        assert resp.status == 200, payload


async def test_optional_route(env: AuthEnv, rsa: SigningKey) -> None:
    resp = await env.call("/maybe", None, "X-Auth-Subject: spoofed")
    assert resp.status == 200
    assert not [h for h in env.upstream.last.headers if h.startswith("x-auth")]
    resp = await env.call("/maybe", sign(rsa, claims(env.idp.issuer)))
    assert resp.status == 200
    assert env.upstream.last.headers["x-auth-subject"] == ["alice"]
    resp = await env.call("/maybe", sign(rsa, claims(env.idp.issuer, ttl=-3600)))
    assert resp.status == 401  # an invalid token is refused even where none is needed


async def test_query_token_where_allowed_is_removed_before_forwarding(env: AuthEnv, rsa: SigningKey) -> None:
    token = sign(rsa, claims(env.idp.issuer))
    resp = await env.call(f"/query/x?a=1&access_token={token}&b=%2F")
    assert resp.status == 200
    assert env.upstream.last.raw_path == "/query/x?a=1&b=%2F"
    assert token not in str(env.upstream.last.headers)


async def test_typ_lifetime_and_required_claims_pass_when_met(env: AuthEnv, rsa: SigningKey) -> None:
    for typ in ("at+jwt", "AT+JWT", "application/at+jwt"):
        token = sign(rsa, claims(env.idp.issuer, ttl=1800, jti="j1"), typ=typ)
        resp = await env.call("/typed", token)
        assert resp.status == 200, typ


async def test_leeway_allows_small_clock_skew(env: AuthEnv, rsa: SigningKey) -> None:
    now = int(time.time())
    token = sign(rsa, claims(env.idp.issuer, exp=now - 10, nbf=now + 10, iat=now + 10))
    assert (await env.call("/orders", token)).status == 200
