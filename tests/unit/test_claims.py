"""Claim checks and claim rendering: pure functions."""

from __future__ import annotations

import time

import pytest

from gateway.auth.claims import ClaimRules, check_claims, is_number, scopes_of
from gateway.auth.forward import UnforwardableError, fold, render_claim
from gateway.errors import Reason
from gateway.obs.metrics import Metrics

RULES = ClaimRules(issuer="i", leeway=30, max_lifetime=None, typ=None, required=("jti",))
AUD = frozenset({"a"})


def base(**extra: object) -> dict[str, object]:
    return {"iss": "i", "aud": "a", "exp": time.time() + 60, "jti": "j", **extra}


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"jti": None}, Reason.MISSING_CLAIM),
        ({"jti": ["x"]}, Reason.INVALID_CLAIM),
        ({"jti": {}}, Reason.INVALID_CLAIM),
        ({"exp": 10**400}, Reason.INVALID_CLAIM),
        ({"exp": float("inf")}, Reason.INVALID_CLAIM),
        ({"nbf": -(10**400)}, Reason.INVALID_CLAIM),
        ({"aud": {"a": 1}}, Reason.INVALID_CLAIM),
        ({"sub": 123}, Reason.INVALID_CLAIM),
        ({"sub": True}, Reason.INVALID_CLAIM),
        ({"sub": ""}, Reason.INVALID_CLAIM),
        ({"sub": None}, Reason.INVALID_CLAIM),
        ({"sub": ["a"]}, Reason.INVALID_CLAIM),
        ({"jti": ""}, Reason.INVALID_CLAIM),
        ({"nbf": None}, Reason.INVALID_CLAIM),
        ({"iat": True}, Reason.INVALID_CLAIM),
        ({"iat": "0"}, Reason.INVALID_CLAIM),
        ({"iss": ["i"]}, Reason.INVALID_CLAIM),
        ({"exp": False}, Reason.INVALID_CLAIM),
    ],
)
def test_refusals(extra: dict[str, object], reason: Reason) -> None:
    assert check_claims(base(**extra), RULES, AUD, time.time()) is reason


def test_optional_registered_claims_are_type_checked_only_when_present() -> None:
    rules = ClaimRules(issuer="i", leeway=30, max_lifetime=None, typ=None, required=())
    claims = {"iss": "i", "aud": "a", "exp": time.time() + 60}
    assert check_claims(claims, rules, AUD, time.time()) is None
    assert check_claims({**claims, "jti": None}, rules, AUD, time.time()) is Reason.INVALID_CLAIM
    assert check_claims({**claims, "sub": "0"}, rules, AUD, time.time()) is None


def test_numbers() -> None:
    assert is_number(1)
    assert is_number(1.5)
    assert not is_number(True)
    assert not is_number("1")
    assert not is_number(2**60)
    assert not is_number(float("nan"))


def test_scopes_split_on_spaces_only() -> None:
    assert scopes_of({"scope": "a  b"}) == {"a", "b"}
    assert scopes_of({"scope": "x\x1fadmin:write"}) == {"x\x1fadmin:write"}
    assert scopes_of({"scope": "x\u00a0admin"}) == {"x\u00a0admin"}
    assert scopes_of({"scp": ["a", 3, "b"], "scope": "c"}) == {"a", "b", "c"}


@pytest.mark.parametrize(
    ("value", "header"),
    [
        ("plain", "plain"),
        ("a,b", "a%2Cb"),
        (["a", "b"], "a,b"),
        (["a,b"], "a%2Cb"),
        (" pad ", "%20pad%20"),
        ("100%", "100%25"),
        ("ann+ops@example.com", "ann%2Bops@example.com"),
        ("\u00e9", "%C3%A9"),
        (7, "7"),
        (1.5, "1.5"),
        (False, "false"),
        ({"k": "v", "n": 1}, '{"k":"v"%2C"n":1}'),
        (True, "true"),
        (None, "null"),
        ([True, 1, "x"], "true,1,x"),
        ([{"a": [1, 2]}], '{"a":[1%2C2]}'),
    ],
)
def test_render(value: object, header: str) -> None:
    assert render_claim(value) == header


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "\x00", "\x7f", "a\ud800b", ["ok", "bad\n"]])
def test_render_refuses(value: object) -> None:
    with pytest.raises(UnforwardableError):
        render_claim(value)


def test_fold() -> None:
    assert {fold(n) for n in ("X-Auth-Subject", "x_auth_subject", "X.Auth.Subject", "X-Auth~Subject")} == {
        "x-auth-subject"
    }


def test_method_label_cache_is_bounded() -> None:
    route = Metrics().route("r")
    for i in range(500):
        route.request(f"M{i:04d}X", 404, "denied")
    assert len(route._requests) == 1


def test_revocation_entries_outlive_any_leeway(tmp_path: object) -> None:
    from pathlib import Path

    from gateway.tokens import revocation

    path = Path(str(tmp_path)) / "revoked.json"
    now = time.time()
    revocation.add(path, [{"jti": "recently-expired", "exp": now - 60}])
    revocation.add(path, [{"jti": "long-gone", "exp": now - 3 * 86400}, {"jti": "other", "exp": now + 60}])
    revocation.add(path, [{"jti": "third", "exp": now + 60}])
    assert {e["jti"] for e in revocation.read(path)} == {"recently-expired", "other", "third"}
