"""The token tools as an operator uses them: which key does what, which tokens still
verify, what retiring a key costs, and how --scopes and --audience are read."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.procs import gateway_cmd

POLICY = """
providers:
  api-tokens:
    issuer: https://api.example.test
    audiences: [{audiences}]
    algorithms: [EdDSA, ES256]
    max_lifetime: 365d
    keys: [{{jwks_file: keys/jwks.json}}]
    revocation_file: keys/revoked.json
    api_tokens:
      signing_keys: keys
routes:
  - {{name: x, match: {{prefix: /x}}, upstream: 'http://u', auth: public}}
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(gateway_cmd(*args), capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def setup(tmp_path: Path, audiences: str = "orders-api") -> str:
    (tmp_path / "gateway.yaml").write_text(POLICY.format(audiences=audiences))
    result = cli("keys", "generate", "--dir", "keys", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def issue(tmp_path: Path, *extra: str, client: str = "acme") -> subprocess.CompletedProcess[str]:
    return cli("tokens", "issue", "--config", "gateway.yaml", "--client", client, *extra, cwd=tmp_path)


def row(output: str, key: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith(key)]
    assert len(lines) == 1, output
    return lines[0]


def jti_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stderr.split("issued jti ")[1].split()[0]


def test_keys_list_says_which_key_signs_verifies_or_is_retired(tmp_path: Path) -> None:
    old = setup(tmp_path)
    jti_of(issue(tmp_path))
    jti_of(issue(tmp_path, client="other"))
    middle = cli("keys", "generate", "--dir", "keys", "--alg", "ES256", cwd=tmp_path).stdout.strip()
    new = cli("keys", "generate", "--dir", "keys", cwd=tmp_path).stdout.strip()
    jti_of(issue(tmp_path))
    # Before retiring: how many live tokens each key has (the ledger in --dir by default).
    listing = cli("keys", "list", "--dir", "keys", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert row(listing.stdout, old).split()[2] == "2"
    assert "verifies only" in row(listing.stdout, old)
    assert row(listing.stdout, middle).split()[1:3] == ["ES256", "0"]
    assert row(listing.stdout, new).split()[2] == "1"
    assert "signs new tokens" in row(listing.stdout, new)
    assert "signs new tokens" not in row(listing.stdout, old)

    retire = cli("keys", "retire", "--dir", "keys", "--config", "gateway.yaml", "--", old, cwd=tmp_path)
    assert retire.returncode == 0, retire.stderr
    assert f"warning: 2 live token(s) signed by {old}" in retire.stderr
    quiet = cli("keys", "retire", "--dir", "keys", "--", middle, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "warning" not in quiet.stderr  # no live tokens: nothing to warn about

    listing = cli("keys", "list", "--dir", "keys", cwd=tmp_path)
    assert "retired" in row(listing.stdout, old)
    assert "verifies nothing" in row(listing.stdout, middle)
    assert "signs new tokens" in row(listing.stdout, new)


def test_tokens_list_shows_each_tokens_kid_and_whether_it_verifies(tmp_path: Path) -> None:
    old = setup(tmp_path)
    by_old = jti_of(issue(tmp_path, client="a"))
    revoked = jti_of(issue(tmp_path, client="b"))
    expired = jti_of(issue(tmp_path, "--ttl", "1s", client="c"))
    assert cli("tokens", "revoke", "--config", "gateway.yaml", revoked, cwd=tmp_path).returncode == 0
    new = cli("keys", "generate", "--dir", "keys", cwd=tmp_path).stdout.strip()
    by_new = jti_of(issue(tmp_path, client="d"))
    assert cli("keys", "retire", "--dir", "keys", "--", old, cwd=tmp_path).returncode == 0
    time.sleep(1.1)  # the 1s token expires
    everything = cli("tokens", "list", "--config", "gateway.yaml", "--all", cwd=tmp_path)
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.splitlines()[0].split() == [
        "jti", "client", "kid", "scopes", "audience", "issued", "expires", "status",
    ]  # fmt: skip
    assert row(everything.stdout, by_old).endswith("key retired")
    assert f"  {old}  " in row(everything.stdout, by_old)
    assert row(everything.stdout, revoked).endswith("revoked")
    assert row(everything.stdout, expired).endswith("expired")
    assert row(everything.stdout, by_new).endswith("active")
    assert f"  {new}  " in row(everything.stdout, by_new)
    live = cli("tokens", "list", "--config", "gateway.yaml", cwd=tmp_path)
    assert [line.split()[0] for line in live.stdout.splitlines()[1:]] == [by_new]


def test_scopes_are_space_separated_and_a_comma_is_refused(tmp_path: Path) -> None:
    setup(tmp_path)
    refused = issue(tmp_path, "--scopes", "orders:read,orders:write")
    assert refused.returncode == 2
    assert "space-separated (RFC 6749 §3.3)" in refused.stderr
    assert '"orders:read orders:write"' in refused.stderr  # says what to type instead
    assert refused.stdout == ""
    jti_of(issue(tmp_path, "--scopes", "orders:read orders:write"))
    listing = cli("tokens", "list", "--config", "gateway.yaml", cwd=tmp_path)
    assert "orders:read,orders:write" in listing.stdout  # two scopes, listed comma-joined


def test_audience_may_be_omitted_only_when_the_provider_has_one(tmp_path: Path) -> None:
    setup(tmp_path)
    jti_of(issue(tmp_path))
    assert "orders-api" in cli("tokens", "list", "--config", "gateway.yaml", cwd=tmp_path).stdout
    (tmp_path / "gateway.yaml").write_text(POLICY.format(audiences="orders-api, billing-api"))
    several = issue(tmp_path)
    assert several.returncode == 2
    assert "--audience is required" in several.stderr
    assert "orders-api, billing-api" in several.stderr
    jti_of(issue(tmp_path, "--audience", "billing-api"))
