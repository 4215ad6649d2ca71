"""Fixtures for the auth tests: real keys (made once per run), a real IdP, the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import GatewayFactory, Upstream
from tests.factories import IdentityProvider, SigningKey, ec_key, ed_key, rsa_key
from tests.functional.auth_env import HMAC_SECRET, AuthEnv, policy_text, wait_ready

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
