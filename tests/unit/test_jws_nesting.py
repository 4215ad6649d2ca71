"""JSON nesting in a token: one limit of our own, the same on every Python."""

from __future__ import annotations

import base64
import json

import pytest

from gateway.auth.jws import Jws, parse_jws
from gateway.errors import Reason


def _b64(data: str) -> str:
    return base64.urlsafe_b64encode(data.encode()).rstrip(b"=").decode()


def _token(header: str, claims: str) -> str:
    return f"{_b64(header)}.{_b64(claims)}.{_b64('sig')}"


def _nested(depth: int, member: str) -> str:
    """A JSON object with `member`, whose containers nest `depth` deep (arrays under x)."""
    return "{" + member + ',"x":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


@pytest.mark.parametrize("where", ["header", "claims"])
def test_nesting_up_to_the_limit_parses_and_beyond_it_is_malformed(where: str) -> None:
    # 33 levels parse on every Python; 3 000 parse on 3.13 but not on 3.11 or 3.12.
    for depth, parses in [(2, True), (32, True), (33, False), (3000, False)]:
        if where == "header":
            token = _token(_nested(depth, '"alg":"RS256"'), '{"sub":"a"}')
        else:
            token = _token('{"alg":"RS256"}', _nested(depth, '"sub":"a"'))
        result = parse_jws(token)
        if parses:
            assert isinstance(result, Jws), depth
        else:
            assert result is Reason.MALFORMED_TOKEN, depth


def test_a_realistic_claim_set_parses() -> None:
    claims = {
        "sub": "alice",
        "aud": ["a", "b"],
        "realm_access": {"roles": ["admin"]},
        "resource_access": {"app": {"roles": ["read", "write"]}, "other": {"roles": []}},
    }
    assert isinstance(parse_jws(_token('{"alg":"RS256"}', json.dumps(claims))), Jws)
