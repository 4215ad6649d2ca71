"""Fault injection at the identity provider, over real sockets.

A scripted IdP (tests/functional/faults_env.py) is down, dies, hangs, is slow, answers
HTML, 50 MB, a redirect, or a key set half broken. Each case ends in the documented
status (README "Responses": 503 `keys_unavailable` without keys; docs/config.md
`remote`: last good keys kept, `fetch_timeout` per fetch, `max_bytes`, redirects never
followed), never forwards a request that needed a token it could not verify, never
waits past `fetch_timeout`, and leaves no connection to the IdP and no task behind.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Upstream
from tests.factories import SigningKey, claims, jwks, sign
from tests.functional.faults_env import (
    Behaviour,
    Running,
    Scripted,
    answer,
    free_port,
    hang,
    response,
    running_gateway,
    until,
)
from tests.rawhttp import RawResponse, get, raw_request

# Slack on every upper bound of elapsed time: the machine is shared and noisy.
SLACK = 3.0


def policy(upstream: Upstream, issuer: str, source: str, remote: str) -> str:
    return f"""
    providers:
      corp:
        issuer: "{issuer}"
        audiences: [orders-api]
        algorithms: [RS256, ES256]
        keys: [{source}]
        remote: {remote}
    routes:
      - {{name: public, match: {{prefix: /public}}, upstream: "{upstream.url}", auth: public}}
      - {{name: orders, match: {{prefix: /orders}}, upstream: "{upstream.url}", auth: {{any_of: [corp]}}}}
    """


def source_of(kind: str, idp_url: str) -> str:
    return f'{{jwks_url: "{idp_url}/jwks"}}' if kind == "jwks_url" else "{oidc_discovery: true}"


def discovery(idp: Scripted, jwks_path: str = "/jwks") -> Behaviour:
    doc = {"issuer": idp.url, "jwks_uri": idp.url + jwks_path}
    return answer(response("200 OK", json.dumps(doc).encode()))


def good_jwks(*keys: SigningKey, cache: str = "max-age=0") -> Behaviour:
    return answer(response("200 OK", json.dumps(jwks(*keys)).encode(), extra=f"Cache-Control: {cache}\r\n"))


async def call(gw: Running, token: str) -> tuple[RawResponse, float]:
    t0 = time.monotonic()
    resp = await raw_request(gw.port, get("/orders", f"Authorization: Bearer {token}"), wait=30)
    return resp, time.monotonic() - t0


async def fetches(gw: Running, result: str) -> float:
    return (await gw.scrape()).get("gateway_jwks_fetches_total", provider="corp", result=result)


async def readyz(gw: Running) -> int:
    url = f"http://127.0.0.1:{gw.gateway.admin_port}/readyz"
    async with aiohttp.ClientSession() as client, client.get(url) as r:
        return r.status


def assert_keys_unavailable(resp: RawResponse) -> None:
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    assert json.loads(resp.body)["error"] == "temporarily_unavailable"


async def assert_refused_without_keys(gw: Running, upstream: Upstream, rsa: SigningKey, issuer: str) -> None:
    """The documented answer without keys, at once; never forwarded; public still served."""
    resp, elapsed = await call(gw, sign(rsa, claims(issuer)))
    assert_keys_unavailable(resp)
    assert elapsed < 1.0  # a request never waits for a provider that has no keys
    assert (await raw_request(gw.port, get("/public"))).status == 200
    assert [s.raw_path for s in upstream.seen] == ["/public"]  # fails closed
    assert await readyz(gw) == 503


@pytest.mark.parametrize("kind", ["jwks_url", "oidc_discovery"])
async def test_idp_down_at_start(tmp_path: Path, upstream: Upstream, rsa: SigningKey, kind: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # connection refused
    remote = "{retry_interval: 100ms, fetch_timeout: 1s}"
    t0 = time.monotonic()
    async with running_gateway(tmp_path, policy(upstream, url, source_of(kind, url), remote)) as gw:
        assert time.monotonic() - t0 < 1 + SLACK  # start never blocks on the IdP
        await assert_refused_without_keys(gw, upstream, rsa, url)
        # Refused fetches are counted, and retried (100 ms, then doubling).
        await until_async(lambda: fetches_at_least(gw, "failure", 2))
        assert await fetches(gw, "success") == 0


async def fetches_at_least(gw: Running, result: str, n: float) -> bool:
    return await fetches(gw, result) >= n


async def until_async(check: object, seconds: float = 5.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("kind", ["jwks_url", "oidc_discovery"])
async def test_idp_dies_mid_run_last_good_keys_keep_working(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey, ec: SigningKey, kind: str
) -> None:
    idp = Scripted()
    await idp.served.start()
    idp.behaviours = {"/jwks": good_jwks(rsa, ec), "/.well-known/openid-configuration": discovery(idp)}
    url = idp.url  # the port is gone with the server
    # max-age=0 clamped to min_refresh: a refresh every 200 ms while the IdP lives.
    remote = "{min_refresh: 200ms, retry_interval: 100ms, fetch_timeout: 1s, unknown_kid_cooldown: 100ms}"
    try:
        async with running_gateway(tmp_path, policy(upstream, url, source_of(kind, url), remote)) as gw:
            await until(lambda: not gw.gateway.not_ready())
            token = sign(rsa, claims(url))
            assert (await call(gw, token))[0].status == 200
            await idp.served.close()  # the IdP dies: its connections are cut, its port refuses
            failures = await fetches(gw, "failure")
            await until_async(lambda: fetches_at_least(gw, "failure", failures + 2))
            # The keys already fetched keep working (max_stale is 12 h by default)...
            assert (await call(gw, token))[0].status == 200
            assert (await call(gw, sign(ec, claims(url))))[0].status == 200
            assert await readyz(gw) == 200
            scraped = await gw.scrape()
            assert scraped.get("gateway_jwks_keys", provider="corp") == 2
            # ...and a kid the gateway lacks is refused, after one quick failed refetch.
            resp, elapsed = await call(gw, sign(rsa, claims(url), kid="rotated-in"))
            assert resp.status == 401
            assert elapsed < 1 + SLACK
            assert [s.raw_path for s in upstream.seen] == ["/orders"] * 3
    finally:
        if idp.served.server is not None and idp.served.server.is_serving():
            await idp.served.close()


async def test_idp_hangs_at_start_the_fetch_gives_up_at_its_timeout(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey
) -> None:
    async with Scripted() as idp:
        idp.behaviours = {"/jwks": hang}
        # A long retry interval: after the first timeout no new fetch is open, so the
        # IdP's count of open connections shows whether the timed-out one was closed.
        remote = "{fetch_timeout: 500ms, retry_interval: 30s}"
        t0 = time.monotonic()
        async with running_gateway(tmp_path, policy(upstream, idp.url, source_of("jwks_url", idp.url), remote)) as gw:
            await until(lambda: idp.connections == 1)
            await assert_refused_without_keys(gw, upstream, rsa, idp.url)
            await until_async(lambda: fetches_at_least(gw, "failure", 1))
            assert time.monotonic() - t0 < 0.5 + SLACK
            await until(lambda: idp.open == 0)  # the timed-out fetch's connection was closed
            assert_keys_unavailable((await call(gw, sign(rsa, claims(idp.url))))[0])


async def test_idp_discovery_hangs_an_unknown_kid_waits_at_most_the_fetch_timeout(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey
) -> None:
    async with Scripted() as idp:
        idp.behaviours = {
            "/jwks": good_jwks(rsa, cache="max-age=3600"),
            "/.well-known/openid-configuration": discovery(idp),
        }
        remote = "{fetch_timeout: 500ms, unknown_kid_cooldown: 100ms, retry_interval: 30s}"
        source = source_of("oidc_discovery", idp.url)
        async with running_gateway(tmp_path, policy(upstream, idp.url, source, remote)) as gw:
            await until(lambda: not gw.gateway.not_ready())
            idp.behaviours["/.well-known/openid-configuration"] = hang
            resp, elapsed = await call(gw, sign(rsa, claims(idp.url), kid="new-kid"))
            assert resp.status == 401  # unknown_kid: the refetch gave up
            assert 0.4 < elapsed < 0.5 + SLACK
            assert (await call(gw, sign(rsa, claims(idp.url))))[0].status == 200  # last good keys
            assert await fetches(gw, "failure") == 1
            await until(lambda: idp.open <= 1)  # at most the kept-alive one of the good fetch
            assert [s.raw_path for s in upstream.seen] == ["/orders"]


@pytest.mark.parametrize(("delay", "loads"), [(0.2, True), (1.2, False)])
async def test_idp_answers_slowly(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey, delay: float, loads: bool
) -> None:
    async with Scripted() as idp:
        idp.behaviours = {"/jwks": answer(response("200 OK", json.dumps(jwks(rsa)).encode()), delay=delay)}
        remote = "{fetch_timeout: 700ms, retry_interval: 30s}"
        t0 = time.monotonic()
        async with running_gateway(tmp_path, policy(upstream, idp.url, source_of("jwks_url", idp.url), remote)) as gw:
            token = sign(rsa, claims(idp.url))
            if loads:  # within the timeout: slow is fine
                await until(lambda: not gw.gateway.not_ready())
                assert (await call(gw, token))[0].status == 200
                assert await fetches(gw, "success") == 1
            else:  # over it: a failure, counted, and the connection is given up
                await until_async(lambda: fetches_at_least(gw, "failure", 1))
                assert time.monotonic() - t0 < 0.7 + SLACK
                await assert_refused_without_keys(gw, upstream, rsa, idp.url)
                # The IdP's handler ends once it has written its late answer (to a
                # closed connection) and read the close.
                await until(lambda: idp.open == 0)
                assert await fetches(gw, "success") == 0
                assert gw.gateway.not_ready() == ["keys of provider 'corp'"]


HTML = b"<!doctype html><html><body><h1>Sign in</h1></body></html>"


@pytest.mark.parametrize(
    ("kind", "status"),
    [("jwks_url", "200 OK"), ("jwks_url", "502 Bad Gateway"), ("oidc_discovery", "200 OK")],
)
async def test_idp_answers_html(
    tmp_path: Path,
    upstream: Upstream,
    rsa: SigningKey,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    status: str,
) -> None:
    caplog.set_level(logging.WARNING, "gateway.keys")
    async with Scripted() as idp:
        page = answer(response(status, HTML, content_type="text/html"))
        if kind == "jwks_url":
            idp.behaviours = {"/jwks": page}
        else:  # a captive portal or a login page where the discovery document should be
            idp.behaviours = {"/.well-known/openid-configuration": page, "/jwks": good_jwks(rsa)}
        remote = "{retry_interval: 30s}"
        async with running_gateway(tmp_path, policy(upstream, idp.url, source_of(kind, idp.url), remote)) as gw:
            await until_async(lambda: fetches_at_least(gw, "failure", 1))
            await assert_refused_without_keys(gw, upstream, rsa, idp.url)
            assert idp.hits("/jwks") == 0 or kind == "jwks_url"
    expected = "HTTP 502" if status.startswith("502") else "not JSON"
    assert expected in caplog.text
    assert "Sign in" not in caplog.text  # the response is never quoted in the log


FIFTY_MB = 50 * 1024 * 1024


def fifty_megabytes(sent: list[int], declared: bool) -> Behaviour:
    """A JWKS-looking body of 50 MB, written as fast as the peer takes it; `sent`
    counts what the peer let us write before it gave up."""

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        framing = f"Content-Length: {FIFTY_MB}" if declared else "Transfer-Encoding: chunked"
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{framing}\r\n\r\n".encode())
        chunk = b" " * 65536
        try:
            while sent[0] < FIFTY_MB:
                writer.write(chunk if declared else b"10000\r\n" + chunk + b"\r\n")
                sent[0] += len(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    return behaviour


@pytest.mark.parametrize("kind", ["jwks_url", "oidc_discovery"])
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_idp_answers_fifty_megabytes(
    tmp_path: Path,
    upstream: Upstream,
    rsa: SigningKey,
    caplog: pytest.LogCaptureFixture,
    declared: bool,
    kind: str,
) -> None:
    caplog.set_level(logging.WARNING, "gateway.keys")
    sent = [0]
    async with Scripted() as idp:
        path = "/jwks" if kind == "jwks_url" else "/.well-known/openid-configuration"
        idp.behaviours = {path: fifty_megabytes(sent, declared)}
        remote = "{retry_interval: 30s, fetch_timeout: 10s}"  # max_bytes: its 1 MiB default
        t0 = time.monotonic()
        async with running_gateway(tmp_path, policy(upstream, idp.url, source_of(kind, idp.url), remote)) as gw:
            await until_async(lambda: fetches_at_least(gw, "failure", 1))
            assert time.monotonic() - t0 < SLACK  # refused by size, long before the timeout
            await until(lambda: idp.open == 0)
            await assert_refused_without_keys(gw, upstream, rsa, idp.url)
    assert "response larger than 1048576 bytes" in caplog.text
    # Never read to the end: what the IdP could write before the gateway hung up is the
    # cap plus what the kernel's socket buffers hold (a few MiB on loopback).
    assert sent[0] < 16 * 1024 * 1024, sent[0]
    if declared:
        assert sent[0] < FIFTY_MB


@pytest.mark.parametrize("kind", ["jwks_url", "oidc_discovery"])
async def test_idp_redirect_is_never_followed(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.WARNING, "gateway.keys")
    async with Scripted() as idp:
        # The target would serve the right keys: following it would "work", which is
        # why a redirect must not be taken (docs/config.md, `allow_insecure_http`).
        moved = f"Location: {idp.url}/elsewhere\r\n"
        idp.behaviours = {
            "/jwks": answer(response("302 Found", b"", extra=moved)),
            "/.well-known/openid-configuration": answer(response("301 Moved Permanently", b"", extra=moved)),
            "/elsewhere": good_jwks(rsa),
        }
        remote = "{retry_interval: 30s}"
        async with running_gateway(tmp_path, policy(upstream, idp.url, source_of(kind, idp.url), remote)) as gw:
            await until_async(lambda: fetches_at_least(gw, "failure", 1))
            await assert_refused_without_keys(gw, upstream, rsa, idp.url)
            assert idp.hits("/elsewhere") == 0
    assert ("HTTP 302" if kind == "jwks_url" else "HTTP 301") in caplog.text


def broken_keys(rsa: SigningKey) -> list[object]:
    good = rsa.public_jwk()
    return [
        {**good, "kid": "short-n", "n": "AQAB"},  # a 17-bit modulus
        {**good, "kid": "bad-b64", "n": "!!not base64!!"},
        {**good, "kid": "wrong-alg", "alg": "ES256"},  # an RSA key labelled for EC
        {**good, "kid": "private", "d": "AQAB"},  # private material in a public set
        {"kty": "oct", "kid": "secret", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},  # never from a URL
        {"kty": "EC", "kid": "no-curve", "x": "AA", "y": "AA"},
        "not an object",
    ]


async def test_idp_jwks_mixing_good_and_broken_keys(
    tmp_path: Path,
    upstream: Upstream,
    rsa: SigningKey,
    ec: SigningKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "gateway.keys")
    mixed = {"keys": [*broken_keys(rsa)[:3], rsa.public_jwk(), *broken_keys(rsa)[3:], ec.public_jwk()]}
    async with Scripted() as idp:
        idp.behaviours = {"/jwks": answer(response("200 OK", json.dumps(mixed).encode()))}
        remote = "{retry_interval: 30s, unknown_kid_cooldown: 30s}"
        async with running_gateway(tmp_path, policy(upstream, idp.url, source_of("jwks_url", idp.url), remote)) as gw:
            await until(lambda: not gw.gateway.not_ready())
            # The good keys are used...
            assert (await call(gw, sign(rsa, claims(idp.url))))[0].status == 200
            assert (await call(gw, sign(ec, claims(idp.url))))[0].status == 200
            scraped = await gw.scrape()
            assert scraped.get("gateway_jwks_keys", provider="corp") == 2
            assert scraped.get("gateway_jwks_fetches_total", provider="corp", result="success") == 1
            # ...the broken ones never: a token naming one is refused, even signed by
            # the private half of the good key its entry was copied from.
            for kid in ("short-n", "bad-b64", "wrong-alg", "private", "secret", "no-curve"):
                resp, _ = await call(gw, sign(rsa, claims(idp.url), kid=kid))
                assert resp.status == 401, kid
            assert len(upstream.seen) == 2
    # Each broken key is reported, by position and kid, without its material.
    for label in ("keys[0] (kid 'short-n')", "keys[1] (kid 'bad-b64')", "keys[2] (kid 'wrong-alg')"):
        assert label in caplog.text
    for label in ("keys[4] (kid 'private')", "keys[5] (kid 'secret')", "keys[6] (kid 'no-curve')", "keys[7]: not"):
        assert label in caplog.text
    assert "c2VjcmV0" not in caplog.text


async def test_idp_jwks_of_only_broken_keys_is_a_failed_fetch(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey
) -> None:
    async with Scripted() as idp:
        body = json.dumps({"keys": broken_keys(rsa)}).encode()
        idp.behaviours = {"/jwks": answer(response("200 OK", body))}
        remote = "{retry_interval: 30s}"
        async with running_gateway(tmp_path, policy(upstream, idp.url, source_of("jwks_url", idp.url), remote)) as gw:
            await until_async(lambda: fetches_at_least(gw, "failure", 1))
            await assert_refused_without_keys(gw, upstream, rsa, idp.url)


def trickle(first: bytes, every: float) -> Behaviour:
    """Answers `first` (a head and the start of a body), then one byte every `every`
    seconds for ever: each read succeeds, the body never ends."""

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        writer.write(first)
        while True:
            await writer.drain()
            await asyncio.sleep(every)
            writer.write(b" ")

    return behaviour


async def test_idp_trickling_its_body_is_cut_at_the_fetch_timeout(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey
) -> None:
    async with Scripted() as idp:
        start = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"keys": ['
        idp.behaviours = {"/jwks": trickle(start, 0.05)}
        remote = "{fetch_timeout: 500ms, retry_interval: 30s}"
        t0 = time.monotonic()
        async with running_gateway(tmp_path, policy(upstream, idp.url, source_of("jwks_url", idp.url), remote)) as gw:
            await until_async(lambda: fetches_at_least(gw, "failure", 1))
            assert time.monotonic() - t0 < 0.5 + SLACK
            await until(lambda: idp.open == 0)
            await assert_refused_without_keys(gw, upstream, rsa, idp.url)


async def test_oidc_refetch_waits_at_most_one_fetch_timeout_in_all(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey
) -> None:
    """Discovery and key set are one fetch (one count in gateway_jwks_fetches_total):
    a request waiting on it for an unknown kid waits at most `fetch_timeout`, not that
    for each of its two requests."""
    async with Scripted() as idp:
        idp.behaviours = {
            "/jwks": good_jwks(rsa, cache="max-age=3600"),
            "/.well-known/openid-configuration": discovery(idp),
        }
        remote = "{fetch_timeout: 2s, unknown_kid_cooldown: 100ms, retry_interval: 30s}"
        source = source_of("oidc_discovery", idp.url)
        async with running_gateway(tmp_path, policy(upstream, idp.url, source, remote)) as gw:
            await until(lambda: not gw.gateway.not_ready())
            # Each just inside the timeout on its own; together, well past it.
            doc = json.dumps({"issuer": idp.url, "jwks_uri": idp.url + "/jwks"}).encode()
            idp.behaviours["/.well-known/openid-configuration"] = answer(response("200 OK", doc), delay=1.7)
            idp.behaviours["/jwks"] = hang
            resp, elapsed = await call(gw, sign(rsa, claims(idp.url), kid="new-kid"))
            assert resp.status == 401
            # The one deadline (2 s), with a second to spare for a loaded machine; a
            # timeout for each request would make it 3.7 s.
            assert elapsed < 2.0 + 1.0
            assert await fetches(gw, "failure") == 1
            assert (await call(gw, sign(rsa, claims(idp.url))))[0].status == 200


async def test_stopping_during_a_hung_fetch_is_prompt(tmp_path: Path, upstream: Upstream, rsa: SigningKey) -> None:
    async with Scripted() as idp:
        idp.behaviours = {"/jwks": hang}
        remote = "{fetch_timeout: 30s, retry_interval: 30s}"
        async with running_gateway(tmp_path, policy(upstream, idp.url, source_of("jwks_url", idp.url), remote)) as gw:
            await until(lambda: idp.open == 1)
            assert_keys_unavailable((await call(gw, sign(rsa, claims(idp.url))))[0])
            t0 = time.monotonic()
            await gw.stop()  # never waits out the 30 s fetch
            assert time.monotonic() - t0 < SLACK
            await until(lambda: idp.open == 0)


async def test_idp_closing_a_kept_alive_connection_as_it_is_reused(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey, ec: SigningKey
) -> None:
    """The IdP's idle timer fires just as the refetch for a new kid is sent on the
    pooled connection: the key it has just published must still be found."""
    used: set[int] = set()
    keys = [rsa]

    async def jwks_once_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        if id(writer) in used:
            writer.close()  # read the request, closed without an answer
            return
        used.add(id(writer))
        body = json.dumps(jwks(*keys)).encode()
        writer.write(response("200 OK", body, extra="Cache-Control: max-age=3600\r\n"))
        await writer.drain()

    async with Scripted() as idp:
        idp.behaviours = {"/jwks": jwks_once_per_connection}
        remote = "{unknown_kid_cooldown: 100ms, retry_interval: 30s}"
        async with running_gateway(tmp_path, policy(upstream, idp.url, source_of("jwks_url", idp.url), remote)) as gw:
            await until(lambda: not gw.gateway.not_ready())
            assert idp.open == 1  # kept alive in the session's pool
            keys.append(ec)  # the IdP publishes a new key
            resp, elapsed = await call(gw, sign(ec, claims(idp.url)))
            assert elapsed < SLACK
            assert idp.hits("/jwks") >= 2
            assert resp.status == 200, (idp.hits("/jwks"), idp.connections)


def closes_after(data: bytes) -> Behaviour:
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()

    return behaviour


@pytest.mark.parametrize(
    "reply",
    [
        b"",  # closed without a word
        b"SSH-2.0-OpenSSH_9.6\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n{}",  # a header line past any limit
        b"HTTP/1.1 200 OK\r\n" + b"X-H: 1\r\n" * 10_000 + b"\r\n{}",  # ten thousand header lines
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b'{"keys": [',  # cut short
        b"gzip",  # the right keys, compressed although identity was asked for
    ],
    ids=["empty", "not-http", "long-header", "many-headers", "truncated", "gzip"],
)
async def test_idp_answers_garbage(tmp_path: Path, upstream: Upstream, rsa: SigningKey, reply: bytes) -> None:
    if reply == b"gzip":
        # Never decompressed: max_bytes bounds what is read, and a compressed body could
        # stand for far more than that (a decompression bomb).
        body = gzip.compress(json.dumps(jwks(rsa)).encode())
        reply = response("200 OK", body, extra="Content-Encoding: gzip\r\n")
    async with Scripted() as idp:
        idp.behaviours = {"/jwks": closes_after(reply)}
        remote = "{retry_interval: 30s, fetch_timeout: 2s}"
        t0 = time.monotonic()
        async with running_gateway(tmp_path, policy(upstream, idp.url, source_of("jwks_url", idp.url), remote)) as gw:
            await until_async(lambda: fetches_at_least(gw, "failure", 1))
            assert time.monotonic() - t0 < SLACK
            await until(lambda: idp.open == 0)
            await assert_refused_without_keys(gw, upstream, rsa, idp.url)


async def test_many_requests_waiting_on_a_hung_refetch_share_it_and_its_timeout(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey
) -> None:
    async with Scripted() as idp:
        idp.behaviours = {"/jwks": good_jwks(rsa, cache="max-age=3600")}
        remote = "{fetch_timeout: 500ms, unknown_kid_cooldown: 30s, retry_interval: 30s}"
        async with running_gateway(tmp_path, policy(upstream, idp.url, source_of("jwks_url", idp.url), remote)) as gw:
            await until(lambda: not gw.gateway.not_ready())
            idp.behaviours["/jwks"] = hang
            tokens = [sign(rsa, claims(idp.url), kid=f"new-{i}") for i in range(50)]
            results = await asyncio.gather(*(call(gw, t) for t in tokens))
            assert {r.status for r, _ in results} == {401}
            assert max(elapsed for _, elapsed in results) < 0.5 + SLACK
            assert idp.hits("/jwks") == 2  # the first load, and one refetch that all joined
            assert upstream.seen == []
