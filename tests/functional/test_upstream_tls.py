"""TLS from the gateway to its upstreams (`upstream_tls`): real TLS servers with real
certificates from a test CA, verification on by default, a policy CA, `server_name`,
client certificates, `insecure_skip_verify` (and its warning), and load errors."""

from __future__ import annotations

import datetime
import json
import logging
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.policy import ConfigError, load_policy
from tests.certs import Authority, Issued
from tests.conftest import GatewayFactory
from tests.procs import gateway_cmd
from tests.rawhttp import get, raw_request


class TlsUpstream:
    """An aiohttp server behind TLS that says which client certificate and SNI it saw."""

    def __init__(self, server: TestServer, seen_sni: list[str | None]) -> None:
        self.server = server
        self.seen_sni = seen_sni
        self.hits = 0

    @property
    def port(self) -> int:
        port = self.server.port
        assert port is not None
        return port


StartTls = Callable[..., Awaitable[TlsUpstream]]


@pytest.fixture
async def tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[StartTls]:
    started: list[TlsUpstream] = []

    async def start(cert: Issued, client_ca: Authority | None = None) -> TlsUpstream:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        directory = tmp_path_factory.mktemp("upstream-tls")  # load_cert_chain wants paths
        context.load_cert_chain(
            write(directory / "cert.pem", cert.cert_pem), write(directory / "key.pem", cert.key_pem)
        )
        seen: list[str | None] = []
        context.sni_callback = lambda _sock, name, _ctx: seen.append(name)
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=client_ca.pem.decode())

        async def handler(request: web.Request) -> web.Response:
            up.hits += 1
            peer = request.transport.get_extra_info("peercert") if request.transport else None
            subject = dict(x[0] for x in peer["subject"]) if peer else None
            return web.json_response({"path": request.path_qs, "client": subject})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(ssl=context)
        up = TlsUpstream(server, seen)
        started.append(up)
        return up

    yield start
    for up in started:
        await up.server.close()


def policy(port: int, tls: str = "", host: str = "127.0.0.1") -> str:
    origin = f"https://{host}:{port}"
    section = f'upstream_tls:\n  "{origin}": {tls}\n' if tls else ""
    return section + f'routes:\n  - {{name: orders, match: {{prefix: /orders}}, upstream: "{origin}", auth: public}}\n'


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


async def status_of(make_gateway: GatewayFactory, text: str) -> tuple[int, dict[str, object]]:
    gw = await make_gateway(text)
    resp = await raw_request(gw.public_port, get("/orders/7"))
    return resp.status, json.loads(resp.body)


async def test_an_upstream_verified_with_the_policy_ca(
    tmp_path: Path, make_gateway: GatewayFactory, tls_upstream: StartTls
) -> None:
    authority = Authority()
    up = await tls_upstream(authority.server("upstream"))
    ca_file = write(tmp_path / "ca.pem", authority.pem)
    status, body = await status_of(make_gateway, policy(up.port, f'{{ca_file: "{ca_file}"}}'))
    assert status == 200
    assert body == {"path": "/orders/7", "client": None}


async def test_an_upstream_whose_certificate_is_not_trusted_is_502_and_never_served(
    tmp_path: Path, make_gateway: GatewayFactory, tls_upstream: StartTls, caplog: pytest.LogCaptureFixture
) -> None:
    up = await tls_upstream(Authority().server("upstream"))
    # The defaults verify against the system's CAs, which never signed a test CA.
    with caplog.at_level(logging.INFO, "gateway.proxy"):
        status, body = await status_of(make_gateway, policy(up.port))
    assert (status, body["error"]) == (502, "bad_gateway")
    # The operator reads why: OpenSSL's verdict, not just "unreachable".
    assert "reason=upstream_unreachable detail=TLS: unable to get local issuer certificate" in caplog.text
    # Nor does a policy CA that is not the one that signed it.
    other = write(tmp_path / "other.pem", Authority("another CA").pem)
    status, _ = await status_of(make_gateway, policy(up.port, f'{{ca_file: "{other}"}}'))
    assert status == 502
    assert up.hits == 0


async def test_server_name_is_sent_and_verified_instead_of_the_url_host(
    tmp_path: Path, make_gateway: GatewayFactory, tls_upstream: StartTls
) -> None:
    authority = Authority()
    up = await tls_upstream(authority.server("orders.internal", loopback=False))
    ca_file = write(tmp_path / "ca.pem", authority.pem)
    # Its certificate does not name 127.0.0.1: refused.
    status, _ = await status_of(make_gateway, policy(up.port, f'{{ca_file: "{ca_file}"}}'))
    assert status == 502
    assert up.hits == 0
    status, _ = await status_of(
        make_gateway, policy(up.port, f'{{ca_file: "{ca_file}", server_name: orders.internal}}')
    )
    assert status == 200
    assert up.seen_sni[-1] == "orders.internal"


async def test_a_client_certificate_for_an_upstream_that_requires_one(
    tmp_path: Path, make_gateway: GatewayFactory, tls_upstream: StartTls
) -> None:
    authority, clients = Authority(), Authority("client CA")
    up = await tls_upstream(authority.server("upstream"), client_ca=clients)
    ca_file = write(tmp_path / "ca.pem", authority.pem)
    mine = clients.client("gateway")
    cert, key = write(tmp_path / "gw.pem", mine.cert_pem), write(tmp_path / "gw.key", mine.key_pem)
    status, body = await status_of(
        make_gateway, policy(up.port, f'{{ca_file: "{ca_file}", cert_file: "{cert}", key_file: "{key}"}}')
    )
    assert (status, body["client"]) == (200, {"commonName": "gateway"})
    hits = up.hits
    status, _ = await status_of(make_gateway, policy(up.port, f'{{ca_file: "{ca_file}"}}'))
    assert status == 502  # without one, the upstream refuses the handshake
    assert up.hits == hits


async def test_insecure_skip_verify_reaches_any_upstream_and_check_warns(
    tmp_path: Path, make_gateway: GatewayFactory, tls_upstream: StartTls
) -> None:
    up = await tls_upstream(Authority().server("elsewhere.test", loopback=False))
    text = policy(up.port, "{insecure_skip_verify: true}")
    status, _ = await status_of(make_gateway, text)
    assert status == 200
    config = tmp_path / "policy.yaml"
    config.write_text("listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n" + text)
    done = subprocess.run(gateway_cmd("check", "--config", str(config)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert f"warning: upstream https://127.0.0.1:{up.port} is not verified" in done.stderr


def load_error(tmp_path: Path, text: str) -> str:
    config = tmp_path / "policy.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_policy(str(config))
    return str(err.value)


def test_load_errors_name_the_file_line_and_setting(tmp_path: Path) -> None:
    authority, clients = Authority(), Authority("client CA")
    good = clients.client("gateway")
    expired = clients.client("gateway", not_after=datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1))
    files = {
        "ca": write(tmp_path / "ca.pem", authority.pem),
        "junk": write(tmp_path / "junk.pem", b"not a certificate\n"),
        "cert": write(tmp_path / "gw.pem", good.cert_pem),
        "key": write(tmp_path / "gw.key", good.key_pem),
        "other_key": write(tmp_path / "other.key", clients.client("x").key_pem),
        "locked": write(tmp_path / "locked.key", good.key_pem_encrypted(b"secret")),
        "expired": write(tmp_path / "old.pem", expired.cert_pem),
        "expired_key": write(tmp_path / "old.key", expired.key_pem),
    }
    cases = [
        ('{ca_file: "missing.pem"}', "upstream_tls.https://127.0.0.1:8443.ca_file: cannot read"),
        (f'{{ca_file: "{files["junk"]}"}}', "ca_file: not a PEM CA certificate bundle"),
        (f'{{cert_file: "{files["cert"]}", key_file: "{files["other_key"]}"}}', "key_file: not the private key of"),
        (f'{{cert_file: "{files["cert"]}", key_file: "{files["locked"]}"}}', "key_file: encrypted"),
        (f'{{cert_file: "{files["expired"]}", key_file: "{files["expired_key"]}"}}', "the certificate expired on"),
        (f'{{cert_file: "{files["cert"]}"}}', "expected both 'cert_file' and 'key_file'"),
        (f'{{ca_file: "{files["ca"]}", insecure_skip_verify: true}}', "keep one"),
        ("{server_name: 'bad name'}", "server_name: not a host name"),
    ]
    for tls, expected in cases:
        message = load_error(tmp_path, policy(8443, tls))
        assert f"{tmp_path / 'policy.yaml'}:2: upstream_tls." in message, (tls, message)
        assert expected in message, (tls, message)
        assert "PRIVATE KEY" not in message
        assert "CERTIFICATE-----" not in message
    text = policy(8443, "{}").replace('"https://127.0.0.1:8443": {}', '"http://127.0.0.1:8443": {}')
    assert "not an https origin: 'http://127.0.0.1:8443'" in load_error(tmp_path, text)
    text = policy(8443, "{}").replace('"https://127.0.0.1:8443": {}', '"https://127.0.0.1:9443": {}')
    assert "upstream_tls.https://127.0.0.1:9443: no route forwards to" in load_error(tmp_path, text)
