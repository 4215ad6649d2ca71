"""Fault injection at the upstream, over real sockets.

A scripted raw-socket upstream (tests/functional/faults_env.py) refuses, resets
mid-response, stalls before its head or mid-body, or closes a kept-alive connection
just as the gateway reuses it. Each case ends as README "Failures" documents (502 /
504 / the client connection cut so that a truncated body is never passed off as whole;
a retry only for GET, HEAD or OPTIONS with no body whose kept-alive connection closed
before any byte came back), never waits past `timeouts.read`, and leaves no client or
upstream connection, pooled connection or task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path

import pytest

from tests.functional.faults_env import (
    Behaviour,
    Running,
    Scripted,
    answer,
    free_port,
    hang,
    reset,
    response,
    running_gateway,
    until,
)
from tests.rawhttp import KeptAlive, get, parse_response, raw_request

# Both loops: production runs on uvloop, and whether a reset reaches the upstream
# client as an error (not as a clean end) is each loop's own doing (tests/conftest.py).
pytestmark = pytest.mark.asyncio(loop_factories=["uvloop", "asyncio"])

SLACK = 3.0  # on every upper bound of elapsed time: the machine is shared and noisy
READ = 0.5  # timeouts.read of the test route
BIG = 1024 * 1024  # larger than handler.SMALL_BODY: streamed, not read whole first


def policy(upstream_url: str) -> str:
    return f"""
    routes:
      - name: r
        match: {{prefix: /}}
        upstream: "{upstream_url}"
        timeouts: {{connect: 1s, read: {int(READ * 1000)}ms}}
        auth: public
    """


async def no_leaks(gw: Running, up: Scripted | None = None) -> None:
    """With every client gone: no client connection, request in flight or pooled
    upstream connection left in the gateway, and none open at the upstream."""
    gateway = gw.gateway
    pool = gateway._pool
    server = gateway._server
    assert pool is not None
    assert server is not None
    await until(lambda: not server.connections and not pool.idle and not pool.slots)
    scraped = await gw.scrape()
    assert scraped.get("gateway_client_connections") == 0
    assert scraped.get("gateway_in_flight_requests") == 0
    if up is not None:
        await until(lambda: up.open == 0)


async def read_all(port: int, request: bytes, wait: float = 10.0) -> tuple[bytes, float, bool]:
    """Send one request and read until the gateway closes (or `wait` passes): the bytes,
    the time taken, and whether the gateway closed the connection."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = bytearray()
    closed = False
    try:
        writer.write(request)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                try:
                    # Chunk by chunk: a reset at the end must not lose what came before.
                    while chunk := await reader.read(65536):
                        data += chunk
                except ConnectionResetError:
                    pass
                closed = True
    finally:
        writer.close()
    return bytes(data), time.monotonic() - t0, closed


def split(data: bytes) -> tuple[str, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


async def test_upstream_refuses_connections_is_502(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, policy(f"http://127.0.0.1:{free_port()}")) as gw:
        t0 = time.monotonic()
        resp = await raw_request(gw.port, get("/x"))
        assert time.monotonic() - t0 < 1 + SLACK
        assert resp.status == 502
        assert json.loads(resp.body)["error"] == "bad_gateway"
        # A kept-alive client gets its answer and keeps its connection.
        client = await KeptAlive.open(gw.port)
        assert (await client.send(get("/y", close=False))).status == 502
        assert (await client.send(get("/z", close=False))).status == 502
        await client.close()
        await no_leaks(gw)
        scraped = await gw.scrape()
        assert scraped.get("gateway_requests_total", route="r", method="GET", status_class="5xx", outcome="error") == 3


def partial(framing: str, then: str) -> Behaviour:
    """A 200 whose body stops a quarter of the way: then a reset, a stall or a FIN."""

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        chunk = b"x" * (BIG // 4)
        if framing == "length":
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n".encode() + chunk)
        elif framing == "chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(chunk) + chunk + b"\r\n")
        else:  # delimited by the connection's close (RFC 9112 §6.3, rule 8)
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + chunk)
        await writer.drain()
        await asyncio.sleep(0.1)  # the head and the first bytes reach the client first
        if then == "reset":
            reset(writer)
        elif then == "stall":
            await hang(reader, writer, head)
        else:
            writer.close()

    return behaviour


def truncated_for_the_client(head: str, body: bytes) -> bool:
    """The client can tell the body is incomplete by its framing."""
    if "transfer-encoding: chunked" in head.lower():
        return not body.endswith(b"0\r\n\r\n")
    for line in head.split("\r\n"):
        if line.lower().startswith("content-length:"):
            return len(body) < int(line.split(":")[1])
    return False  # delimited by close: a cut looks like the end


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_upstream_resets_mid_response_the_client_is_cut(tmp_path: Path, framing: str) -> None:
    async with Scripted() as up, running_gateway(tmp_path, policy(up.url)) as gw:
        up.behaviours = {"/x": partial(framing, "reset")}
        data, elapsed, closed = await read_all(gw.port, get("/x", close=False))
        head, body = split(data)
        assert head.startswith("HTTP/1.1 200")
        assert closed, "the client connection was kept open after a cut body"
        assert elapsed < SLACK
        assert len(body) < BIG
        # Never passed off as complete: a length or chunking left unfinished, never a
        # close-delimited body, whose end the client could take for the real one.
        assert truncated_for_the_client(head, body), head
        await no_leaks(gw, up)
        # Counted as what it was (README, Metrics: "a response cut mid-stream").
        scraped = await gw.scrape()
        assert scraped.get("gateway_requests_total", route="r", method="GET", status_class="2xx", outcome="error") == 1


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_upstream_closes_mid_body_the_client_is_cut(tmp_path: Path, framing: str) -> None:
    """A FIN before the declared end: the same as a reset."""
    async with Scripted() as up, running_gateway(tmp_path, policy(up.url)) as gw:
        up.behaviours = {"/x": partial(framing, "fin")}
        data, elapsed, closed = await read_all(gw.port, get("/x", close=False))
        head, body = split(data)
        assert head.startswith("HTTP/1.1 200")
        assert closed, "the client connection was kept open after a cut body"
        assert elapsed < SLACK
        assert truncated_for_the_client(head, body), head
        await no_leaks(gw, up)


async def test_upstream_small_body_reset_is_a_clean_502(tmp_path: Path) -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"y" * 10)
        await writer.drain()
        await asyncio.sleep(0.1)
        reset(writer)

    async with Scripted() as up, running_gateway(tmp_path, policy(up.url)) as gw:
        up.behaviours = {"/x": short}
        resp = await raw_request(gw.port, get("/x"))
        assert resp.status == 502
        assert b"yyy" not in resp.body
        await no_leaks(gw, up)


async def test_upstream_stalls_before_its_head_is_504_after_the_read_timeout(tmp_path: Path) -> None:
    async with Scripted() as up, running_gateway(tmp_path, policy(up.url)) as gw:
        up.behaviours = {"/x": hang}
        client = await KeptAlive.open(gw.port)
        t0 = time.monotonic()
        resp = await client.send(get("/x", close=False), wait=30)
        elapsed = time.monotonic() - t0
        assert resp.status == 504
        assert json.loads(resp.body)["error"] == "gateway_timeout"
        assert READ - 0.05 < elapsed < READ + SLACK
        await until(lambda: up.open == 0)  # the stalled connection is closed, not pooled
        # The client's connection still serves (the 504 was a whole answer).
        up.behaviours["/y"] = answer(response("200 OK", b"{}"))
        assert (await client.send(get("/y", close=False))).status == 200
        await client.close()
        await no_leaks(gw, up)


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_upstream_stalls_mid_body_the_client_is_cut_after_the_read_timeout(tmp_path: Path, framing: str) -> None:
    async with Scripted() as up, running_gateway(tmp_path, policy(up.url)) as gw:
        up.behaviours = {"/x": partial(framing, "stall")}
        data, elapsed, closed = await read_all(gw.port, get("/x", close=False))
        head, body = split(data)
        assert head.startswith("HTTP/1.1 200")
        assert closed, "the client connection was kept open after a cut body"
        assert len(body) < BIG
        assert READ < elapsed < 0.1 + READ + SLACK  # cut, not left hanging
        assert truncated_for_the_client(head, body), head
        await no_leaks(gw, up)


def keep_alive_then(on_reuse: str) -> tuple[Behaviour, set[int]]:
    """Answers a connection's first request; on its second, `on_reuse`: close it (FIN),
    reset it, or write a partial answer and close, as an upstream whose idle timer fired
    just as the request arrived. A fresh connection is always answered."""
    used: set[int] = set()

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        if id(writer) not in used:
            used.add(id(writer))
            # An honest upstream: no body after a HEAD answer.
            writer.write(response("200 OK", b"" if head.startswith(b"HEAD") else b"fresh"))
            await writer.drain()
            return
        if on_reuse == "reset":
            reset(writer)
        elif on_reuse == "partial":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
            await writer.drain()
            writer.close()
        else:
            writer.close()

    return behaviour, used


@pytest.mark.parametrize("on_reuse", ["fin", "reset"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
async def test_kept_alive_connection_closed_as_reused_safe_request_is_retried_once(
    tmp_path: Path, on_reuse: str, method: str
) -> None:
    behaviour, _ = keep_alive_then(on_reuse)
    async with Scripted() as up, running_gateway(tmp_path, policy(up.url)) as gw:
        up.behaviours = {"/a": behaviour, "/b": behaviour}
        client = await KeptAlive.open(gw.port)
        assert (await client.send(get("/a", close=False))).status == 200
        resp = await client.send(get("/b", method=method, close=False))
        assert resp.status == 200
        # Sent on the kept-alive connection (which closed unanswered), then once more on
        # a fresh one.
        assert up.hits("/b") == 2
        assert up.connections == 2
        await client.close()
        await no_leaks(gw, up)


@pytest.mark.parametrize(
    ("request_bytes", "why"),
    [
        (b"DELETE /b HTTP/1.1\r\nHost: g\r\n\r\n", "idempotent, but not in the documented list"),
        (b"PUT /b HTTP/1.1\r\nHost: g\r\nContent-Length: 3\r\n\r\nabc", "a body was sent"),
        (b"POST /b HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\n\r\n", "not idempotent"),
        (b"GET /b HTTP/1.1\r\nHost: g\r\nContent-Length: 3\r\n\r\nabc", "a GET with a body"),
        (b"GET /b HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "a GET with a chunked body"),
    ],
)
async def test_kept_alive_connection_closed_as_reused_unsafe_request_is_502_not_replayed(
    tmp_path: Path, request_bytes: bytes, why: str
) -> None:
    behaviour, _ = keep_alive_then("fin")
    async with Scripted() as up, running_gateway(tmp_path, policy(up.url)) as gw:
        up.behaviours = {"/a": behaviour, "/b": behaviour}
        client = await KeptAlive.open(gw.port)
        assert (await client.send(get("/a", close=False))).status == 200
        t0 = time.monotonic()
        resp = await client.send(request_bytes)
        assert time.monotonic() - t0 < SLACK
        assert resp.status == 502, why
        assert json.loads(resp.body)["error"] == "bad_gateway"
        assert up.hits("/b") == 1, why
        await client.close()
        await no_leaks(gw, up)


async def test_kept_alive_connection_that_answered_in_part_is_not_retried(tmp_path: Path) -> None:
    """Bytes came back: the upstream saw the request. Not retried, even for a GET."""
    behaviour, _ = keep_alive_then("partial")
    async with Scripted() as up, running_gateway(tmp_path, policy(up.url)) as gw:
        up.behaviours = {"/a": behaviour, "/b": behaviour}
        client = await KeptAlive.open(gw.port)
        assert (await client.send(get("/a", close=False))).status == 200
        assert (await client.send(get("/b", close=False))).status == 502
        assert up.hits("/b") == 1
        await client.close()
        await no_leaks(gw, up)


async def test_retry_is_only_once(tmp_path: Path) -> None:
    """The retry's fresh connection closes too: 502, after exactly two attempts."""

    async def answers_first_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        if up.hits("/a") == 1 and head.startswith(b"GET /a"):
            writer.write(response("200 OK", b"first"))
            await writer.drain()
        else:
            writer.close()

    async with Scripted() as up, running_gateway(tmp_path, policy(up.url)) as gw:
        up.behaviours = {"/a": answers_first_only, "/b": answers_first_only}
        client = await KeptAlive.open(gw.port)
        assert (await client.send(get("/a", close=False))).status == 200
        assert (await client.send(get("/b", close=False))).status == 502
        assert up.hits("/b") == 2
        await client.close()
        await no_leaks(gw, up)


async def test_upstream_that_never_completes_the_handshake_is_502_after_the_connect_timeout(tmp_path: Path) -> None:
    """A listener whose accept queue is full drops SYNs: a black hole, as a firewall
    or a dead host would be."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
                fillers.append(filler)
            await asyncio.sleep(0.1)
            async with running_gateway(tmp_path, policy(f"http://127.0.0.1:{port}")) as gw:
                t0 = time.monotonic()
                resp = await raw_request(gw.port, get("/x"))
                elapsed = time.monotonic() - t0
                assert resp.status == 502
                assert json.loads(resp.body)["error"] == "bad_gateway"
                assert 0.9 < elapsed < 1 + SLACK  # timeouts.connect: 1s
                await no_leaks(gw)
        finally:
            for filler in fillers:
                filler.close()


@pytest.mark.parametrize("then", ["reset", "stall"])
async def test_upstream_fails_during_an_upload(tmp_path: Path, then: str) -> None:
    """The upstream takes the head and a little of an 8 MiB upload, then resets (502),
    or takes the rest and never answers (504 after the read timeout; one that stops
    reading is test_upstream_framing's); either way the client, maybe still sending,
    gets its answer in time, and nothing is left open once it leaves."""

    async def takes_a_little(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        await reader.readexactly(65536)
        if then == "reset":
            reset(writer)
        else:
            await hang(reader, writer, head)  # takes the rest, never answers

    size = 8 * 1024 * 1024
    async with Scripted() as up, running_gateway(tmp_path, policy(up.url)) as gw:
        up.behaviours = {"/up": takes_a_little}
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        t0 = time.monotonic()
        writer.write(f"POST /up HTTP/1.1\r\nHost: g\r\nContent-Length: {size}\r\n\r\n".encode())

        async def send() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(size // 65536):
                    writer.write(b"u" * 65536)
                    await writer.drain()

        sender = asyncio.ensure_future(send())
        try:
            async with asyncio.timeout(READ + SLACK):
                resp = parse_response(await reader.readuntil(b"\r\n\r\n"))
                resp.body = await reader.readexactly(int(resp.headers["Content-Length"]))
                elapsed = time.monotonic() - t0
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            writer.close()
        assert resp.status == (502 if then == "reset" else 504)
        assert json.loads(resp.body)["error"] == ("bad_gateway" if then == "reset" else "gateway_timeout")
        assert elapsed < READ + SLACK
        await no_leaks(gw, up)


@pytest.mark.parametrize("how", ["fin", "reset"])
async def test_upstream_closing_every_fresh_connection_is_502_without_a_retry(tmp_path: Path, how: str) -> None:
    """A crashing backend: a fresh connection closed unanswered is no stale pooled one."""

    async def dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        if how == "reset":
            reset(writer)
        else:
            writer.close()

    async with Scripted() as up, running_gateway(tmp_path, policy(up.url)) as gw:
        up.behaviours = {"/x": dies}
        resp = await raw_request(gw.port, get("/x"))
        assert resp.status == 502
        assert json.loads(resp.body)["error"] == "bad_gateway"
        assert up.hits("/x") == 1
        await no_leaks(gw, up)
