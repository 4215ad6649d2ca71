"""A client-supplied identity header never reaches a backend, on any route, in any spelling."""

from __future__ import annotations

import pytest

from tests.factories import SigningKey, claims, sign
from tests.functional.auth_env import AuthEnv

SPOOFS = [
    "X-Auth-Subject: mallory",
    "x-auth-subject: mallory",
    "X-AUTH-SUBJECT: mallory",
    "X_Auth_Subject: mallory",
    "x_auth_subject: mallory",
    "X.Auth.Subject: mallory",
    "X-Auth_Subject: mallory",
    "X-Auth-Anything-Else: mallory",  # the reserved prefix, not just configured names
    "X-User-Email: mallory@example.com",  # a configured claim header outside the prefix
    "X_User_Email: mallory@example.com",
    "x-auth-name: mallory",  # configured on one route only: stripped on every route
    "X-Auth-Provider: corp",
]


def _leaked(headers: dict[str, list[str]]) -> list[str]:
    return [f"{k}: {v}" for k, vs in headers.items() for v in vs if "mallory" in v or (k == "x-auth-provider")]


@pytest.mark.parametrize("path", ["/public/x", "/orders/x", "/maybe/x"])
async def test_spoofed_identity_headers_are_removed(env: AuthEnv, rsa: SigningKey, path: str) -> None:
    token = sign(rsa, claims(env.idp.issuer, sub="alice")) if path.startswith("/orders") else None
    resp = await env.call(path, token, *SPOOFS)
    assert resp.status == 200
    seen = env.upstream.last.headers
    leaked = [h for h in _leaked(seen) if not (h == "x-auth-provider: corp" and token)]
    assert leaked == []
    if token:
        assert seen["x-auth-subject"] == ["alice"]  # the verified value, and only it
        assert seen["x-auth-provider"] == ["corp"]
    else:
        assert not [k for k in seen if k.replace("_", "-").startswith("x-auth-")]


async def test_a_missing_claim_does_not_let_a_spoofed_header_through(env: AuthEnv, rsa: SigningKey) -> None:
    token = sign(rsa, claims(env.idp.issuer))  # no email claim
    resp = await env.call("/orders", token, "X-User-Email: mallory@example.com")
    assert resp.status == 200
    assert "x-user-email" not in env.upstream.last.headers
