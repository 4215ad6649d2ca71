"""API tokens end to end: the CLI mints, rotates, retires and revokes; a real gateway
process verifies; an independent JOSE library agrees."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from jwcrypto import jwk, jws, jwt

from tests.conftest import Upstream
from tests.metrics_parse import scrape
from tests.procs import GatewayProcess, gateway_cmd, running_gateway
from tests.rawhttp import get, raw_request

ISSUER = "https://api.example.test"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(gateway_cmd(*args), capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def provider(extra: str = "") -> str:
    return f"""
providers:
  api-tokens:
    issuer: {ISSUER}
    audiences: [orders-api, billing-api]
    algorithms: [EdDSA, ES256, RS256]
    max_lifetime: 365d
    keys: [{{jwks_file: keys/jwks.json}}]
    revocation_file: keys/revoked.json
    api_tokens:
      signing_keys: keys
      publish_jwks: /.well-known/api-tokens.json
      {extra}
identity:
  claims: {{sub: X-Auth-Subject, scope: X-Auth-Scopes, tier: X-Auth-Tier}}
"""


def routes(upstream: Upstream) -> str:
    return f"""
    - name: orders
      match: {{prefix: /orders}}
      upstream: "{upstream.url}"
      auth: {{any_of: [api-tokens], scopes: [orders:read]}}
    """


def issue(tmp_path: Path, *extra: str, client: str = "acme-billing") -> str:
    result = cli(
        "tokens", "issue", "--config", "gateway.yaml", "--client", client,
        "--scopes", "orders:read orders:write", "--audience", "orders-api", *extra,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


async def status(gw: GatewayProcess, token: str) -> int:
    return (await raw_request(gw.port, get("/orders/1", f"Authorization: Bearer {token}"))).status


async def until_status(gw: GatewayProcess, token: str, wanted: int, seconds: float = 8.0) -> float:
    """Poll until the token gets `wanted`; return how long that took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if await status(gw, token) == wanted:
            return time.monotonic() - t0
        await asyncio.sleep(0.1)
    raise AssertionError(f"token did not get {wanted} within {seconds}s")


async def test_lifecycle_generate_issue_rotate_retire_revoke(tmp_path: Path, upstream: Upstream) -> None:
    first = cli("keys", "generate", "--dir", "keys", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    first_kid = first.stdout.strip()
    key_file = tmp_path / "keys" / f"{first_kid}.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    jwks = json.loads((tmp_path / "keys" / "jwks.json").read_text())
    assert [k["kid"] for k in jwks["keys"]] == [first_kid]
    assert "d" not in jwks["keys"][0]  # public only

    async with running_gateway(tmp_path, routes(upstream), provider()) as gw:
        old = issue(tmp_path, "--claim", "tier=gold", "--ttl", "30d")
        assert await status(gw, old) == 200
        seen = upstream.last.headers
        assert seen["x-auth-subject"] == ["acme-billing"]
        assert seen["x-auth-scopes"] == ["orders:read orders:write"]
        assert seen["x-auth-tier"] == ["gold"]
        assert seen["x-auth-provider"] == ["api-tokens"]

        # Rotation: a second key signs new tokens; the running gateway learns it.
        second = cli("keys", "generate", "--dir", "keys", "--alg", "ES256", cwd=tmp_path)
        second_kid = second.stdout.strip()
        new = issue(tmp_path)
        assert json.loads(_header(new))["kid"] == second_kid
        await until_status(gw, new, 200)
        assert await status(gw, old) == 200  # old tokens stay valid until their key goes

        # Retiring the first key ends the tokens it signed, without a restart.
        assert cli("keys", "retire", "--dir", "keys", "--", first_kid, cwd=tmp_path).returncode == 0
        assert not key_file.exists()
        await until_status(gw, old, 401)
        assert await status(gw, new) == 200

        # Revocation: 401 within a bounded time, no restart.
        jti = json.loads(_payload(new))["jti"]
        assert cli("tokens", "revoke", "--config", "gateway.yaml", jti, cwd=tmp_path).returncode == 0
        took = await until_status(gw, new, 401, seconds=5)
        assert took < 5
        resp = await raw_request(gw.port, get("/orders/1", f"Authorization: Bearer {new}"))
        assert b"revoked" in resp.body
        # Revoking a client revokes each of its outstanding tokens.
        a, b = issue(tmp_path, client="partner-x"), issue(tmp_path, client="partner-x")
        other = issue(tmp_path, client="partner-y")
        await until_status(gw, a, 200)
        assert (
            cli("tokens", "revoke", "--config", "gateway.yaml", "--client", "partner-x", cwd=tmp_path).returncode == 0
        )
        await until_status(gw, a, 401)
        assert await status(gw, b) == 401
        assert await status(gw, other) == 200

        # A corrupt revocation file is loud, and the last good list stays in force.
        (tmp_path / "keys" / "revoked.json").write_text("{oops")
        await asyncio.sleep(2.5)
        assert await status(gw, a) == 401
        assert await status(gw, other) == 200
        metrics = await scrape(gw.admin_port)
        # >= 1: the test's own (non-atomic) write may be seen half-done, then done.
        assert metrics.get("gateway_revocation_reloads_total", provider="api-tokens", result="failure") >= 1
    log = (tmp_path / "gateway.log").read_text()
    assert "revocation file" in log
    assert "is unusable" in log
    assert "stays in force" in log


async def test_ledger_lists_tokens_and_never_contains_them(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text(
        provider() + "routes:\n  - {name: x, match: {prefix: /x}, upstream: 'http://u', auth: public}\n"
    )
    assert cli("keys", "generate", "--dir", "keys", cwd=tmp_path).returncode == 0
    tokens = [issue(tmp_path, client=f"client-{i}") for i in range(3)]
    ledger_text = (tmp_path / "keys" / "ledger.jsonl").read_text()
    for token in tokens:
        assert token not in ledger_text
        for part in token.split("."):
            assert part not in ledger_text
    records = [json.loads(line) for line in ledger_text.splitlines()]
    assert [r["client"] for r in records] == ["client-0", "client-1", "client-2"]
    assert set(records[0]) >= {"jti", "client", "scopes", "audience", "issued", "expires"}
    listing = cli("tokens", "list", "--config", "gateway.yaml", cwd=tmp_path)
    assert listing.returncode == 0
    assert all(r["jti"] in listing.stdout for r in records)
    assert all(t not in listing.stdout for t in tokens)
    jti = records[1]["jti"]
    assert cli("tokens", "revoke", "--config", "gateway.yaml", jti, cwd=tmp_path).returncode == 0
    listing = cli("tokens", "list", "--config", "gateway.yaml", cwd=tmp_path)
    assert jti not in listing.stdout
    everything = cli("tokens", "list", "--config", "gateway.yaml", "--all", cwd=tmp_path)
    assert f"{jti}" in everything.stdout
    assert "revoked" in everything.stdout


def test_minting_rules(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text(
        provider() + "routes:\n  - {name: x, match: {prefix: /x}, upstream: 'http://u', auth: public}\n"
    )
    no_keys = cli(
        "tokens", "issue", "--config", "gateway.yaml", "--client", "c", "--audience", "orders-api", cwd=tmp_path
    )
    assert no_keys.returncode == 1
    assert "gateway keys generate --dir" in no_keys.stderr
    assert cli("keys", "generate", "--dir", "keys", cwd=tmp_path).returncode == 0
    cases = {
        ("--audience", "elsewhere"): "audience 'elsewhere' is not one of the provider's",
        ("--audience", "orders-api", "--ttl", "400d"): "outside (0, 365d]",
        ("--audience", "orders-api", "--claim", "sub=admin"): "--claim cannot set sub",
        ("--audience", "orders-api", "--claim", "novalue"): "expected K=V",
    }
    for args, message in cases.items():
        result = cli("tokens", "issue", "--config", "gateway.yaml", "--client", "c", *args, cwd=tmp_path)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
    token = issue(tmp_path)
    claims = json.loads(_payload(token))
    assert claims["iss"] == ISSUER
    assert claims["sub"] == "acme-billing"
    assert claims["aud"] == "orders-api"
    assert claims["scope"] == "orders:read orders:write"
    assert claims["exp"] - claims["iat"] == 90 * 86400  # the default ttl
    # 128 random bits in hex: never starts with "-", which a command line would take
    # for an option.
    assert re.fullmatch(r"[0-9a-f]{32}", claims["jti"])
    assert json.loads(_header(token))["typ"] == "JWT"
    # An older id that does start with "-" can still be revoked, after "--".
    revoked = cli("tokens", "revoke", "--config", "gateway.yaml", "--", "-old-style_id", cwd=tmp_path)
    assert revoked.returncode == 0, revoked.stderr
    assert "-old-style_id" in (tmp_path / "keys" / "revoked.json").read_text()


async def test_an_independent_library_verifies_against_the_published_jwks(tmp_path: Path, upstream: Upstream) -> None:
    for alg in ("RS256", "ES256", "EdDSA"):
        assert cli("keys", "generate", "--dir", "keys", "--alg", alg, cwd=tmp_path).returncode == 0
    async with running_gateway(tmp_path, routes(upstream), provider()) as gw:
        token = issue(tmp_path)
        async with aiohttp.ClientSession() as client, client.get(f"{gw.url}/.well-known/api-tokens.json") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("application/jwk-set+json")
            published = await r.text()
    keyset = jwk.JWKSet.from_json(published)
    assert len(keyset["keys"]) == 3
    assert all(not k.has_private for k in keyset["keys"])
    verified = jwt.JWT(jwt=token, key=keyset, algs=["EdDSA"], expected_type="JWS")
    claims = json.loads(verified.claims)
    assert claims["iss"] == ISSUER
    assert claims["sub"] == "acme-billing"
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    # With a key set, jwcrypto reports "no key verified it" as JWTMissingKey.
    with pytest.raises((jwt.JWTMissingKey, jws.InvalidJWSSignature)):
        jwt.JWT(jwt=tampered, key=keyset, algs=["EdDSA"])


def _segment(token: str, index: int) -> str:
    import base64

    part = token.split(".")[index]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


def _header(token: str) -> str:
    return _segment(token, 0)


def _payload(token: str) -> str:
    return _segment(token, 1)


async def test_retiring_the_last_key_and_losing_the_revocation_file(tmp_path: Path, upstream: Upstream) -> None:
    kid = cli("keys", "generate", "--dir", "keys", cwd=tmp_path).stdout.strip()
    async with running_gateway(tmp_path, routes(upstream), provider()) as gw:
        token, revoked = issue(tmp_path), issue(tmp_path, client="gone")
        jti = json.loads(_payload(revoked))["jti"]
        assert cli("tokens", "revoke", "--config", "gateway.yaml", jti, cwd=tmp_path).returncode == 0
        await until_status(gw, revoked, 401)
        # Deleting the list, or filling it with JSON nested past the parser's depth, is
        # an accident to report: revoked tokens stay revoked and the watcher carries on.
        revoked_file = tmp_path / "keys" / "revoked.json"
        revoked_file.unlink()
        await asyncio.sleep(2.5)
        assert await status(gw, revoked) == 401
        revoked_file.write_text("[" * 100000)
        await asyncio.sleep(2.5)
        assert await status(gw, revoked) == 401
        other = issue(tmp_path, client="later")
        assert cli("tokens", "revoke", "--config", "gateway.yaml", "--client", "later", cwd=tmp_path).returncode != 0
        revoked_file.unlink()
        other_jti = json.loads(_payload(other))["jti"]
        assert cli("tokens", "revoke", "--config", "gateway.yaml", other_jti, cwd=tmp_path).returncode == 0
        await until_status(gw, other, 401)  # still watching after the bad file

        last = cli("keys", "retire", "--dir", "keys", "--", kid, cwd=tmp_path)
        assert last.returncode == 1
        assert "last key" in last.stderr
        assert await status(gw, token) == 200
        assert cli("keys", "retire", "--dir", "keys", "--force", "--", kid, cwd=tmp_path).returncode == 0
        await until_status(gw, token, 503)  # no keys at all: every token refused


def test_cli_reports_bad_files_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text(
        provider() + "routes:\n  - {name: x, match: {prefix: /x}, upstream: 'http://u', auth: public}\n"
    )
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "jwks.json").write_text('{"keys": ["x"]}')
    for args in (("keys", "list", "--dir", "keys"), ("tokens", "issue", "--config", "gateway.yaml",
                 "--client", "c", "--audience", "orders-api")):  # fmt: skip
        result = cli(*args, cwd=tmp_path)
        assert result.returncode == 1, args
        assert result.stderr.startswith("gateway: ")
        assert "Traceback" not in result.stderr
    assert cli("keys", "generate", "--dir", "keys2", cwd=tmp_path).returncode == 0
    (keys / "ledger.jsonl").write_text("[1]\n")
    result = cli("tokens", "revoke", "--config", "gateway.yaml", "--client", "c", cwd=tmp_path)
    assert result.returncode == 1
    assert "not a ledger record" in result.stderr
    assert "Traceback" not in result.stderr
