"""`gateway explain` against real policy files and real keys, and against a real gateway.

The CLI runs in-process (`gateway.cli.main`); where an identity provider or a gateway
must serve on this test's loop, it runs in a thread (it calls `asyncio.run` itself).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import EXIT_INVALID, EXIT_OK, EXIT_REFUSED, EXIT_UNDECIDED, main
from tests.certs import Authority
from tests.conftest import GatewayFactory, Upstream
from tests.factories import IdentityProvider, SigningKey, claims, rsa_key, sign, write
from tests.rawhttp import get, raw_request

ISS = "https://files.test"
UPSTREAM = "http://127.0.0.1:9"  # never connected to: explain starts nothing

POLICY = """
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0}}
providers:
  files: {{issuer: "{iss}", audiences: [orders-api], algorithms: [RS256], keys: [{{pem_file: "{pem}"}}]}}
  remote: {{issuer: "{idp}", audiences: [orders-api], algorithms: [RS256], keys: [{{jwks_url: "{idp}/jwks"}}]}}
routes:
  - {{name: health, match: {{path: /health}}, upstream: "{up}", auth: public}}
  - name: orders
    match: {{prefix: /orders, methods: [GET, POST]}}
    upstream: "{up}/v1"
    auth: {{any_of: [files], scopes: [orders:read]}}
  - {{name: remote, match: {{prefix: /remote}}, upstream: "{up}", auth: {{any_of: [remote]}}}}
  - name: app
    match: {{prefix: /app}}
    upstream: "{up}"
    cors: {{allow_origins: ["https://app.test"], allow_methods: [GET]}}
    auth: {{any_of: [files]}}
  - {{name: live, match: {{prefix: /live}}, upstream: "{up}", websocket: true, auth: public}}
"""


@dataclass
class Env:
    config: str
    key: SigningKey
    remote_key: SigningKey

    def token(self, **extra: Any) -> str:
        return sign(self.key, claims(ISS, **extra))


def make_env(tmp_path: Path, upstream: str = UPSTREAM, idp: str = "http://127.0.0.1:9") -> Env:
    key = rsa_key("files-1")
    pem = write(tmp_path / "files.pem", key.public_pem())
    config = write(tmp_path / "policy.yaml", POLICY.format(iss=ISS, pem=pem, idp=idp, up=upstream))
    return Env(config, key, rsa_key("idp-1"))


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def explain(capsys: pytest.CaptureFixture[str], config: str, *args: str) -> tuple[int, str, str]:
    code = main(["explain", "--config", config, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def explain_json(capsys: pytest.CaptureFixture[str], config: str, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = explain(capsys, config, "--json", *args)
    return code, json.loads(out)


def test_allowed_request_shows_route_identity_and_upstream(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    token = env.token(scope="orders:read")
    code, out, _ = explain(capsys, env.config, "--token", token, "http://gw.test/orders/./7?page=2")
    assert code == EXIT_OK
    assert "path: /orders/7" in out
    assert "[0] health (path /health  methods=*  host=*): no: path /orders/7 is not /health" in out
    assert "-> [1] orders" in out
    assert "[2] remote (prefix /remote  methods=*  host=*): not tried" in out
    assert "requires: jwt required any_of=files scopes=orders:read" in out
    assert "verdict: forwarded" in out
    assert "upstream: http://127.0.0.1:9/v1/orders/7?page=2" in out
    assert "  X-Auth-Subject: alice" in out
    assert "  X-Auth-Provider: files" in out
    assert "  Authorization: the token: the route does not forward Authorization" in out
    assert token not in out


def test_missing_token_is_401_with_its_challenge(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(capsys, env.config, "http://gw.test/orders")
    assert code == EXIT_REFUSED
    assert "verdict: refused by the gateway: 401 token_missing" in out
    assert '  WWW-Authenticate: Bearer realm="gateway"' in out
    assert "upstream:" not in out


def test_missing_scope_is_403_and_names_the_scope(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(capsys, env.config, "--token", env.token(scope="orders:write"), "http://gw.test/orders")
    assert code == EXIT_REFUSED
    assert "verdict: refused by the gateway: 403 insufficient_scope" in out
    assert 'scope="orders:read"' in out
    # Whose token it was: the claims the operator asks about.
    assert "token: verified by provider 'files'" in out
    assert "  scope: orders:write" in out


def test_no_route_is_404_with_each_route_s_reason(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = explain_json(capsys, env.config, "-X", "DELETE", "http://gw.test/orders/7")
    assert code == EXIT_REFUSED
    assert (doc["verdict"]["status"], doc["verdict"]["reason"]) == (404, "no_route")
    assert [(r["name"], r["result"]) for r in doc["routes"]] == [
        ("health", "path"),
        ("orders", "method"),
        ("remote", "path"),
        ("app", "path"),
        ("live", "path"),
    ]
    assert doc["routes"][1]["why"] == "method DELETE is not one of GET,POST"


def test_encoded_slash_is_400_bad_path(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = explain_json(capsys, env.config, "http://gw.test/orders%2F..%2Fadmin")
    assert code == EXIT_REFUSED
    assert doc["path"] == {"canonical": None, "refused": "encoded slash or backslash in path"}
    assert (doc["verdict"]["status"], doc["verdict"]["reason"]) == (400, "bad_path")
    assert doc["routes"] == []


def test_client_identity_and_hop_by_hop_headers_are_shown_stripped(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = explain_json(
        capsys,
        env.config,
        *("-H", "X-Auth-Subject: mallory", "-H", "X_Auth_Role: admin", "-H", "Connection: close, X-Trace"),
        *("-H", "X-Trace: 1", "-H", "Keep-Alive: 5", "-H", "X-Forwarded-For: 10.0.0.1", "-H", "Accept: */*"),
        *("--token", env.token(scope="orders:read"), "http://gw.test/orders"),
    )
    assert code == EXIT_OK
    stripped = {s["name"]: s["why"] for s in doc["upstream"]["stripped"]}
    assert stripped["X-Auth-Subject"].startswith("identity header")
    assert stripped["X_Auth_Role"].startswith("identity header")
    assert stripped["Connection"].startswith("hop-by-hop")
    assert stripped["Keep-Alive"].startswith("hop-by-hop")
    assert stripped["X-Trace"] == "named in Connection (hop-by-hop)"
    assert stripped["X-Forwarded-For"].startswith("forwarding header from a peer not in")
    sent = doc["upstream"]["headers"]
    names = [n for n, _ in sent]
    assert sent[0] == ["Host", "127.0.0.1:9"]
    assert ["Accept", "*/*"] in sent
    assert ["X-Auth-Subject", "alice"] in sent
    assert not {"X_Auth_Role", "X-Trace", "Keep-Alive"} & set(names)
    assert ["X-Forwarded-For", "<client address>"] in sent
    assert ["X-Request-Id", "<request id>"] in sent


def test_json_shape(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = explain_json(capsys, env.config, "--token", env.token(scope="orders:read"), "http://gw.test/orders")
    assert code == EXIT_OK
    assert set(doc) == {"version", "request", "path", "routes", "route", "requirement", "verdict"} | {
        "principal",
        "upstream",
        "notes",
    }
    assert doc["version"] == 1
    assert doc["request"] == {"method": "GET", "target": "/orders", "host": "gw.test"}
    assert set(doc["routes"][0]) == {"index", "name", "match", "result", "why"}
    assert doc["verdict"] == {
        "decided": True,
        "forwarded": True,
        "answered_by": "upstream",
        "status": 0,
        "reason": None,
        "detail": "",
        "headers": [],
    }
    assert doc["principal"]["provider"] == "files"
    assert doc["principal"]["claims"]["sub"] == "alice"
    assert doc["upstream"]["url"] == "http://127.0.0.1:9/v1/orders"


def test_subject_is_withheld_where_the_access_log_may_not_write_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = make_env(tmp_path)
    Path(env.config).write_text(Path(env.config).read_text() + "access_log: {subject: false}\n")
    _, doc = explain_json(capsys, env.config, "--token", env.token(scope="orders:read"), "http://gw.test/orders")
    assert doc["principal"]["claims"]["sub"] == "(withheld: access_log.subject is false)"
    assert ["X-Auth-Subject", "(withheld: access_log.subject is false)"] in doc["upstream"]["headers"]
    assert "alice" not in json.dumps(doc)


def test_remote_keys_are_not_fetched_without_fetch_keys(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    token = sign(env.remote_key, claims("http://127.0.0.1:9"))
    code, out, _ = explain(capsys, env.config, "--token", token, "http://gw.test/remote/x")
    assert code == EXIT_UNDECIDED
    assert "verdict: undecided" in out
    assert "provider 'remote' with remote keys (jwks_url http://127.0.0.1:9/jwks)" in out
    assert "--fetch-keys" in out
    # Without a token the answer needs no keys: decided.
    code, out, _ = explain(capsys, env.config, "http://gw.test/remote/x")
    assert code == EXIT_REFUSED
    assert "401 token_missing" in out


@pytest.fixture
async def idp() -> AsyncIterator[IdentityProvider]:
    provider = IdentityProvider([rsa_key("idp-1")])
    await provider.start()
    yield provider
    await provider.close()


async def test_fetch_keys_verifies_against_a_real_jwks_server(
    tmp_path: Path, idp: IdentityProvider, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    env = make_env(tmp_path, idp=idp.url)
    good = sign(idp.keys[0], claims(idp.issuer))
    args = ["explain", "--config", env.config, "--fetch-keys", "--token", good, "http://gw.test/remote/x"]
    assert await asyncio.to_thread(main, args) == EXIT_OK
    out = capsys.readouterr().out
    assert "keys of provider 'remote' fetched: 1 key(s)" in out
    assert "verdict: forwarded" in out
    assert idp.jwks_hits >= 1
    # A token signed by a key the IdP does not publish: refused as the gateway would.
    forged = sign(rsa_key("idp-1"), claims(idp.issuer))
    args[args.index(good)] = forged
    assert await asyncio.to_thread(main, args) == EXIT_REFUSED
    assert "401 bad_signature" in capsys.readouterr().out
    # The IdP failing: the gateway would have no keys (503), and explain says so.
    idp.fail = True
    assert await asyncio.to_thread(main, args) == EXIT_REFUSED
    captured = capsys.readouterr()
    assert "503 keys_unavailable" in captured.out
    assert "could not be fetched" in captured.out
    # The key source's own log line (stderr outside pytest) names the URL and the cause.
    assert f"key fetch from jwks_url {idp.url}/jwks failed: GET {idp.url}/jwks: HTTP 500" in caplog.text


def test_usage_and_policy_errors_exit_2(env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert explain(capsys, str(tmp_path / "missing.yaml"), "http://gw.test/")[0] == EXIT_INVALID
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--config", env.config, "-H", "no colon", "http://gw.test/"])
    assert exc.value.code == EXIT_INVALID
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--config", env.config, "-X", "get", "http://gw.test/"])
    assert exc.value.code == EXIT_INVALID


CASES: list[tuple[str, str, tuple[str, ...], dict[str, Any] | None]] = [
    ("GET", "/health", (), None),
    ("GET", "/orders/7", (), {"scope": "orders:read"}),
    ("POST", "/orders", (), {"scope": "orders:write"}),
    ("GET", "/orders", (), None),
    ("DELETE", "/orders", (), {"scope": "orders:read"}),
    ("GET", "/orders/%2e%2e/health", (), None),
    ("GET", "/orders%2Fx", (), None),
    ("GET", "/orders", ("Authorization: Basic YTpi",), None),
    ("GET", "/nowhere", (), None),
    ("GET", "/orders", ("X-Auth-Subject: mallory", "X_Auth_Role: admin", "Accept: */*"), {"scope": "orders:read"}),
    ("OPTIONS", "/app/x", ("Origin: https://app.test", "Access-Control-Request-Method: GET"), None),
    ("OPTIONS", "/app/x", ("Origin: https://evil.test", "Access-Control-Request-Method: GET"), None),
    ("OPTIONS", "/app/x", ("Origin: https://app.test",), None),
    ("TRACE", "/health", (), None),
    ("GET", "/health", ("Host: gw.test:99999",), None),
    ("GET", "/orders", (), {"scope": "orders:read", "aud": "someone-else"}),
]


@pytest.mark.parametrize(("method", "target", "headers", "extra"), CASES)
async def test_explain_agrees_with_the_running_gateway(
    tmp_path: Path,
    make_gateway: GatewayFactory,
    upstream: Upstream,
    capsys: pytest.CaptureFixture[str],
    method: str,
    target: str,
    headers: tuple[str, ...],
    extra: dict[str, Any] | None,
) -> None:
    env = make_env(tmp_path, upstream=upstream.url)
    gateway = await make_gateway(await asyncio.to_thread(Path(env.config).read_text))
    sent = list(headers)
    if extra is not None:
        sent.append(f"Authorization: Bearer {env.token(**extra)}")
    real = await raw_request(gateway.public_port, get(target, *sent, method=method))
    args = ["explain", "--config", env.config, "--json", "-X", method]
    for header in sent:
        args += ["-H", header]
    code = await asyncio.to_thread(main, [*args, f"http://gateway.test{target}"])
    doc = json.loads(capsys.readouterr().out)
    verdict = doc["verdict"]
    assert code == (EXIT_REFUSED if verdict["reason"] else EXIT_OK)
    if verdict["forwarded"]:
        assert real.status == 200  # the recording upstream's answer
        assert upstream.last.raw_path == doc["upstream"]["url"].removeprefix(upstream.url)
        # The same header names (values differ only where explain shows a placeholder).
        assert sorted(upstream.last.headers) == sorted(n.lower() for n, _ in doc["upstream"]["headers"])
        for name, value in doc["upstream"]["headers"]:
            if not value.startswith("<"):
                assert upstream.last.headers[name.lower()] == [value]
    else:
        assert real.status == verdict["status"]
        assert upstream.seen == []
        if verdict["reason"]:
            assert json.loads(real.body)["error"]
        # The gateway's own answer carries the headers explain lists (the ID aside).
        for name, value in verdict["headers"]:
            assert real.headers.getall(name) == [value] or value == "<request id>"


def test_websocket_handshake_shows_the_upgrade_the_upstream_gets(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    handshake = ("-H", "Connection: Upgrade", "-H", "Upgrade: websocket", "-H", "Sec-WebSocket-Version: 13")
    key = ("-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
    code, doc = explain_json(capsys, env.config, *handshake, *key, "http://gw.test/live/feed")
    assert code == EXIT_OK
    sent = doc["upstream"]["headers"]
    assert sent[-2:] == [["Connection", "Upgrade"], ["Upgrade", "websocket"]]
    # Forwarded, but shown as the access log's rules show a secret-named value.
    assert ["Sec-WebSocket-Key", "[REDACTED]"] in sent
    assert any("WebSocket" in n for n in doc["notes"])
    # Without its key the handshake is the handler's 400.
    code, doc = explain_json(capsys, env.config, *handshake, "http://gw.test/live/feed")
    assert code == EXIT_REFUSED
    assert (doc["verdict"]["status"], doc["verdict"]["reason"]) == (400, "bad_request")
    assert "Sec-WebSocket-Key" in doc["verdict"]["detail"]


def test_published_jwks_is_answered_by_the_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "--dir", str(tmp_path / "keys")]) == EXIT_OK
    capsys.readouterr()
    config = write(
        tmp_path / "p.yaml",
        "providers:\n"
        "  api-tokens:\n"
        "    {issuer: https://gw.test, audiences: [api], algorithms: [EdDSA], max_lifetime: 90d,"
        " keys: [{jwks_file: keys/jwks.json}], revocation_file: keys/revoked.json,"
        " api_tokens: {signing_keys: keys, publish_jwks: /.well-known/jwks.json}}\n"
        "routes:\n"
        "  - {name: api, match: {prefix: /}, upstream: 'http://127.0.0.1:9', auth: {any_of: [api-tokens]}}\n",
    )
    code, doc = explain_json(capsys, config, "http://gw.test/.well-known/jwks.json")
    assert code == EXIT_OK
    assert doc["verdict"]["answered_by"] == "gateway"
    assert doc["verdict"]["status"] == 200
    assert doc["upstream"] is None
    assert "public keys of provider 'api-tokens'" in doc["notes"][0]
    # Other methods are routed as any request.
    code, doc = explain_json(capsys, config, "-X", "POST", "http://gw.test/.well-known/jwks.json")
    assert (code, doc["verdict"]["reason"]) == (EXIT_REFUSED, "token_missing")


def test_claims_cannot_write_to_the_operator_s_terminal(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    token = env.token(scope="orders:read", name="\x1b[2J\u202eevil", org={"id": "acme"})
    code, out, _ = explain(capsys, env.config, "--token", token, "http://gw.test/orders")
    assert code == EXIT_OK
    assert "\x1b" not in out
    assert "\u202e" not in out
    assert '  name: "\\u001b[2J\\u202eevil"' in out
    assert '  org: {"id": "acme"}' in out


def test_a_route_that_requires_a_client_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Authority().server().write(tmp_path / "tls.crt", tmp_path / "tls.key")
    Authority("Client CA").write(tmp_path / "clients.pem")
    config = write(
        tmp_path / "p.yaml",
        "tls: {cert_file: tls.crt, key_file: tls.key, client_ca_file: clients.pem, client_auth: optional,"
        " client_subject_header: X-Client-Subject}\n"
        "routes:\n"
        "  - {name: billing, match: {prefix: /billing}, upstream: 'http://127.0.0.1:9', auth: public,"
        " client_cert: {subjects: ['O=Acme,CN=billing']}}\n",
    )
    url = "https://gw.test/billing/x"
    code, doc = explain_json(capsys, config, "-H", "X-Client-Subject: CN=forged", url)
    assert code == EXIT_REFUSED
    assert (doc["verdict"]["status"], doc["verdict"]["reason"]) == (403, "client_cert_mismatch")
    assert doc["verdict"]["detail"] == "no client certificate"
    code, doc = explain_json(capsys, config, "--client-cert-subject", "O=Evil,CN=billing", url)
    assert (code, doc["verdict"]["detail"]) == (EXIT_REFUSED, "client certificate subject not accepted")
    # Written differently, the same name: canonicalised as the policy's subjects are.
    code, doc = explain_json(
        capsys, config, "--client-cert-subject", "o=Acme,2.5.4.3=billing", "-H", "X-Client-Subject: x", url
    )
    assert code == EXIT_OK
    sent = dict(doc["upstream"]["headers"])
    assert sent["X-Client-Subject"] == "O=Acme%2CCN=billing"  # rendered as a claim value is
    assert {"name": "X-Client-Subject", "why": "identity header: only the gateway sets these"} in doc["upstream"][
        "stripped"
    ]
