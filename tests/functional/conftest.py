"""Fixtures for the auth tests: real keys (made once per run), a real IdP, the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import GatewayFactory, Upstream
from tests.factories import IdentityProvider, SigningKey, ec_key, ed_key, rsa_key
from tests.functional.auth_env import HMAC_SECRET, AuthEnv, policy_text, wait_ready
from tests.functional.workers_env import Spread
from tests.procs import GatewayProcess, spread_connections
from tests.rawhttp import KeptAlive, get

# Short enough for tests to watch refreshes happen, long enough not to flood.
FAST_REMOTE = "{min_refresh: 200ms, refresh_interval: 10m, retry_interval: 100ms, unknown_kid_cooldown: 30s}"


@pytest.fixture(scope="session")
def rsa() -> SigningKey:
    return rsa_key("rsa-1")


@pytest.fixture(scope="session")
def rsa_other() -> SigningKey:
    return rsa_key("rsa-1")  # same kid, different key: a forgery attempt


@pytest.fixture(scope="session")
def rsa_pem() -> SigningKey:
    return rsa_key("pem-1")


@pytest.fixture(scope="session")
def ec() -> SigningKey:
    return ec_key("ec-1")


@pytest.fixture(scope="session")
def ed() -> SigningKey:
    return ed_key("ed-1")


@pytest.fixture
async def idp(rsa: SigningKey, ec: SigningKey, ed: SigningKey) -> AsyncIterator[IdentityProvider]:
    provider = IdentityProvider(keys=[rsa, ec, ed])
    await provider.start()
    yield provider
    await provider.close()


@pytest.fixture
async def env(
    make_gateway: GatewayFactory,
    upstream: Upstream,
    idp: IdentityProvider,
    rsa_pem: SigningKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AuthEnv:
    monkeypatch.setenv("GATEWAY_TEST_HMAC", HMAC_SECRET.decode())
    gateway = await make_gateway(policy_text(idp, upstream, rsa_pem, tmp_path, FAST_REMOTE))
    await wait_ready(gateway)
    return AuthEnv(gateway, upstream, idp)


@pytest.fixture
async def spread() -> AsyncIterator[Spread]:
    """`tests.procs.spread_connections`, every connection it gave closed at the test's end
    (a test that fails half-way leaves no transport to be collected in another test)."""
    opened: list[KeptAlive] = []

    async def spread_(
        gw: GatewayProcess, count: int = 20, request: bytes = get("/", close=False), expect: int = 200
    ) -> list[tuple[KeptAlive, int]]:
        conns = await spread_connections(gw, count, request, expect)
        opened.extend(c for c, _ in conns)
        return conns

    yield spread_
    await asyncio.gather(*(c.close() for c in opened))
