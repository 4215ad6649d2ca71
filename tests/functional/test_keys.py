"""Remote key sets: startup, refresh, rotation, unknown-kid storms, failures and hangs.

The IdP is a real HTTP server on loopback that counts its hits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import struct
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.keys.sources import FILE_POLL_SECONDS
from tests.conftest import GatewayFactory, Upstream
from tests.factories import IdentityProvider, SigningKey, b64, claims, jwks, raw_token, rsa_key, sign, write
from tests.functional.auth_env import wait_ready
from tests.rawhttp import get, raw_request


def policy(idp: IdentityProvider, upstream: Upstream, remote: str, source: str = "") -> str:
    source = source or f'{{jwks_url: "{idp.url}/jwks"}}'
    return f"""
    providers:
      corp:
        issuer: "{idp.issuer}"
        audiences: [orders-api]
        algorithms: [RS256, ES256, EdDSA]
        keys: [{source}]
        remote: {remote}
    routes:
      - {{name: public, match: {{prefix: /public}}, upstream: "{upstream.url}", auth: public}}
      - {{name: orders, match: {{prefix: /orders}}, upstream: "{upstream.url}", auth: {{any_of: [corp]}}}}
    """


async def call(gw: Gateway, token: str, path: str = "/orders") -> int:
    resp = await raw_request(gw.public_port, get(path, f"Authorization: Bearer {token}"))
    return resp.status


async def readyz(gw: Gateway) -> int:
    async with aiohttp.ClientSession() as client, client.get(f"http://127.0.0.1:{gw.admin_port}/readyz") as r:
        return r.status


async def eventually(check: object, seconds: float = 5.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_unknown_kid_storm_costs_the_idp_at_most_one_fetch(
    make_gateway: GatewayFactory, upstream: Upstream, idp: IdentityProvider, rsa: SigningKey
) -> None:
    gw = await make_gateway(policy(idp, upstream, "{unknown_kid_cooldown: 30s}"))
    await wait_ready(gw)
    assert idp.jwks_hits == 1
    tokens = [sign(rsa, claims(idp.issuer), kid=secrets.token_hex(8)) for _ in range(200)]
    statuses = await asyncio.gather(*(call(gw, t) for t in tokens))
    assert set(statuses) == {401}
    # The first unknown kid refetched once (concurrent misses joined it); the cooldown
    # turned the other 199 away without asking the IdP.
    assert idp.jwks_hits == 2
    statuses = await asyncio.gather(*(call(gw, sign(rsa, claims(idp.issuer), kid=f"k{i}")) for i in range(50)))
    assert set(statuses) == {401}
    assert idp.jwks_hits == 2
    assert upstream.seen == []


async def test_rotation_is_picked_up_without_restart(
    make_gateway: GatewayFactory, upstream: Upstream, idp: IdentityProvider, rsa: SigningKey
) -> None:
    gw = await make_gateway(policy(idp, upstream, "{unknown_kid_cooldown: 200ms}"))
    await wait_ready(gw)
    old_token = sign(rsa, claims(idp.issuer))
    assert await call(gw, old_token) == 200
    new = rsa_key("rsa-2")
    idp.keys = [new]  # the IdP rotates: rsa-1 gone, rsa-2 in
    new_token = sign(new, claims(idp.issuer))
    assert await call(gw, new_token) == 200  # unknown kid -> one refetch -> accepted
    assert idp.jwks_hits == 2
    # rsa-1 has left the key set: tokens signed with it now fail.
    assert await call(gw, old_token) == 401


async def test_background_refresh_honours_cache_control_within_bounds(
    make_gateway: GatewayFactory, upstream: Upstream, idp: IdentityProvider
) -> None:
    idp.cache_control = "public, max-age=0"
    gw = await make_gateway(policy(idp, upstream, "{min_refresh: 300ms, refresh_interval: 10m}"))
    await wait_ready(gw)
    # max-age=0 is clamped up to min_refresh: several refreshes, not a busy loop.
    await asyncio.sleep(1.6)
    assert 3 <= idp.jwks_hits <= 7, idp.jwks_hits

    other = IdentityProvider(keys=idp.keys)
    await other.start()
    try:
        other.cache_control = "max-age=86400"
        gw2 = await make_gateway(
            policy(other, upstream, "{min_refresh: 100ms, refresh_interval: 300ms, max_refresh: 500ms}")
        )
        await wait_ready(gw2)
        await asyncio.sleep(1.2)
        # A day's max-age is clamped down to max_refresh (500ms).
        assert 2 <= other.jwks_hits <= 4, other.jwks_hits
    finally:
        await other.close()


async def test_no_cache_control_uses_refresh_interval(
    make_gateway: GatewayFactory, upstream: Upstream, idp: IdentityProvider
) -> None:
    gw = await make_gateway(policy(idp, upstream, "{min_refresh: 100ms, refresh_interval: 10m}"))
    await wait_ready(gw)
    await asyncio.sleep(0.5)
    assert idp.jwks_hits == 1


async def test_failed_refresh_keeps_last_good_keys_then_they_go_stale(
    make_gateway: GatewayFactory, upstream: Upstream, idp: IdentityProvider, rsa: SigningKey
) -> None:
    idp.cache_control = "max-age=0"
    gw = await make_gateway(
        policy(idp, upstream, "{min_refresh: 100ms, refresh_interval: 100ms, retry_interval: 100ms, max_stale: 1s}")
    )
    await wait_ready(gw)
    token = sign(rsa, claims(idp.issuer))
    idp.fail = True
    hits = idp.jwks_hits
    await asyncio.sleep(0.4)
    assert idp.jwks_hits > hits  # it retried
    assert await call(gw, token) == 200  # ...and kept serving the last good keys
    # Past max_stale the keys are dropped: refuse (503), and readiness says so.
    await eventually(lambda: _status_is(gw, token, 503), 3)
    assert await readyz(gw) == 503
    idp.fail = False  # the IdP recovers: no restart needed
    await eventually(lambda: _status_is(gw, token, 200), 3)
    assert await readyz(gw) == 200


async def _status_is(gw: Gateway, token: str, status: int) -> bool:
    return await call(gw, token) == status


async def test_keys_never_loaded_is_503_and_not_ready(
    make_gateway: GatewayFactory, upstream: Upstream, idp: IdentityProvider, rsa: SigningKey
) -> None:
    idp.fail = True
    gw = await make_gateway(policy(idp, upstream, "{retry_interval: 100ms}"))
    token = sign(rsa, claims(idp.issuer))
    assert await readyz(gw) == 503
    resp = await raw_request(gw.public_port, get("/orders", f"Authorization: Bearer {token}"))
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    assert b"temporarily_unavailable" in resp.body
    assert (await raw_request(gw.public_port, get("/public"))).status == 200
    idp.fail = False
    await eventually(lambda: _status_is(gw, token, 200), 3)
    assert await readyz(gw) == 200


async def test_hanging_idp_times_out_and_never_blocks_serving(
    make_gateway: GatewayFactory, upstream: Upstream, idp: IdentityProvider, rsa: SigningKey
) -> None:
    gw = await make_gateway(policy(idp, upstream, "{fetch_timeout: 300ms, unknown_kid_cooldown: 100ms}"))
    await wait_ready(gw)
    idp.hang = 5.0
    slow_kid = asyncio.ensure_future(call(gw, sign(rsa, claims(idp.issuer), kid="new-kid")))
    await asyncio.sleep(0.05)
    # While the refetch hangs, other requests are served at once.
    t0 = time.monotonic()
    assert await call(gw, sign(rsa, claims(idp.issuer))) == 200
    assert (await raw_request(gw.public_port, get("/public"))).status == 200
    assert time.monotonic() - t0 < 0.25
    assert await slow_kid == 401  # the fetch gave up at fetch_timeout
    assert await call(gw, sign(rsa, claims(idp.issuer))) == 200  # last good keys kept


async def test_oversized_or_empty_key_sets_are_refused(
    make_gateway: GatewayFactory, upstream: Upstream, idp: IdentityProvider
) -> None:
    idp.body_override = b'{"keys": [' + b'{"kty": "oct", "k": "AAAA"},' * 2000 + b"{}]}"
    gw = await make_gateway(policy(idp, upstream, "{max_bytes: 4096, retry_interval: 100ms}"))
    await asyncio.sleep(0.3)
    assert gw.not_ready() == ["keys of provider 'corp'"]
    idp.body_override = b'{"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}'
    await asyncio.sleep(0.3)
    # Symmetric keys are never taken from a remote key set.
    assert gw.not_ready() == ["keys of provider 'corp'"]


async def test_oidc_discovery(
    make_gateway: GatewayFactory, upstream: Upstream, idp: IdentityProvider, rsa: SigningKey
) -> None:
    gw = await make_gateway(policy(idp, upstream, "{}", source="{oidc_discovery: true}"))
    await wait_ready(gw)
    assert idp.discovery_hits == 1
    assert idp.jwks_hits == 1
    assert await call(gw, sign(rsa, claims(idp.issuer))) == 200


async def test_oidc_discovery_naming_another_issuer_is_refused(
    make_gateway: GatewayFactory, upstream: Upstream, idp: IdentityProvider, rsa: SigningKey
) -> None:
    idp.discovery_issuer = "https://evil.example"
    gw = await make_gateway(policy(idp, upstream, "{retry_interval: 100ms}", source="{oidc_discovery: true}"))
    await asyncio.sleep(0.3)
    assert idp.discovery_hits >= 2
    assert idp.jwks_hits == 0  # its jwks_uri was never followed
    assert await call(gw, sign(rsa, claims(idp.issuer))) == 503


async def test_key_file_changes_are_picked_up_and_a_corrupt_file_keeps_the_last_good_keys(
    make_gateway: GatewayFactory, upstream: Upstream, tmp_path: Path, rsa: SigningKey
) -> None:
    jwks_path = tmp_path / "jwks.json"
    write(jwks_path, jwks(rsa))
    gw = await make_gateway(
        f"""
        providers:
          files:
            issuer: https://files.test
            audiences: [orders-api]
            algorithms: [RS256]
            keys: [{{jwks_file: "{jwks_path}"}}]
        routes:
          - {{name: orders, match: {{prefix: /orders}}, upstream: "{upstream.url}", auth: {{any_of: [files]}}}}
        """
    )
    old = sign(rsa, claims("https://files.test"))
    assert await call(gw, old) == 200
    new_key = rsa_key("rsa-new")
    new = sign(new_key, claims("https://files.test"))
    assert await call(gw, new) == 401
    write(jwks_path, jwks(rsa, new_key))  # rotation: the new key beside the old one
    await eventually(lambda: _status_is(gw, new, 200), 6)
    assert await call(gw, old) == 200
    jwks_path.write_text("{not json")  # a botched edit: loud, and the last good keys stay
    await asyncio.sleep(FILE_POLL_SECONDS + 1)
    assert await call(gw, new) == 200
    write(jwks_path, jwks(new_key))  # retire the old key
    await eventually(lambda: _status_is(gw, old, 401), 6)
    assert await call(gw, new) == 200


async def test_a_hostile_key_set_does_not_stop_refreshing(
    make_gateway: GatewayFactory, upstream: Upstream, idp: IdentityProvider, rsa: SigningKey
) -> None:
    # Nested deeper than the JSON parser's stack, then a discovery document whose
    # jwks_uri is not a URL at all: each is one failed fetch, never the end of the loop.
    idp.body_override = b"[" * 50000 + b"]" * 50000
    gw = await make_gateway(policy(idp, upstream, "{retry_interval: 100ms}"))
    await asyncio.sleep(0.4)
    assert idp.jwks_hits >= 2
    idp.body_override = None
    await wait_ready(gw)
    assert await call(gw, sign(rsa, claims(idp.issuer))) == 200

    other = IdentityProvider(keys=idp.keys)
    await other.start()
    try:
        other.extra = {"jwks_uri": "http://127.0.0.1:99999/jwks"}
        gw2 = await make_gateway(policy(other, upstream, "{retry_interval: 100ms}", source="{oidc_discovery: true}"))
        await asyncio.sleep(0.4)
        assert other.discovery_hits >= 2
        other.extra = {}
        await wait_ready(gw2)
        assert await call(gw2, sign(rsa, claims(other.issuer))) == 200
    finally:
        await other.close()


async def test_key_ops_decide_what_a_fetched_key_may_verify(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    idp: IdentityProvider,
    rsa: SigningKey,
    ec: SigningKey,
    ed: SigningKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # RFC 7517 §4.3: a key whose key_ops lacks "verify" is not for verifying tokens,
    # and a key whose use and key_ops disagree is refused; both are skipped and logged.
    caplog.set_level(logging.INFO, logger="gateway.keys")

    def without_use(key: SigningKey, **extra: object) -> dict[str, object]:
        return {**{k: v for k, v in key.public_jwk().items() if k != "use"}, **extra}

    encrypt_only = without_use(rsa, key_ops=["encrypt"])
    verify = without_use(ec, key_ops=["verify"])
    disagreeing = {**ed.public_jwk(), "key_ops": ["encrypt"]}  # use: sig
    idp.body_override = json.dumps({"keys": [encrypt_only, verify, disagreeing]}).encode()
    gw = await make_gateway(policy(idp, upstream, "{}"))
    await wait_ready(gw)
    assert await call(gw, sign(rsa, claims(idp.issuer))) == 401
    assert await call(gw, sign(ed, claims(idp.issuer))) == 401
    assert await call(gw, sign(ec, claims(idp.issuer))) == 200
    assert len(upstream.seen) == 1
    logged = caplog.text
    assert "keys[0] (kid 'rsa-1'): not a signature verification key" in logged
    assert "keys[2] (kid 'ed-1'): JWK 'use' 'sig' and 'key_ops' ['encrypt'] disagree" in logged
    # Both kinds of skip are said once, not on every refresh.
    assert logged.count("keys[0] (kid 'rsa-1')") == 1


async def test_a_fetched_rsa_key_with_a_small_exponent_is_skipped_and_logged(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    idp: IdentityProvider,
    ec: SigningKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys

    caplog.set_level(logging.INFO, logger="gateway.keys")
    weak = SigningKey("RS256", "e3", rsa_keys.generate_private_key(public_exponent=3, key_size=2048))
    idp.keys = [weak, ec]
    gw = await make_gateway(policy(idp, upstream, "{}"))
    await wait_ready(gw)
    assert await call(gw, sign(weak, claims(idp.issuer))) == 401
    assert await call(gw, sign(ec, claims(idp.issuer))) == 200
    assert "skipped a key" in caplog.text
    assert "keys[0] (kid 'e3'): RSA public exponent 3 (expected an odd exponent from 65537" in caplog.text


@pytest.mark.parametrize("y", [1, 0, 2**255 - 20], ids=["identity", "order-4", "order-2"])
async def test_an_ed25519_key_of_small_order_is_refused(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    idp: IdentityProvider,
    ec: SigningKey,
    caplog: pytest.LogCaptureFixture,
    y: int,
) -> None:
    # With a small-order public key, R = that point and S = 0 "verify" many messages
    # with no private key at all: vary the claims until the hash is a multiple of the
    # order. Such a key in a JWKS must never be used.
    caplog.set_level(logging.INFO, logger="gateway.keys")
    point = y.to_bytes(32, "little")
    weak = {"kty": "OKP", "crv": "Ed25519", "x": b64(point), "kid": "weak", "alg": "EdDSA"}
    idp.body_override = json.dumps({"keys": [weak, ec.public_jwk()]}).encode()
    gw = await make_gateway(policy(idp, upstream, "{}"))
    await wait_ready(gw)
    forged = [
        raw_token({"alg": "EdDSA", "kid": "weak"}, claims(idp.issuer, sub="admin", jti=str(i)), point + bytes(32))
        for i in range(16)
    ]
    statuses = [await call(gw, token) for token in forged]
    assert statuses == [401] * 16
    assert upstream.seen == []
    assert "keys[0] (kid 'weak'): Ed25519 public key is a point of small order" in caplog.text
    assert await call(gw, sign(ec, claims(idp.issuer))) == 200


async def test_a_request_whose_client_left_during_a_key_fetch_is_not_forwarded(
    make_gateway: GatewayFactory, upstream: Upstream, idp: IdentityProvider, rsa: SigningKey
) -> None:
    gw = await make_gateway(policy(idp, upstream, "{unknown_kid_cooldown: 200ms}"))
    await wait_ready(gw)
    new = rsa_key("rsa-2")
    idp.keys = [rsa, new]
    idp.hang = 0.5  # the refetch the new kid triggers takes a while
    request = get("/orders", f"Authorization: Bearer {sign(new, claims(idp.issuer))}", close=False)
    clients = []
    for _ in range(5):
        _, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
        writer.write(request)
        clients.append(writer)
    await asyncio.sleep(0.1)
    for writer in clients:  # leave for good: a reset, not a half-close
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
    await asyncio.sleep(0.8)
    assert idp.jwks_hits == 2  # the fetch happened; the requests waited on it
    assert upstream.seen == []  # and nobody was left to answer, so nothing was sent
    assert gw._pool is not None
    assert gw._pool.slots == set()  # no client's upstream connections outlive it
