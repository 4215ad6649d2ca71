"""Provider and auth configuration errors: each names the field and what was expected."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from gateway.policy import ConfigError, load_policy
from tests.factories import SigningKey, b64, ec_key, jwks, rsa_key, write

ROUTE = '  - {name: r, match: {prefix: /r}, upstream: "http://u", auth: {any_of: [p]}}\n'


def load(tmp_path: Path, provider: str, route: str = ROUTE, extra: str = "") -> list[str]:
    text = "providers:\n  p:\n" + textwrap.indent(textwrap.dedent(provider), "    ") + extra + "routes:\n" + route
    f = tmp_path / "config.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_policy(str(f))
    return [line.split(": ", 1)[1] for line in info.value.lines]


BASE = "issuer: https://idp.test\naudiences: [api]\n"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return rsa_key("k1")


def test_hmac_secret_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hs = BASE + "algorithms: [HS256]\nkeys: [{hmac_secret: {env: GW_SECRET}}]\n"
    assert load(tmp_path, hs) == ["providers.p.keys[0].hmac_secret: environment variable GW_SECRET is not set"]
    monkeypatch.setenv("GW_SECRET", "short")
    assert load(tmp_path, hs) == ["providers.p.keys[0].hmac_secret: the secret is 5 bytes (expected at least 32)"]
    secret_file = write(tmp_path / "secret", "s" * 31 + "\n")
    hs_file = BASE + f"algorithms: [HS256]\nkeys: [{{hmac_secret: {{file: {secret_file}}}}}]\n"
    assert load(tmp_path, hs_file)[0].endswith("the secret is 31 bytes (expected at least 32)")
    both = BASE + "algorithms: [HS256]\nkeys: [{hmac_secret: {env: A, file: b}}]\n"
    assert load(tmp_path, both)[0].startswith("providers.p.keys[0].hmac_secret: expected exactly one of 'env' or")
    mixed = BASE + "algorithms: [RS256]\nkeys: [{hmac_secret: {env: GW_SECRET}}]\n"
    assert load(tmp_path, mixed) == ["providers.p.keys[0]: an HMAC secret needs HMAC algorithms (HS256, HS384, HS512)"]


def test_hmac_secrets_are_as_long_as_the_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_SECRET", "s" * 40)
    for algorithms, need in (("[HS512]", "64 for HS512"), ("[HS256, HS384]", "48 for HS384")):
        found = load(tmp_path, BASE + f"algorithms: {algorithms}\nkeys: [{{hmac_secret: {{env: GW_SECRET}}}}]\n")
        assert found == [
            f"providers.p.keys[0].hmac_secret: the secret is 40 bytes (expected at least {need}, RFC 7518 §3.2)"
        ]
    f = tmp_path / "config.yaml"
    monkeypatch.setenv("GW_SECRET", "s" * 64)
    f.write_text(
        "providers:\n  p:\n"
        + textwrap.indent(BASE + "algorithms: [HS512]\nkeys: [{hmac_secret: {env: GW_SECRET}}]\n", "    ")
        + "routes:\n"
        + ROUTE
    )
    assert len(load_policy(str(f)).providers[0].snapshot) == 1


def test_key_files(tmp_path: Path, key: SigningKey) -> None:
    from cryptography.hazmat.primitives import serialization

    private = key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    bad = write(tmp_path / "private.pem", private)
    found = load(tmp_path, BASE + f"algorithms: [RS256]\nkeys: [{{pem_file: {bad}}}]\n")
    assert found == [
        f"providers.p.keys[0].pem_file: {bad}: this is a private key (expected a public key or certificate)"
    ]
    missing = load(tmp_path, BASE + "algorithms: [RS256]\nkeys: [{pem_file: nope.pem}]\n")
    assert missing[0].startswith("providers.p.keys[0].pem_file: cannot read ")
    pem = write(tmp_path / "pub.pem", key.public_pem())
    wrong = load(tmp_path, BASE + f"algorithms: [ES256]\nkeys: [{{pem_file: {pem}}}]\n")
    assert wrong == [
        f"providers.p.keys[0].pem_file: {pem}: a RSA key fits none of algorithms ['ES256'] "
        "(expected one of ['PS256', 'PS384', 'PS512', 'RS256', 'RS384', 'RS512'])"
    ]
    jwk = {**key.public_jwk(), "d": "AAAA"}
    leaked = write(tmp_path / "leak.json", {"keys": [jwk]})
    found = load(tmp_path, BASE + f"algorithms: [RS256]\nkeys: [{{jwks_file: {leaked}}}]\n")
    assert found[0].endswith("keys[0] (kid 'k1'): JWK contains private key material (expected public keys only)")
    ec = ec_key("e1")
    mislabelled = write(tmp_path / "mis.json", {"keys": [{**ec.public_jwk(), "alg": "RS256"}]})
    found = load(tmp_path, BASE + f"algorithms: [RS256, ES256]\nkeys: [{{jwks_file: {mislabelled}}}]\n")
    assert found[0].endswith("keys[0] (kid 'e1'): JWK alg 'RS256' does not fit its key type EC-P-256")
    small = rsa_key("small")
    small.private = __import__("cryptography.hazmat.primitives.asymmetric.rsa", fromlist=["x"]).generate_private_key(
        public_exponent=65537, key_size=1024
    )
    weak = write(tmp_path / "weak.pem", small.public_pem())
    found = load(tmp_path, BASE + f"algorithms: [RS256]\nkeys: [{{pem_file: {weak}}}]\n")
    assert found[0].endswith("RSA key of 1024 bits (expected at least 2048)")


def test_rsa_public_exponents_below_65537_are_refused(tmp_path: Path, key: SigningKey) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = SigningKey("RS256", "e3", rsa.generate_private_key(public_exponent=3, key_size=2048))
    pem = write(tmp_path / "e3.pem", weak.public_pem())
    found = load(tmp_path, BASE + f"algorithms: [RS256]\nkeys: [{{pem_file: {pem}}}]\n")
    assert found == [
        f"providers.p.keys[0].pem_file: {pem}: RSA public exponent 3 (expected an odd exponent from 65537 to 2**32-1)"
    ]
    f = tmp_path / "config.yaml"
    with pytest.raises(ConfigError) as info:
        load_policy(str(f))
    assert info.value.lines[0].startswith(f"{f}:6: providers.p.keys[0].pem_file: ")
    found = load(
        tmp_path, BASE + f"algorithms: [RS256]\nkeys: [{{jwks_file: {write(tmp_path / 'e3.json', jwks(weak))}}}]\n"
    )
    assert found[0].endswith(
        "keys[0] (kid 'e3'): RSA public exponent 3 (expected an odd exponent from 65537 to 2**32-1)"
    )
    # Exponents the library itself would refuse with a bare ValueError are named too.
    for e, shown in ((1, "1"), (65536, "65536"), (2**64 + 1, "of 65 bits"), (2**32 + 1, "4294967297")):
        jwk = {**key.public_jwk(), "e": b64(e.to_bytes((e.bit_length() + 7) // 8, "big"))}
        found = load(
            tmp_path,
            BASE + f"algorithms: [RS256]\nkeys: [{{jwks_file: {write(tmp_path / 'e.json', {'keys': [jwk]})}}}]\n",
        )
        assert found[0].endswith(f"RSA public exponent {shown} (expected an odd exponent from 65537 to 2**32-1)"), e


@pytest.mark.parametrize("member", [{"kid": None}, {"alg": None}, {"kid": 7}])
def test_jwk_kid_and_alg_are_strings_when_present(tmp_path: Path, key: SigningKey, member: dict[str, object]) -> None:
    # A `"kid": null` key used to load as an unnamed key, tried for any unknown kid.
    path = write(tmp_path / "k.json", {"keys": [{**key.public_jwk(), **member}]})
    found = load(tmp_path, BASE + f"algorithms: [RS256]\nkeys: [{{jwks_file: {path}}}]\n")
    assert found[0].endswith("JWK 'kid' and 'alg' must be strings"), found


@pytest.mark.parametrize(
    ("crv", "point", "message"),
    [
        ("Ed25519", (2**255 - 18).to_bytes(32, "little"), "Ed25519 public key is not a canonical encoding"),
        (
            "Ed25519",
            (2**255 - 19 - 0x5FC536D880238B13933C6D305ACDFD5F098EFF289F4C345B027B2C28F95E826).to_bytes(32, "little"),
            "Ed25519 public key is a point of small order",
        ),
        ("Ed448", (1).to_bytes(57, "little"), "Ed448 public key is a point of small order"),
        ("Ed448", (2**448 - 2**224 - 2).to_bytes(57, "little"), "Ed448 public key is a point of small order"),
    ],
)
def test_edwards_keys_of_small_order_are_refused(tmp_path: Path, crv: str, point: bytes, message: str) -> None:
    if crv == "Ed448":  # PyJWT reads no Ed448 JWK: a PEM file is the way in
        from cryptography.hazmat.primitives.asymmetric import ed448
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        pem = ed448.Ed448PublicKey.from_public_bytes(point).public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )
        source = f"pem_file: {write(tmp_path / 'okp.pem', pem)}"
    else:
        jwk = {"kty": "OKP", "crv": crv, "x": b64(point), "kid": "weak"}
        source = f"jwks_file: {write(tmp_path / 'okp.json', {'keys': [jwk]})}"
    found = load(tmp_path, BASE + f"algorithms: [EdDSA]\nkeys: [{{{source}}}]\n")
    assert found[0].endswith(message + (" (anyone could sign for it)" if "small" in message else "")), found


def test_key_ops_in_key_files(tmp_path: Path, key: SigningKey) -> None:
    jwk = {k: v for k, v in key.public_jwk().items() if k != "use"}

    def jwks_file(name: str, *keys: dict[str, object]) -> str:
        return BASE + f"algorithms: [RS256]\nkeys: [{{jwks_file: {write(tmp_path / name, {'keys': list(keys)})}}}]\n"

    # A file whose only key is for encryption fails loud, naming the file and the key.
    found = load(tmp_path, jwks_file("enc.json", {**jwk, "key_ops": ["encrypt"]}))
    assert found == [
        f"providers.p.keys[0].jwks_file: {tmp_path / 'enc.json'}: no signature verification keys in the file "
        "(keys[0] (kid 'k1'): not a signature verification key (by its use/key_ops))"
    ]
    cases = {
        "both.json": (
            {**jwk, "use": "sig", "key_ops": ["encrypt"]},
            "JWK 'use' 'sig' and 'key_ops' ['encrypt'] disagree",
        ),
        "enc-verify.json": (
            {**jwk, "use": "enc", "key_ops": ["verify"]},
            "JWK 'use' 'enc' and 'key_ops' ['verify'] disagree",
        ),
        "str.json": ({**jwk, "key_ops": "verify"}, "JWK 'key_ops' must be an array of distinct strings"),
        "dup.json": ({**jwk, "key_ops": ["verify", "verify"]}, "JWK 'key_ops' must be an array of distinct strings"),
        "use.json": ({**jwk, "use": ["sig"]}, "JWK 'use' must be a string"),
    }
    for name, (bad, message) in cases.items():
        assert load(tmp_path, jwks_file(name, bad)) == [
            f"providers.p.keys[0].jwks_file: {tmp_path / name}: keys[0] (kid 'k1'): {message}"
        ], name
    # The file:line of the field is named.
    f = tmp_path / "config.yaml"
    with pytest.raises(ConfigError) as info:
        load_policy(str(f))
    assert info.value.lines[0].startswith(f"{f}:6: providers.p.keys[0].jwks_file: ")
    for name, ok in {
        "verify.json": {**jwk, "key_ops": ["verify"]},
        "sig-ops.json": {**jwk, "use": "sig", "key_ops": ["sign", "verify"]},
    }.items():
        f.write_text("providers:\n  p:\n" + textwrap.indent(jwks_file(name, ok), "    ") + "routes:\n" + ROUTE)
        assert len(load_policy(str(f)).providers[0].snapshot) == 1, name


def test_relative_key_paths_are_relative_to_the_policy(tmp_path: Path, key: SigningKey) -> None:
    (tmp_path / "keys").mkdir()
    write(tmp_path / "keys" / "jwks.json", json.dumps({"keys": [key.public_jwk()]}))
    f = tmp_path / "config.yaml"
    f.write_text(
        "providers:\n  p:\n"
        + textwrap.indent(BASE + "algorithms: [RS256]\nkeys: [{jwks_file: keys/jwks.json}]\n", "    ")
        + "routes:\n"
        + ROUTE
    )
    policy = load_policy(str(f))
    assert len(policy.providers[0].snapshot) == 1


def test_remote_urls_must_be_https_unless_loopback_or_opted_in(tmp_path: Path) -> None:
    found = load(tmp_path, BASE + "algorithms: [RS256]\nkeys: [{jwks_url: 'http://idp.example/jwks'}]\n")
    assert found == [
        "providers.p.keys[0].jwks_url: plain http to a non-loopback host: 'http://idp.example/jwks' "
        "(expected https, or remote.allow_insecure_http: true)"
    ]
    disc = "issuer: http://idp.example\naudiences: [api]\nalgorithms: [RS256]\nkeys: [{oidc_discovery: true}]\n"
    assert load(tmp_path, disc)[0].startswith("providers.p.keys[0].oidc_discovery: the issuer is fetched")
    ok = disc + "remote: {allow_insecure_http: true}\n"
    f = tmp_path / "ok.yaml"
    f.write_text("providers:\n  p:\n" + textwrap.indent(ok, "    ") + "routes:\n" + ROUTE)
    load_policy(str(f))
    for url in ("http://127.0.0.1:9/jwks", "http://localhost:9/jwks", "http://[::1]:9/jwks"):
        f.write_text(
            "providers:\n  p:\n"
            + textwrap.indent(BASE + f"algorithms: [RS256]\nkeys: [{{jwks_url: '{url}'}}]\n", "    ")
            + "routes:\n"
            + ROUTE
        )
        load_policy(str(f))


def test_route_auth_rules(tmp_path: Path) -> None:
    provider = BASE + "algorithms: [RS256]\nkeys: [{jwks_url: 'https://idp.test/jwks'}]\n"
    narrow = '  - {name: r, match: {prefix: /r}, upstream: "http://u", auth: {any_of: [p], audiences: [other]}}\n'
    assert load(tmp_path, provider, narrow) == [
        "routes[0].auth.audiences: ['other'] is not among the providers' audiences ['api'] "
        "(a route may only narrow them)"
    ]
    bad_header = (
        '  - {name: r, match: {prefix: /r}, upstream: "http://u", auth: {any_of: [p], forward_claims: {sub: Host}}}\n'
    )
    assert load(tmp_path, provider, bad_header) == [
        "routes[0].auth.forward_claims.sub: 'Host' cannot carry a claim (expected a header such as X-Auth-Email)"
    ]
    bad_name = (
        '  - {name: r, match: {prefix: /r}, upstream: "http://u", auth: {any_of: [p], forward_claims: {sub: "X Y"}}}\n'
    )
    assert load(tmp_path, provider, bad_name) == [
        "routes[0].auth.forward_claims.sub: not valid: 'X Y' (expected an HTTP header name such as X-Auth-Subject)"
    ]
    bad_scope = '  - {name: r, match: {prefix: /r}, upstream: "http://u", auth: {any_of: [p], scopes: ["a b"]}}\n'
    assert load(tmp_path, provider, bad_scope)[0].startswith("routes[0].auth.scopes: not a scope token: 'a b'")
    typo = '  - {name: r, match: {prefix: /r}, upstream: "http://u", auth: {any_of: [p], scope: [a]}}\n'
    assert load(tmp_path, provider, typo)[0].startswith("routes[0].auth.scope: unknown field 'scope' (expected one of")


def test_provider_fields(tmp_path: Path) -> None:
    no_alg = "issuer: https://i\naudiences: [a]\nkeys: [{jwks_url: 'https://i/j'}]\n"
    assert load(tmp_path, no_alg) == ["providers.p.algorithms: required field is missing"]
    none = "issuer: https://i\naudiences: [a]\nalgorithms: [RS256, none]\nkeys: [{jwks_url: 'https://i/j'}]\n"
    assert load(tmp_path, none)[0].startswith("providers.p.algorithms[1]: unsupported algorithm 'none'")
    two = "issuer: https://i\naudiences: [a]\nalgorithms: [RS256]\nkeys: [{jwks_url: 'https://i/j', pem_file: x}]\n"
    assert load(tmp_path, two)[0].startswith("providers.p.keys[0]: expected exactly one of: pem_file, jwks_file")
    bounds = (
        "issuer: https://i\naudiences: [a]\nalgorithms: [RS256]\nkeys: [{jwks_url: 'https://i/j'}]\n"
        "remote: {min_refresh: 1h}\n"
    )
    assert load(tmp_path, bounds) == ["providers.p.remote: expected min_refresh <= refresh_interval <= max_refresh"]


def test_claim_header_collisions_and_forbidden_headers(tmp_path: Path) -> None:
    provider = BASE + "algorithms: [RS256]\nkeys: [{jwks_url: 'https://idp.test/jwks'}]\n"
    colliding = "identity:\n  claims: {sub: X-Auth-Subject, nick: X_Auth_Subject}\n"
    found = load(tmp_path, provider, extra=colliding)
    assert found == [
        "identity.claims.nick: 'X_Auth_Subject' is the same header as 'X-Auth-Subject' "
        "(compared case-insensitively, with _ and . read as -)"
    ]
    provider_clash = "identity:\n  claims: {who: x-auth-provider}\n"
    assert load(tmp_path, provider, extra=provider_clash)[0].startswith("identity.provider_header: 'X-Auth-Provider'")
    route = (
        '  - {name: r, match: {prefix: /r}, upstream: "http://u", '
        "auth: {any_of: [p], forward_claims: {nick: X.Auth.Subject}}}\n"
    )
    assert load(tmp_path, provider, route)[0].startswith("routes[0].auth.forward_claims.nick: 'X.Auth.Subject'")
    overrides = ("X-Envoy-Original-Path", "X-Script-Name", "X_HTTP_Method", "Request-URI", "X-Host")
    for header in ("Content-Encoding", "X-Forwarded-Prefix", "X-Original-URL", "X_Real_IP", *overrides):
        bad = f"identity:\n  claims: {{sub: {header}}}\n"
        assert load(tmp_path, provider, extra=bad) == [
            f"identity.claims.sub: '{header}' cannot carry a claim (expected a header such as X-Auth-Email)"
        ]


def test_remote_floors_and_redacted_urls(tmp_path: Path) -> None:
    fast = (
        BASE + "algorithms: [RS256]\nkeys: [{jwks_url: 'https://idp.test/jwks'}]\nremote: {unknown_kid_cooldown: 0s}\n"
    )
    assert load(tmp_path, fast) == ["providers.p.remote: unknown_kid_cooldown is below the 100ms floor"]
    secret = BASE + "algorithms: [RS256]\nkeys: [{jwks_url: 'http://user:hunter2@idp.example/jwks?api_key=K1'}]\n"
    [message] = load(tmp_path, secret)
    assert "hunter2" not in message
    assert "K1" not in message
    bad_port = BASE + "algorithms: [RS256]\nkeys: [{jwks_url: 'https://idp.example:99999/jwks'}]\n"
    assert load(tmp_path, bad_port)[0].startswith("providers.p.keys[0].jwks_url: not a URL")


def test_a_route_audience_a_provider_lacks_is_refused(tmp_path: Path) -> None:
    text = (
        "providers:\n"
        "  p: {issuer: https://p, audiences: [a], algorithms: [RS256], keys: [{jwks_url: 'https://p/j'}]}\n"
        "  q: {issuer: https://q, audiences: [b], algorithms: [RS256], keys: [{jwks_url: 'https://q/j'}]}\n"
        'routes:\n  - {name: r, match: {prefix: /r}, upstream: "http://u", auth: {any_of: [p, q], audiences: [a]}}\n'
    )
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_policy(str(f))
    assert "provider 'q' has none of these audiences (its own: ['b'])" in str(info.value)
