"""The verified-token cache never accepts what a fresh verification would refuse."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from gateway.app import Gateway
from gateway.errors import Reason
from tests.conftest import GatewayFactory, Upstream
from tests.factories import SigningKey, claims, sign
from tests.functional.auth_env import HMAC_ISSUER, HMAC_SECRET, AuthEnv
from tests.metrics_parse import scrape
from tests.rawhttp import get, raw_request


async def test_reused_token_hits_the_cache(env: AuthEnv, rsa: SigningKey) -> None:
    token = sign(rsa, claims(env.idp.issuer))
    for _ in range(5):
        assert (await env.call("/orders", token)).status == 200
    s = await scrape(env.gateway.admin_port)
    assert s.get("gateway_token_cache_misses_total") == 1
    assert s.get("gateway_token_cache_hits_total") == 4
    assert s.get("gateway_token_cache_entries") == 1
    assert [h["x-auth-subject"] for h in (seen.headers for seen in env.upstream.seen)] == [["alice"]] * 5


async def test_route_checks_still_run_on_a_cached_token(env: AuthEnv, rsa: SigningKey) -> None:
    token = sign(rsa, claims(env.idp.issuer, aud="orders-api", scope="read", role="viewer", org={"id": "acme"}))
    assert (await env.call("/orders", token)).status == 200  # now cached
    assert (await env.call("/admin", token)).status == Reason.INSUFFICIENT_SCOPE.status
    assert (await env.call("/billing", token)).status == Reason.AUDIENCE_MISMATCH.status  # narrowed audience
    hmac_token = jwt.encode(claims(HMAC_ISSUER), HMAC_SECRET, algorithm="HS256")
    assert (await env.call("/orders", hmac_token)).status == 200
    # Cached for `shared`, but this route accepts only `corp`: verified afresh, refused.
    assert (await env.call("/billing", hmac_token)).status == 401


async def test_a_cached_token_expires_when_a_fresh_check_would_refuse_it(env: AuthEnv) -> None:
    now = int(time.time())
    token = jwt.encode(claims(HMAC_ISSUER, exp=now + 1, iat=now), HMAC_SECRET, algorithm="HS256")  # leeway 1s
    assert (await env.call("/orders", token)).status == 200
    assert (await env.call("/orders", token)).status == 200  # a cache hit
    await asyncio.sleep(max(0.0, now + 2.05 - time.time()))
    resp = await env.call("/orders", token)
    assert resp.status == 401
    assert b"expired" in resp.body


async def test_a_key_change_drops_cached_tokens(env: AuthEnv, rsa: SigningKey, ec: SigningKey) -> None:
    old = sign(rsa, claims(env.idp.issuer))
    assert (await env.call("/orders", old)).status == 200
    env.idp.keys = [ec]  # rsa-1 leaves the IdP's key set
    hits = env.idp.jwks_hits
    refetch = sign(ec, claims(env.idp.issuer), kid="unknown-kid-triggers-refetch")
    assert (await env.call("/orders", refetch)).status == 401
    assert env.idp.jwks_hits == hits + 1
    assert (await env.call("/orders", old)).status == 401  # not served from the cache


async def test_shared_issuer_providers_answer_as_a_fresh_verification_would(
    make_gateway: GatewayFactory, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_CACHE_SECRET", HMAC_SECRET.decode())
    hs = "algorithms: [HS256], keys: [{hmac_secret: {env: GW_CACHE_SECRET}}]"
    gw = await make_gateway(
        f"""
        providers:
          a: {{issuer: https://same.test, audiences: [a1, shared], {hs}}}
          b: {{issuer: https://same.test, audiences: [b1], {hs}}}
        routes:
          - {{name: r1, match: {{prefix: /r1}}, upstream: "{upstream.url}", auth: {{any_of: [a]}}}}
          - name: r2
            match: {{prefix: /r2}}
            upstream: "{upstream.url}"
            auth: {{any_of: [a, b], audiences: [shared, b1]}}
          - {{name: r3, match: {{prefix: /r3}}, upstream: "{upstream.url}", auth: {{any_of: [b, a]}}}}
        """
    )
    token = jwt.encode(claims("https://same.test", aud=["a1", "b1"]), HMAC_SECRET, algorithm="HS256")
    env = AuthEnvLite(gw)
    assert await env.status("/r1", token) == 200  # cached as verified by `a`
    assert await env.status("/r2", token) == 200  # `a` fails the narrowing, `b` passes
    assert await env.status("/r3", token) == 200
    assert upstream.last.headers["x-auth-provider"] == ["b"]  # r3 tries b first


class AuthEnvLite:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def status(self, path: str, token: str) -> int:
        resp = await raw_request(self.gw.public_port, get(path, f"Authorization: Bearer {token}"))
        return resp.status
