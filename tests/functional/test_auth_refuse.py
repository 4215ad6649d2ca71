"""One test per refusal reason, through real sockets, with real keys.

Each asserts the status, the RFC 6750 challenge, the fixed JSON body, that nothing was
forwarded, and that the token never comes back in the response.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest

from gateway.errors import Reason
from tests.factories import SigningKey, b64, claims, raw_token, sign, sign_with_header
from tests.functional.auth_env import HMAC_ISSUER, HMAC_SECRET, AuthEnv
from tests.rawhttp import RawResponse, get, raw_request


def assert_refused(resp: RawResponse, reason: Reason, env: AuthEnv, token: str | None = None) -> None:
    assert resp.status == reason.status, (resp.status, resp.body)
    assert json.loads(resp.body) == {"error": reason.error, "error_description": reason.description}
    challenge = resp.headers.get("WWW-Authenticate")
    if reason.challenge is None:
        assert challenge is None
    elif reason.challenge == "":
        assert challenge == 'Bearer realm="orders"'
    else:
        assert challenge is not None
        assert challenge.startswith(f'Bearer realm="orders", error="{reason.challenge}", error_description="')
    if token:
        assert token not in str(resp.headers)
        assert token.encode() not in resp.body
    assert env.upstream.seen == []


async def test_missing_token_has_challenge_without_error(env: AuthEnv) -> None:
    assert_refused(await env.call("/orders"), Reason.TOKEN_MISSING, env)
    # Another scheme carries no bearer token.
    assert_refused(await env.call("/orders", None, "Authorization: Basic YTpi"), Reason.TOKEN_MISSING, env)


async def test_duplicate_authorization_headers(env: AuthEnv, rsa: SigningKey) -> None:
    token = sign(rsa, claims(env.idp.issuer))
    resp = await env.call("/orders", token, f"Authorization: Bearer {token}")
    assert_refused(resp, Reason.MULTIPLE_AUTHORIZATION, env, token)
    resp = await env.call("/orders", token, "authorization: Basic YTpi")
    assert_refused(resp, Reason.MULTIPLE_AUTHORIZATION, env, token)


@pytest.mark.parametrize("value", ["Bearer", "Bearer ", "Bearer a b", "Bearer a!b", "bearer\ttok", "Bearer =abc"])
async def test_malformed_authorization(env: AuthEnv, value: str) -> None:
    resp = await raw_request(env.gateway.public_port, get("/orders", f"Authorization: {value}"))
    assert_refused(resp, Reason.MALFORMED_AUTHORIZATION, env)


async def test_query_token_refused_with_a_pointer_to_the_header(env: AuthEnv, rsa: SigningKey) -> None:
    token = sign(rsa, claims(env.idp.issuer))
    for query in (f"access_token={token}", f"x=1&access%5Ftoken={token}"):
        resp = await env.call(f"/orders?{query}")
        assert_refused(resp, Reason.QUERY_TOKEN, env, token)
        assert b"Authorization header" in resp.body
    # Header and query at once is two methods (RFC 6750 §2), even where query is allowed.
    resp = await env.call(f"/query?access_token={token}", token)
    assert_refused(resp, Reason.MULTIPLE_AUTHORIZATION, env, token)


async def test_token_too_large(env: AuthEnv, rsa: SigningKey) -> None:
    token = sign(rsa, claims(env.idp.issuer, pad="x" * 9000))
    assert_refused(await env.call("/orders", token), Reason.TOKEN_TOO_LARGE, env, token)


def _malformed(rsa: SigningKey, iss: str) -> dict[str, str]:
    good = sign(rsa, claims(iss))
    h, p, s = good.split(".")
    header = {"alg": "RS256", "kid": rsa.kid}
    return {
        "two segments": f"{h}.{p}",
        "four segments": f"{good}.{s}",
        "padded signature": f"{h}.{p}.{s}==" if len(s) % 4 else f"{h}.{p}.{s}====",
        "stray character": f"{h}.{p}.{s[:-2]}+{s[-1]}",
        "standard base64 slash": f"{h}.{p}/.{s}",
        "non-canonical trailing bits": f"{h}.{p}.{s[:-1]}{_flip_padding_bits(s)}",
        "header not json": f"{b64(b'not json')}.{p}.{s}",
        "payload an array": f"{h}.{b64(b'[1,2]')}.{s}",
        "duplicate key in header": raw_token('{"alg":"RS256","alg":"RS256","kid":"rsa-1"}', claims(iss), b"sig"),
        "duplicate key in payload": raw_token(header, '{"sub":"alice","sub":"admin"}', b"sig"),
        "NaN in payload": raw_token(header, '{"exp": NaN}', b"sig"),
        "kid not a string": raw_token({"alg": "RS256", "kid": 7}, claims(iss), b"sig"),
        "header not starting with {": raw_token(' {"alg":"RS256","kid":"rsa-1"}', claims(iss), b"sig"),
        "deeply nested header": raw_token('{"alg":"RS256","x":' + "[" * 3000 + "]" * 3000 + "}", claims(iss), b"s"),
        "deeply nested payload": raw_token(header, '{"sub":' + "[" * 3000 + "]" * 3000 + "}", b"sig"),
    }


def _flip_padding_bits(sig: str) -> str:
    # For a segment of length 4n+2 or 4n+3 the last character has unused low bits;
    # setting one gives a second spelling of the same bytes.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    index = alphabet.index(sig[-1])
    return alphabet[index | 1]


async def test_malformed_tokens(env: AuthEnv, rsa: SigningKey) -> None:
    tokens = _malformed(rsa, env.idp.issuer)
    sig = tokens["non-canonical trailing bits"].rsplit(".", 1)[1]
    assert len(sig) % 4 in (2, 3), "the RSA-2048 signature segment must have unused bits for this case"
    for what, token in tokens.items():
        resp = await env.call("/orders", token)
        assert resp.status == 401, what
        assert_refused(resp, Reason.MALFORMED_TOKEN, env, token)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_in_any_casing(env: AuthEnv, alg: str) -> None:
    token = raw_token({"alg": alg, "typ": "JWT"}, claims(env.idp.issuer, sub="admin"))
    assert_refused(await env.call("/orders", token), Reason.ALG_NOT_ALLOWED, env, token)
    token = raw_token({"alg": alg}, claims(HMAC_ISSUER, sub="admin"))
    assert_refused(await env.call("/orders", token), Reason.ALG_NOT_ALLOWED, env, token)


async def test_algorithm_confusion_hs256_with_the_rsa_public_key(env: AuthEnv, rsa: SigningKey) -> None:
    # The classic: sign HS256 using the RSA public key (PEM and JWK forms) as the secret.
    header = {"alg": "HS256", "kid": rsa.kid, "typ": "JWT"}
    payload = claims(env.idp.issuer, sub="admin")
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}".encode()
    import hashlib
    import hmac

    for secret in (rsa.public_pem(), json.dumps(rsa.public_jwk()).encode()):
        mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
        token = f"{signing_input.decode()}.{b64(mac)}"
        assert_refused(await env.call("/orders", token), Reason.ALG_NOT_ALLOWED, env, token)


async def test_algorithm_not_on_the_providers_list(env: AuthEnv, rsa: SigningKey) -> None:
    token = sign(rsa, claims(env.idp.issuer), alg="RS512")
    assert_refused(await env.call("/orders", token), Reason.ALG_NOT_ALLOWED, env, token)
    token = sign(rsa, claims(env.idp.issuer), alg="PS256")
    assert_refused(await env.call("/orders", token), Reason.ALG_NOT_ALLOWED, env, token)


@pytest.mark.parametrize("member", ["jku", "x5u", "jwk", "x5c"])
async def test_key_carried_or_pointed_to_by_the_token(env: AuthEnv, rsa: SigningKey, member: str) -> None:
    value: object = {
        "jku": "http://127.0.0.1:1/attacker-jwks",
        "x5u": "http://127.0.0.1:1/cert.pem",
        "jwk": rsa.public_jwk(),
        "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"],
    }[member]
    token = sign(rsa, claims(env.idp.issuer), **{member: value})  # type: ignore[arg-type]
    assert_refused(await env.call("/orders", token), Reason.KEY_IN_TOKEN, env, token)


async def test_crit_naming_anything(env: AuthEnv, rsa: SigningKey) -> None:
    token = sign(rsa, claims(env.idp.issuer), crit=["exp"])
    assert_refused(await env.call("/orders", token), Reason.UNKNOWN_CRIT, env, token)


async def test_typ_mismatch(env: AuthEnv, rsa: SigningKey) -> None:
    for typ in ("JWT", "id_token+jwt", None):
        token = sign(rsa, claims(env.idp.issuer, ttl=600, jti="j"), typ=typ)
        assert_refused(await env.call("/typed", token), Reason.TYP_MISMATCH, env, token)


async def test_issuer_mismatch(env: AuthEnv, rsa: SigningKey) -> None:
    for iss in ("https://evil.test", env.idp.issuer + "/", env.idp.issuer.upper()):
        token = sign(rsa, claims(iss))
        assert_refused(await env.call("/orders", token), Reason.ISSUER_MISMATCH, env, token)


async def test_unknown_kid(env: AuthEnv, rsa: SigningKey) -> None:
    token = sign(rsa, claims(env.idp.issuer), kid="no-such-kid")
    assert_refused(await env.call("/orders", token), Reason.UNKNOWN_KID, env, token)


async def test_bad_signature(env: AuthEnv, rsa: SigningKey, rsa_other: SigningKey) -> None:
    forged = sign(rsa_other, claims(env.idp.issuer, sub="admin"))  # same kid, wrong key
    assert_refused(await env.call("/orders", forged), Reason.BAD_SIGNATURE, env, forged)
    h, _, s = sign(rsa, claims(env.idp.issuer)).split(".")
    tampered = f"{h}.{b64(json.dumps(claims(env.idp.issuer, sub='admin')).encode())}.{s}"
    assert_refused(await env.call("/orders", tampered), Reason.BAD_SIGNATURE, env, tampered)
    hs = jwt.encode(claims(HMAC_ISSUER), b"x" * 40, algorithm="HS256")
    assert_refused(await env.call("/orders", hs), Reason.BAD_SIGNATURE, env, hs)


async def test_missing_and_invalid_claims(env: AuthEnv, rsa: SigningKey) -> None:
    no_exp = claims(env.idp.issuer)
    del no_exp["exp"]
    no_aud = claims(env.idp.issuer)
    del no_aud["aud"]
    cases = {
        Reason.MISSING_CLAIM: [no_exp, no_aud, {k: v for k, v in claims(env.idp.issuer).items() if k != "iss"}],
        Reason.INVALID_CLAIM: [
            claims(env.idp.issuer, exp="9999999999"),
            claims(env.idp.issuer, exp=True),
            claims(env.idp.issuer, nbf="0"),
            claims(env.idp.issuer, aud=["orders-api", 7]),
            {**claims(env.idp.issuer), "iss": 1},
        ],
    }
    for reason, payloads in cases.items():
        for payload in payloads:
            token = sign(rsa, payload)
            resp = await env.call("/orders", token)
            assert resp.status == 401, payload
            assert_refused(resp, reason, env, token)
    token = sign(rsa, claims(env.idp.issuer, ttl=600))  # corp-at also requires jti
    assert_refused(await env.call("/typed", token, method="GET"), Reason.TYP_MISMATCH, env, token)
    token = sign(rsa, claims(env.idp.issuer, ttl=600), typ="at+jwt")
    assert_refused(await env.call("/typed", token), Reason.MISSING_CLAIM, env, token)


async def test_expired_not_yet_valid_and_issued_in_future(env: AuthEnv, rsa: SigningKey) -> None:
    now = int(time.time())
    iss = env.idp.issuer
    cases = {
        Reason.EXPIRED: claims(iss, exp=now - 31, iat=now - 600),
        Reason.NOT_YET_VALID: claims(iss, nbf=now + 120),
        Reason.ISSUED_IN_FUTURE: claims(iss, iat=now + 3600, exp=now + 7200),
    }
    for reason, payload in cases.items():
        token = sign(rsa, payload)
        assert_refused(await env.call("/orders", token), reason, env, token)


async def test_lifetime_too_long(env: AuthEnv, rsa: SigningKey) -> None:
    token = sign(rsa, claims(env.idp.issuer, ttl=7200, jti="j"), typ="at+jwt")
    assert_refused(await env.call("/typed", token), Reason.LIFETIME_TOO_LONG, env, token)


async def test_audience_mismatch(env: AuthEnv, rsa: SigningKey) -> None:
    for aud in ("other-api", ["a", "b"], []):
        token = sign(rsa, claims(env.idp.issuer, aud=aud))
        assert_refused(await env.call("/orders", token), Reason.AUDIENCE_MISMATCH, env, token)


@pytest.mark.parametrize("value", ["alice\r\nX-Auth-Role: admin", "alice\nx", "a\x00b", "a\x7fb", "ad\ud800min"])
async def test_unforwardable_claim(env: AuthEnv, rsa: SigningKey, value: str) -> None:
    token = sign(rsa, claims(env.idp.issuer, sub=value))
    assert_refused(await env.call("/orders", token), Reason.UNFORWARDABLE_CLAIM, env, token)


async def test_insufficient_scope_names_the_scope(env: AuthEnv, rsa: SigningKey) -> None:
    for payload in (
        claims(env.idp.issuer, scope="read", role="admin", org={"id": "acme"}),
        claims(env.idp.issuer, role="admin", org={"id": "acme"}),
        claims(env.idp.issuer, scope="admin:writer", role="admin", org={"id": "acme"}),
    ):
        token = sign(rsa, payload)
        resp = await env.call("/admin", token)
        assert_refused(resp, Reason.INSUFFICIENT_SCOPE, env, token)
        assert resp.headers["WWW-Authenticate"].endswith(', scope="admin:write"')


async def test_claim_mismatch(env: AuthEnv, rsa: SigningKey) -> None:
    for payload in (
        claims(env.idp.issuer, scope="admin:write", role="viewer", org={"id": "acme"}),
        claims(env.idp.issuer, scope="admin:write", role=["viewer"], org={"id": "acme"}),
        claims(env.idp.issuer, scope="admin:write", role="admin", org={"id": "other"}),
        claims(env.idp.issuer, scope="admin:write", role="admin"),
        claims(env.idp.issuer, scope="admin:write", role=True, org={"id": "acme"}),
    ):
        token = sign(rsa, payload)
        assert_refused(await env.call("/admin", token), Reason.CLAIM_MISMATCH, env, token)


async def test_route_audiences_narrow_each_provider_separately(env: AuthEnv, rsa: SigningKey) -> None:
    # `shared` only has orders-api; the route also lists billing-api, for `corp`. That
    # must not lend billing-api to `shared`.
    lent = jwt.encode(claims(HMAC_ISSUER, aud="billing-api"), HMAC_SECRET, algorithm="HS256")
    assert_refused(await env.call("/mixed", lent), Reason.AUDIENCE_MISMATCH, env, lent)
    own = jwt.encode(claims(HMAC_ISSUER, aud="orders-api"), HMAC_SECRET, algorithm="HS256")
    assert (await env.call("/mixed", own)).status == 200
    assert (await env.call("/mixed", sign(rsa, claims(env.idp.issuer, aud="billing-api")))).status == 200


async def test_out_of_range_numbers_are_invalid_claims_not_errors(env: AuthEnv, rsa: SigningKey) -> None:
    for name in ("exp", "nbf", "iat"):
        payload = claims(env.idp.issuer)
        payload[name] = 10**400
        token = sign(rsa, payload)
        assert_refused(await env.call("/orders", token), Reason.INVALID_CLAIM, env, token)


# RFC 7519 §4.1: the registered claims' types. Each payload is really signed by a key
# the gateway trusts, so only the type check stands between it and the upstream.
_MISTYPED: dict[str, dict[str, object]] = {
    "sub a number": {"sub": 123},
    "sub true": {"sub": True},
    "sub an object": {"sub": {"id": 1}},
    "sub an array": {"sub": ["a", "b"]},
    "sub empty": {"sub": ""},
    "sub null": {"sub": None},
    "jti a number": {"jti": 7},
    "jti empty": {"jti": ""},
    "jti an array": {"jti": ["a"]},
    "nbf null": {"nbf": None},
    "nbf true": {"nbf": True},
    "iat a numeric string": {"iat": "1"},
    "iat null": {"iat": None},
    "iat false": {"iat": False},
    "aud a number": {"aud": 7},
    "aud nested array": {"aud": [["orders-api"]]},
    "aud an object": {"aud": {"orders-api": True}},
}


@pytest.mark.parametrize("what", list(_MISTYPED))
async def test_registered_claims_of_the_wrong_type_are_refused(env: AuthEnv, rsa: SigningKey, what: str) -> None:
    payload = {**claims(env.idp.issuer), **_MISTYPED[what]}
    token = sign(rsa, payload)
    assert_refused(await env.call("/orders", token), Reason.INVALID_CLAIM, env, token)


async def test_a_string_subject_that_looks_like_a_number_is_still_accepted(env: AuthEnv, rsa: SigningKey) -> None:
    token = sign(rsa, claims(env.idp.issuer, sub="123", jti="j-1"))
    assert (await env.call("/orders", token)).status == 200
    assert env.upstream.last.headers["x-auth-subject"] == ["123"]


@pytest.mark.parametrize(
    "member", [{"kid": None}, {"kid": 7}, {"kid": ["rsa-1"]}, {"typ": 1}, {"typ": None}, {"cty": {"a": 1}}]
)
async def test_jose_header_members_of_the_wrong_type_are_malformed(
    env: AuthEnv, rsa: SigningKey, member: dict[str, object]
) -> None:
    # Really signed: before this check, `"kid": null` selected keys as if no kid were
    # named and the token was accepted.
    token = sign_with_header(rsa, {"alg": "RS256", **member}, claims(env.idp.issuer))
    assert_refused(await env.call("/orders", token), Reason.MALFORMED_TOKEN, env, token)
    ok = sign_with_header(rsa, {"alg": "RS256", "kid": rsa.kid, "typ": "JWT"}, claims(env.idp.issuer))
    assert (await env.call("/orders", ok)).status == 200
