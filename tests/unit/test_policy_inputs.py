"""`CompiledPolicy.inputs`: the files a policy was read from, which `server.watch` watches."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from gateway.policy import load_policy
from tests.factories import ec_key, ed_key, jwks, write

ROUTES = """\
routes:
  - {name: ok, match: {prefix: /ok}, upstream: "http://127.0.0.1:81", auth: public}
"""


def test_policy_first_then_every_named_key_file_sorted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "elsewhere").mkdir()
    pem = write(tmp_path / "keys" / "a.pem", ec_key().public_pem())
    jwks_file = write(tmp_path / "elsewhere" / "jwks.json", jwks(ed_key()))
    secret = write(tmp_path / "keys" / "hmac.txt", "s" * 64 + "\n")
    monkeypatch.setenv("GW_TEST_HMAC", "t" * 64)
    (tmp_path / "policy.yaml").write_text(
        textwrap.dedent(
            f"""\
            providers:
              files:
                issuer: https://a.example
                audiences: [api]
                algorithms: [ES256, EdDSA]
                keys: [{{pem_file: keys/a.pem}}, {{jwks_file: {jwks_file}}}]
                revocation_file: revoked.json
              again:
                issuer: https://b.example
                audiences: [api]
                algorithms: [ES256]
                keys: [{{pem_file: ./keys/../keys/a.pem}}, {{jwks_url: "https://idp.example/jwks"}}]
              hmac:
                issuer: https://c.example
                audiences: [api]
                algorithms: [HS256]
                keys: [{{hmac_secret: {{file: keys/hmac.txt}}}}, {{hmac_secret: {{env: GW_TEST_HMAC}}}}]
              remote:
                issuer: https://idp.example
                audiences: [api]
                algorithms: [RS256]
                keys: [{{oidc_discovery: true}}]
            """
        )
        + ROUTES
    )
    monkeypatch.chdir(tmp_path)
    policy = load_policy("policy.yaml")  # relative: made absolute against the working directory
    # Absolute, each as compile reads it: `..` is left to the kernel, as when the file
    # is read (normalising it on the text would watch another file where a directory
    # is a symlink), so one file named two ways is watched twice, harmlessly. No
    # revocation file, URL or environment variable.
    again = str(tmp_path / "keys" / ".." / "keys" / "a.pem")
    assert policy.inputs == (str(tmp_path / "policy.yaml"), *sorted([pem, again, jwks_file, secret]))
    assert all(os.path.isabs(p) for p in policy.inputs)


def test_a_policy_without_files_lists_itself(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(ROUTES)
    assert load_policy(str(tmp_path / "p.yaml")).inputs == (str(tmp_path / "p.yaml"),)


def test_a_symlinked_policy_keeps_the_symlink_path(tmp_path: Path) -> None:
    # A Kubernetes ConfigMap volume: policy.yaml -> ..data/policy.yaml, ..data -> ..2024_01.
    # An update swaps ..data; only a stat through the path the gateway was given sees it.
    conf = tmp_path / "conf"
    (conf / "..2024_01").mkdir(parents=True)
    pem = write(tmp_path / "a.pem", ec_key().public_pem())
    (conf / "..2024_01" / "policy.yaml").write_text(
        "providers:\n"
        f"  p: {{issuer: https://a.example, audiences: [api], algorithms: [ES256], keys: [{{pem_file: {pem}}}]}}\n"
        + ROUTES
    )
    (conf / "..data").symlink_to("..2024_01")
    (conf / "policy.yaml").symlink_to("..data/policy.yaml")
    policy = load_policy(str(conf / "policy.yaml"))
    assert policy.inputs == (str(conf / "policy.yaml"), pem)
