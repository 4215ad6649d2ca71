"""A failed key fetch is logged with the URL fetched and the cause an operator can act on:
refused, DNS, TLS, HTTP status, not JSON; never only an exception class."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.keys.sources import RemoteJwks, RemoteSettings
from tests.certs import Authority

SETTINGS = RemoteSettings(
    refresh_interval=300,
    min_refresh=60,
    max_refresh=3600,
    unknown_kid_cooldown=30,
    retry_interval=300,
    max_stale=3600,
    fetch_timeout=5,
    max_bytes=1 << 20,
    allow_insecure_http=True,
)


async def failed_fetch(caplog: pytest.LogCaptureFixture, *, jwks_url: str = "", issuer: str = "") -> str:
    """Start a key source, wait for its first fetch to fail, return what it logged."""
    caplog.set_level(logging.WARNING, "gateway.keys")
    source = RemoteJwks("corp", SETTINGS, jwks_url=jwks_url, issuer=issuer)
    outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_fetch(ok: bool) -> None:
        if not outcome.done():
            outcome.set_result(ok)

    async with aiohttp.ClientSession() as session:
        await source.start(session, lambda _: None, on_fetch)
        try:
            assert await asyncio.wait_for(outcome, 10) is False
        finally:
            await source.stop()
    lines = [r.getMessage() for r in caplog.records if "key fetch" in r.getMessage()]
    assert len(lines) == 1, lines
    return lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
async def idp() -> AsyncIterator[TestServer]:
    async def not_found(_: web.Request) -> web.Response:
        return web.Response(status=404)

    async def not_json(_: web.Request) -> web.Response:
        return web.Response(text="<html>", content_type="text/html")

    async def discovery(request: web.Request) -> web.Response:
        return web.json_response({"issuer": str(request.url.origin()), "jwks_uri": f"{request.url.origin()}/gone"})

    app = web.Application()
    app.router.add_get("/missing", not_found)
    app.router.add_get("/html", not_json)
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/gone", not_found)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def test_connection_refused_names_the_url_and_says_refused(caplog: pytest.LogCaptureFixture) -> None:
    port = closed_port()
    line = await failed_fetch(caplog, jwks_url=f"http://127.0.0.1:{port}/jwks")
    assert f"GET http://127.0.0.1:{port}/jwks: connection refused by 127.0.0.1:{port}" in line


async def test_dns_failure_says_the_name_did_not_resolve(caplog: pytest.LogCaptureFixture) -> None:
    # RFC 6761 §6.4: .invalid never resolves.
    line = await failed_fetch(caplog, jwks_url="http://idp.invalid/jwks")
    assert "GET http://idp.invalid/jwks: DNS: the name idp.invalid did not resolve" in line


async def test_untrusted_certificate_is_a_tls_failure(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    issued = Authority().server("localhost")
    issued.write(tmp_path / "tls.crt", tmp_path / "tls.key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    app = web.Application()
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=context)
    try:
        url = f"https://127.0.0.1:{server.port}/jwks"
        line = await failed_fetch(caplog, jwks_url=url)
    finally:
        await server.close()
    assert f"GET {url}: TLS: the server's certificate was not accepted (" in line
    assert "certificate" in line.split("not accepted (")[1]  # the verifier's own reason


async def test_http_status_and_bad_json_name_the_url(caplog: pytest.LogCaptureFixture, idp: TestServer) -> None:
    base = f"http://127.0.0.1:{idp.port}"
    assert f"GET {base}/missing: HTTP 404" in await failed_fetch(caplog, jwks_url=f"{base}/missing")
    caplog.clear()
    assert f"{base}/html: not JSON" in await failed_fetch(caplog, jwks_url=f"{base}/html")


async def test_discovery_names_the_discovered_url_that_failed(
    caplog: pytest.LogCaptureFixture, idp: TestServer
) -> None:
    base = f"http://127.0.0.1:{idp.port}"
    line = await failed_fetch(caplog, issuer=base)
    assert f"oidc_discovery {base}" in line
    assert f"GET {base}/gone: HTTP 404" in line  # the jwks_uri the document named, not the issuer
