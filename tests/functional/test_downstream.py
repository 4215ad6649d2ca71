"""The proxy listener's own HTTP/1.1 connection handling (`gateway/proxy/downstream.py`),
over real sockets: pipelining, Upgrade, unread uploads, idle and header timeouts,
HTTP/1.0 framing and clients that leave early.

These run on uvloop, as the gateway does in production (see `conftest.py`): its
transports close and call back in a different order from asyncio's, and some races
only show there."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time

import pytest
from aiohttp import web

from gateway.app import Gateway
from gateway.proxy.downstream import ClientConnection
from tests.conftest import GatewayFactory, Upstream
from tests.metrics_parse import sample_value
from tests.rawhttp import parse_response


def open_policy(upstream: Upstream, server: str = "") -> str:
    return f"""
    {server}
    routes:
      - name: open
        match: {{prefix: /open}}
        upstream: {upstream.url}
        auth: public
    """


def req(path: str, *extra: str, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway.test", *extra, "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def split_responses(data: bytes) -> list[bytes]:
    """Cut a byte stream of length-delimited responses into responses."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        out.append(head + sep + rest[:length])
        data = rest[length:]
    return out


async def exchange(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Write `data`, read until the gateway closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), wait)
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")  # see conftest.py
    gw = await make_gateway(open_policy(upstream))
    data = await exchange(gw.public_port, req("/open/1") + req("/open/2") + req("/open/3", "Connection: close"))
    responses = [parse_response(r) for r in split_responses(data)]
    assert [r.status for r in responses] == [200, 200, 200]
    assert [json.loads(r.body)["path"] for r in responses] == ["/open/1", "/open/2", "/open/3"]
    assert responses[-1].headers["Connection"] == "close"
    assert [s.raw_path for s in upstream.seen] == ["/open/1", "/open/2", "/open/3"]


async def test_upgrade_is_never_switched_and_nothing_after_it_is_read(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    """h2c / websocket smuggling: bytes after an Upgrade request must not reach anyone."""
    gw = await make_gateway(open_policy(upstream))
    data = await exchange(
        gw.public_port,
        req("/open/up", "Connection: Upgrade", "Upgrade: h2c") + req("/open/smuggled"),
    )
    responses = split_responses(data)
    assert len(responses) == 1
    assert parse_response(responses[0]).status == 200
    assert [s.raw_path for s in upstream.seen] == ["/open/up"]
    assert "upgrade" not in upstream.last.headers


async def test_refused_request_body_is_never_parsed_as_a_request(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(open_policy(upstream))
    smuggled = req("/open/smuggled")
    data = await exchange(
        gw.public_port,
        # 404: refused without reading the body, which holds a whole request.
        req("/nowhere", f"Content-Length: {len(smuggled)}", method="POST", body=smuggled)
        + req("/open/after", "Connection: close"),
    )
    responses = [parse_response(r) for r in split_responses(data)]
    assert [r.status for r in responses] == [404, 200]
    assert [s.raw_path for s in upstream.seen] == ["/open/after"]


async def test_large_refused_upload_gets_its_answer_then_a_close(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    """The 404 must reach a client still sending: the gateway reads and drops the rest
    for a while (lingering close) instead of resetting the connection under it."""
    gw = await make_gateway(open_policy(upstream))
    size = 8 * 1024 * 1024
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    try:
        writer.write(req("/nowhere", f"Content-Length: {size}", method="POST"))
        chunk = b"x" * 65536
        for _ in range(size // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
    resp = parse_response(data)
    assert resp.status == 404
    assert resp.headers["Connection"] == "close"
    assert upstream.seen == []


async def test_idle_connections_and_trickled_heads_are_closed(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(open_policy(upstream, "server: {keepalive_timeout: 300ms}"))
    # Idle after a response: closed by the gateway.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    writer.write(req("/open/1"))
    await writer.drain()
    t0 = time.monotonic()
    data = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert parse_response(data).status == 200
    assert 0.2 < time.monotonic() - t0 < 3
    # A head sent a few bytes at a time never completes: cut off too (slowloris).
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    t0 = time.monotonic()
    closed = False
    for byte in b"GET /open/slow HTTP/1.1\r\nHost: g\r\nX-Pad: " + b"a" * 40:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            closed = True
            break
        if reader.at_eof():
            closed = True
            break
        await asyncio.sleep(0.05)
    else:
        closed = await asyncio.wait_for(reader.read(-1), 5) == b""
    writer.close()
    assert closed
    assert time.monotonic() - t0 < 3
    assert all(s.raw_path != "/open/slow" for s in upstream.seen)


async def test_http_1_0_framing(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    async def unsized(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"no length ")
        await resp.write(b"declared")
        await resp.write_eof()
        return resp

    upstream.routes["/open/unsized"] = unsized
    gw = await make_gateway(open_policy(upstream))
    # HTTP/1.1 client: re-chunked.
    resp = parse_response(await exchange(gw.public_port, req("/open/unsized", "Connection: close")))
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert resp.body == b"no length declared"
    # HTTP/1.0 client: no chunking (it cannot read it); the body ends at close.
    data = await exchange(gw.public_port, b"GET /open/unsized HTTP/1.0\r\nHost: g\r\n\r\n")
    resp = parse_response(data)
    assert "Transfer-Encoding" not in resp.headers
    assert resp.headers["Connection"] == "close"
    assert resp.body == b"no length declared"
    # HTTP/1.0 keep-alive with a sized body: kept alive, said so.
    data = await exchange(
        gw.public_port,
        b"GET /open/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /open/b HTTP/1.0\r\n\r\n",
    )
    first, second = (parse_response(r) for r in split_responses(data))
    assert first.headers["Connection"] == "keep-alive"
    assert second.headers["Connection"] == "close"
    assert json.loads(second.body)["path"] == "/open/b"


async def held_request(upstream: Upstream, port: int) -> tuple[asyncio.Event, asyncio.StreamWriter]:
    """A request the upstream holds until the event is set; its connection's writer."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="late")

    upstream.routes["/open/slow"] = slow
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(req("/open/slow"))
    await writer.drain()
    await asyncio.sleep(0.2)
    return release, writer


def abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a client that is gone for good."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_client_leaving_early_is_logged_and_the_gateway_keeps_serving(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(open_policy(upstream))
    release, writer = await held_request(upstream, gw.public_port)
    # Gone for good: a reset. A FIN alone is a half-close, and the answer is still
    # written (see the half-close tests below); only a later write could tell them apart.
    abort(writer)
    await asyncio.sleep(0.1)
    release.set()
    await asyncio.sleep(0.2)
    resp = parse_response(await exchange(gw.public_port, req("/open/fine", "Connection: close")))
    assert resp.status == 200
    # Counted as nginx counts it: 499, an error, not a 200 nobody received.
    left = sample_value(
        gw.metrics,
        "gateway_requests_total",
        {"route": "open", "method": "GET", "status_class": "4xx", "outcome": "error"},
    )
    assert left == 1.0
    assert sample_value(gw.metrics, "gateway_in_flight_requests") == 0.0


async def echo(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    return web.json_response({"path": request.path, "body": body.decode()})


async def echo_connection(
    make_gateway: GatewayFactory, upstream: Upstream
) -> tuple[Gateway, asyncio.StreamReader, asyncio.StreamWriter]:
    """A gateway whose upstream echoes `/open/echo`, and a client connection to it."""
    upstream.routes["/open/echo"] = echo
    gw = await make_gateway(open_policy(upstream))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    return gw, reader, writer


async def read_one(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


async def slow_reader(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client connection with a 4 KiB receive window (set before connecting, so the
    kernel cannot grow it): the gateway's writes back up after a few kilobytes."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


def in_flight(gw: Gateway) -> float | None:
    return sample_value(gw.metrics, "gateway_in_flight_requests")


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]


def requests_counted(gw: Gateway, method: str, status_class: str, outcome: str, route: str = "open") -> float:
    labels = {"route": route, "method": method, "status_class": status_class, "outcome": outcome}
    return sample_value(gw.metrics, "gateway_requests_total", labels) or 0.0


async def test_a_bad_chunk_inside_a_forwarded_upload_is_the_clients_fault_and_frees_everything(
    make_gateway: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    """The second chunk-size line is garbage while the upload is being relayed: a 400 and
    a client-side reason, never a 502 `upstream_error` (any client could inflate it)."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw, reader, writer = await echo_connection(make_gateway, upstream)
    writer.write(req("/open/echo", "Transfer-Encoding: chunked", method="POST", body=b"2\r\nab\r\n"))
    await writer.drain()
    await asyncio.sleep(0.2)  # forwarded: the upstream is waiting for the rest
    writer.write(b"zz\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    resp = parse_response(data)
    assert resp.status == 400  # answered and closed, never hung
    assert resp.headers["Connection"] == "close"
    assert json.loads(resp.body)["error"] == "invalid_request"
    [record] = access_records(caplog)
    assert (record["status"], record["outcome"], record["reason"]) == (400, "denied", "bad_request")
    assert requests_counted(gw, "POST", "4xx", "denied") == 1
    assert requests_counted(gw, "POST", "5xx", "error") == 0
    assert upstream.seen == []
    assert in_flight(gw) == 0.0
    assert gw._server is not None
    for _ in range(50):  # the gateway's side closes once it sees ours
        if not gw._server.connections:
            break
        await asyncio.sleep(0.1)
    assert not gw._server.connections


async def test_a_client_that_leaves_mid_upload_is_client_closed_not_upstream_error(
    make_gateway: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw, _, writer = await echo_connection(make_gateway, upstream)
    writer.write(req("/open/echo", "Content-Length: 10", method="POST", body=b"hello"))
    await writer.drain()
    await asyncio.sleep(0.2)
    abort(writer)  # a reset: gone (a FIN alone is a half-close, answered 400 below)
    for _ in range(50):
        if access_records(caplog):
            break
        await asyncio.sleep(0.05)
    [record] = access_records(caplog)
    assert (record["status"], record["outcome"], record["reason"]) == (499, "error", "client_closed")
    assert requests_counted(gw, "POST", "5xx", "error") == 0


async def test_upgrade_request_body_in_several_segments_is_forwarded_whole(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    _, reader, writer = await echo_connection(make_gateway, upstream)
    writer.write(
        req("/open/echo", "Connection: Upgrade", "Upgrade: h2c", "Content-Length: 10", method="POST", body=b"hello")
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(b"world" + req("/open/smuggled"))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    responses = split_responses(data)
    assert len(responses) == 1
    assert json.loads(parse_response(responses[0]).body)["body"] == "helloworld"


async def test_draining_lets_an_upload_in_progress_finish(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    upstream.routes["/open/echo"] = echo
    gw = await make_gateway(open_policy(upstream, "server: {shutdown_timeout: 5s}"))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    writer.write(req("/open/echo", "Content-Length: 10", method="POST", body=b"hello"))
    await writer.drain()
    await asyncio.sleep(0.2)
    stopping = asyncio.ensure_future(gw.stop())
    await asyncio.sleep(0.2)
    writer.write(b"world")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    await stopping
    resp = parse_response(data)
    assert resp.status == 200
    assert resp.headers["Connection"] == "close"
    assert json.loads(resp.body)["body"] == "helloworld"


async def test_pipelined_answers_wait_for_a_client_that_does_not_read(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    """Amplification: 3 000 tiny pipelined requests for 64 KB answers, never read, must
    not make the gateway buffer gigabytes; it stops answering until the client reads."""

    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * 65000)

    upstream.routes["/open/big"] = big
    gw = await make_gateway(open_policy(upstream))
    _, writer = await slow_reader(gw.public_port)
    writer.write(req("/open/big") * 3000)
    await writer.drain()
    await asyncio.sleep(1.5)
    assert gw._server is not None
    buffered = sum(c.transport.get_write_buffer_size() for c in gw._server.connections if c.transport)
    writer.close()
    assert buffered < 4 * 1024 * 1024
    assert len([s for s in upstream.seen if s.raw_path == "/open/big"]) == 0  # `big` is special: not recorded
    # The requests the upstream served are bounded by what fits in the buffers, not 3 000.
    served = sample_value(
        gw.metrics,
        "gateway_requests_total",
        {"route": "open", "method": "GET", "status_class": "2xx", "outcome": "allowed"},
    )
    assert served is not None
    assert served < 200


async def test_one_pipelining_client_cannot_hold_the_loop(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(open_policy(upstream))
    flood_reader, flood = await asyncio.open_connection("127.0.0.1", gw.public_port)
    flood.write(req("/nowhere") * 5000)
    await flood.drain()
    # Another client is answered while the flood is still being answered.
    other = parse_response(await exchange(gw.public_port, req("/open/other", "Connection: close")))
    refused = sample_value(
        gw.metrics,
        "gateway_requests_total",
        {"route": "_unmatched", "method": "GET", "status_class": "4xx", "outcome": "denied"},
    )
    flood.close()
    assert other.status == 200
    assert refused is not None
    assert refused < 5000
    del flood_reader


async def test_pipelined_requests_after_an_expect_upload_are_all_answered(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    gw = await make_gateway(open_policy(upstream))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    writer.write(req("/open/u", "Content-Length: 5", "Expect: 100-continue", method="POST"))
    await writer.drain()
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 100")
    writer.write(b"hello")
    await writer.drain()
    await asyncio.wait_for(read_one(reader), 5)
    writer.write(b"".join(req(f"/open/p{i}") for i in range(40)))
    await writer.drain()
    answers = [await asyncio.wait_for(read_one(reader), 5) for _ in range(40)]
    writer.close()
    assert [json.loads(parse_response(a).body)["path"] for a in answers] == [f"/open/p{i}" for i in range(40)]


async def test_a_client_that_stops_reading_is_cut_off_after_send_timeout(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 16 * 1024 * 1024
        await resp.prepare(request)
        for _ in range(256):
            await resp.write(b"x" * 65536)
        return resp

    upstream.routes["/open/huge"] = huge
    gw = await make_gateway(open_policy(upstream, "server: {send_timeout: 300ms}"))
    assert gw._server is not None
    _, writer = await slow_reader(gw.public_port)
    try:
        writer.write(req("/open/huge"))
        await writer.drain()
        for _ in range(100):  # up to 10 s; expected well under 1 s
            await asyncio.sleep(0.1)
            if in_flight(gw) == 0.0 and not gw._server.connections:
                break
    finally:
        writer.close()
    assert in_flight(gw) == 0.0
    assert not gw._server.connections
    # The response had started: it is counted as cut (an error), not as served.
    cut = sample_value(
        gw.metrics,
        "gateway_requests_total",
        {"route": "open", "method": "GET", "status_class": "2xx", "outcome": "error"},
    )
    assert cut == 1.0


async def test_control_characters_from_the_upstream_never_reach_the_client(make_gateway: GatewayFactory) -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nX-A: a\x0bb\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: tab\tand caf\xc3\xa9\r\nContent-Length: 2\r\n\r\nok",
    ]

    async def scripted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answers.pop(0))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(scripted, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        gw = await make_gateway(
            f"routes:\n  - {{name: r, match: {{prefix: /}}, upstream: 'http://127.0.0.1:{port}', auth: public}}\n"
        )
        statuses = []
        for _ in range(3):
            data = await exchange(gw.public_port, req("/x", "Connection: close"))
            statuses.append(parse_response(data).status)
            assert b"\x0b" not in data
            assert b"\x01" not in data
        assert statuses == [502, 502, 200]
        assert "X-A: tab\tand caf\xc3\xa9" in data.decode("latin-1")
    finally:
        server.close()
        await server.wait_closed()


async def slow(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(0.5)
    return web.json_response({"path": request.path})


async def segments(port: int, *parts: bytes, gap: float = 0.2) -> bytes:
    """Write `parts` with a pause between them; read until the gateway closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(gap)
        return await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()


async def test_draining_takes_no_queued_request_it_could_not_answer(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    """A queued request is never run upstream once its connection is being closed: it
    could not be answered (logged as 499), and the client could not tell it ran."""
    served: list[str] = []

    async def big(request: web.Request) -> web.StreamResponse:
        served.append(request.query_string)
        return web.Response(body=b"x" * 65000)

    upstream.routes["/open/big"] = big
    gw = await make_gateway(open_policy(upstream, "server: {shutdown_timeout: 1s}"))
    reader, writer = await slow_reader(gw.public_port)
    writer.write(b"".join(req(f"/open/big?{i}") for i in range(60)))
    await writer.drain()
    await asyncio.sleep(1.5)  # the gateway now waits for us to read; requests are queued
    assert gw._server is not None
    assert any(c.writing_paused for c in gw._server.connections)
    stopping = asyncio.ensure_future(gw.stop())
    # Read for a while: each answer taken lets the gateway's task run again while the
    # connection is closing, which is when it must not take the next request.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            if not await asyncio.wait_for(reader.read(65536), 0.5):
                break
        except TimeoutError:
            continue
    writer.close()
    await stopping
    assert 0 < len(served) < 60

    def count(status_class: str, outcome: str) -> float:
        labels = {"route": "open", "method": "GET", "status_class": status_class, "outcome": outcome}
        return sample_value(gw.metrics, "gateway_requests_total", labels) or 0.0

    assert count("4xx", "error") == 0  # no request ran that could not be answered
    assert count("2xx", "allowed") == len(served)


async def test_a_broken_body_is_reported_once_and_reading_stops(
    make_gateway: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.proxy")
    caplog.set_level(logging.INFO, logger="gateway.access")
    upstream.routes["/open/echo"] = echo
    upstream.routes["/open/slow"] = slow
    gw = await make_gateway(open_policy(upstream))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    # The first request keeps the connection busy while the second's body breaks.
    writer.write(
        req("/open/slow") + req("/open/echo", "Transfer-Encoding: chunked", method="POST", body=b"5\r\nhello\r\n")
    )
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.write(b"ZZ\r\n")
    for _ in range(200):
        writer.write(b"A" * 1000)
        await asyncio.sleep(0)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert [parse_response(r).status for r in split_responses(data)] == [200, 400]
    assert caplog.text.count("unparseable request") == 1
    assert len(upstream.seen) == 0  # `slow` is special (not recorded); `echo` never ran
    # The broken upload, refused before it reached the upstream, is logged and counted
    # as the client's error like any other refusal.
    assert [(r["method"], r["status"], r["reason"]) for r in access_records(caplog)] == [
        ("GET", 200, "-"),
        ("POST", 400, "bad_request"),
    ]
    assert requests_counted(gw, "POST", "4xx", "denied") == 1


async def test_answers_before_a_close_are_not_lost_to_a_reset(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    """After CONNECT (405) or an Upgrade, the gateway stops reading; bytes the client
    sent after it must not turn the close into a reset that destroys the answers."""
    upstream.routes["/open/slow"] = slow
    gw = await make_gateway(open_policy(upstream))
    data = await segments(
        gw.public_port,
        req("/open/slow") + req("a:1", method="CONNECT"),
        req("/open/x") * 50,  # arrives while the slow request is answered: left unread
        req("/open/y") * 50,
        gap=0.1,
    )
    assert [parse_response(r).status for r in split_responses(data)] == [200, 405]


async def test_an_upload_after_one_of_many_small_chunks_is_read_to_its_end(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    _, reader, writer = await echo_connection(make_gateway, upstream)
    # 4097 one-byte chunks in one segment: the last data chunk crosses aiohttp's
    # chunk-split high-water mark (64 KiB // 16) and leaves the request parser paused.
    many = b"".join(b"1\r\nx\r\n" for _ in range(4097)) + b"0\r\n\r\n"
    writer.write(req("/open/echo", "Transfer-Encoding: chunked", method="POST", body=many))
    await writer.drain()
    first = parse_response(await asyncio.wait_for(read_one(reader), 5))
    assert first.status == 200
    assert json.loads(first.body)["body"] == "x" * 4097
    # The next upload on the same keep-alive connection.
    writer.write(req("/open/echo", "Transfer-Encoding: chunked", method="POST", body=b"5\r\nhello\r\n0\r\n\r\n"))
    await writer.drain()
    try:
        second = parse_response(await asyncio.wait_for(read_one(reader), 5))
    finally:
        writer.close()
    assert second.status == 200
    assert json.loads(second.body)["body"] == "hello"


async def test_an_answer_written_before_the_client_half_closes_is_delivered(
    make_gateway: GatewayFactory, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that half-closes (FIN) while it waits: an answer the gateway had already
    written when the FIN arrived must still reach it (before the change it was handed
    to the transport at once, and a close flushes the transport's buffer)."""
    gw = await make_gateway(open_policy(upstream))
    release, other = await held_request(upstream, gw.public_port)  # in progress: busy > 1

    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", gw.public_port))
    original = ClientConnection.write

    def write_then_client_fin(self: ClientConnection, data: bytes) -> None:
        original(self, data)
        if data.startswith(b"HTTP/1.1 200"):
            sock.shutdown(socket.SHUT_WR)  # timing harness: the client's FIN lands just after

    monkeypatch.setattr(ClientConnection, "write", write_then_client_fin)
    await loop.sock_sendall(sock, req("/open/x"))
    data = b""
    try:
        async with asyncio.timeout(3):
            while chunk := await loop.sock_recv(sock, 65536):
                data += chunk
    finally:
        monkeypatch.undo()
        release.set()
        sock.close()
        other.close()
    assert data.startswith(b"HTTP/1.1 200"), data


async def test_busy_returns_to_zero_after_odd_disconnects(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    upstream.routes["/open/echo"] = echo
    gw = await make_gateway(open_policy(upstream))
    port = gw.public_port
    assert gw._server is not None

    async def conn() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port)

    # (a) a pipelined flood, then a reset
    r, w = await conn()
    w.write(req("/open/a") * 60)
    await w.drain()
    await asyncio.sleep(0.01)
    w.transport.abort()
    # (b) a bad chunk in a queued upload behind a pipelined request
    r, w = await conn()
    w.write(
        req("/open/a") + req("/open/echo", "Transfer-Encoding: chunked", method="POST", body=b"5\r\nhello\r\nZZ\r\n")
    )
    await w.drain()
    await asyncio.sleep(0.2)
    w.close()
    # (c) pipelined, then FIN
    r, w = await conn()
    w.write(req("/open/a") * 40)
    w.write_eof()
    await asyncio.sleep(0.2)
    w.close()
    # (d) an Expect upload abandoned after the 100
    r, w = await conn()
    w.write(req("/open/echo", "Content-Length: 100", "Expect: 100-continue", method="POST"))
    await w.drain()
    await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
    w.write(b"x" * 10)
    await asyncio.sleep(0.1)
    w.close()
    # (e) a parse error after pipelined requests
    r, w = await conn()
    w.write(req("/open/a") * 5 + b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    await w.drain()
    await asyncio.sleep(0.3)
    w.close()
    # (f) many concurrent clients that leave at once
    pairs = [await conn() for _ in range(30)]
    for _, w in pairs:
        w.write(req("/open/a") * 3)
    await asyncio.sleep(0.005)
    for _, w in pairs:
        w.transport.abort()
    for _ in range(100):
        await asyncio.sleep(0.05)
        if not gw._server.connections:
            break
    await asyncio.sleep(0.2)
    assert gw._server.coalescer.busy == 0


# -- half-closed clients: answer what was received, then close (RFC 9112 §9.6) -------------

BOTH_LOOPS = pytest.mark.asyncio(loop_factories=["uvloop", "asyncio"])  # see conftest.py


async def half_closed(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send `data`, shut our sending side (FIN), read until the gateway closes."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, data)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        async with asyncio.timeout(wait):
            while chunk := await loop.sock_recv(sock, 65536):
                out += chunk
        return out
    finally:
        sock.close()


@BOTH_LOOPS
async def test_a_complete_upload_then_a_half_close_is_answered(
    make_gateway: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    upstream.routes["/open/echo"] = echo
    gw = await make_gateway(open_policy(upstream))
    data = await half_closed(gw.public_port, req("/open/echo", "Content-Length: 5", method="POST", body=b"hello"))
    resp = parse_response(data)
    assert resp.status == 200
    assert json.loads(resp.body)["body"] == "hello"
    [record] = access_records(caplog)
    assert (record["status"], record["outcome"]) == (200, "allowed")
    assert requests_counted(gw, "POST", "4xx", "error") == 0


@BOTH_LOOPS
async def test_pipelined_requests_then_a_half_close_are_all_answered_in_order(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    upstream.routes["/open/slow"] = slow  # the FIN arrives while the first is upstream
    gw = await make_gateway(open_policy(upstream))
    data = await half_closed(gw.public_port, req("/open/slow") + b"".join(req(f"/open/{i}") for i in range(40)))
    responses = [parse_response(r) for r in split_responses(data)]
    assert [r.status for r in responses] == [200] * 41
    assert [json.loads(r.body)["path"] for r in responses] == ["/open/slow"] + [f"/open/{i}" for i in range(40)]
    assert responses[-1].headers["Connection"] == "close"  # the last answer says so


@BOTH_LOOPS
async def test_a_half_close_mid_upload_fails_that_upload_as_the_clients_error(
    make_gateway: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    upstream.routes["/open/echo"] = echo
    upstream.routes["/open/slow"] = slow
    gw = await make_gateway(open_policy(upstream))
    for framing, body in (("Content-Length: 10", b"hello"), ("Transfer-Encoding: chunked", b"5\r\nhello\r\n")):
        caplog.clear()
        # Alone, then behind a request the upstream holds: the cut upload is then still
        # queued when the FIN arrives, and is answered in its turn, never forwarded.
        for before in (b"", req("/open/slow")):
            data = await half_closed(gw.public_port, before + req("/open/echo", framing, method="POST", body=body))
            responses = [parse_response(r) for r in split_responses(data)]
            assert [r.status for r in responses] == [200] * bool(before) + [400], (framing, before)
            assert responses[-1].headers["Connection"] == "close"
    records = [r for r in access_records(caplog) if r["method"] == "POST"]
    assert [(r["status"], r["reason"]) for r in records] == [(400, "bad_request")] * 2
    assert requests_counted(gw, "POST", "4xx", "denied") == 4  # each logged and counted
    assert requests_counted(gw, "POST", "5xx", "error") == 0
    assert requests_counted(gw, "POST", "4xx", "error") == 0  # never taken for a client that left


@BOTH_LOOPS
async def test_a_half_close_while_idle_closes_the_connection(make_gateway: GatewayFactory, upstream: Upstream) -> None:
    gw = await make_gateway(open_policy(upstream, "server: {keepalive_timeout: 30s}"))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.public_port)
    try:
        writer.write(req("/open/1"))
        await writer.drain()
        assert parse_response(await asyncio.wait_for(read_one(reader), 5)).status == 200
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(-1), 5) == b""  # closed now, not after 30 s
    finally:
        writer.close()


# -- requests parsed before a parse error are served first ----------------------------------


async def test_requests_before_a_malformed_one_in_the_same_segment_are_served_first(
    make_gateway: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await make_gateway(open_policy(upstream))
    bad = b"GET /open/bad HTTP/1.1\r\nBad Header\r\n\r\n"
    cases = [
        (req("/open/valid"), ["/open/valid"]),
        (req("/open/a") + req("/open/b", "Content-Length: 2", method="POST", body=b"hi"), ["/open/a", "/open/b"]),
    ]
    for valid, paths in cases:
        caplog.clear()
        upstream.seen.clear()
        data = await exchange(gw.public_port, valid + bad)
        responses = [parse_response(r) for r in split_responses(data)]
        assert [r.status for r in responses] == [200] * len(paths) + [400]
        assert [json.loads(r.body)["path"] for r in responses[:-1]] == paths
        assert [s.raw_path for s in upstream.seen] == paths
        # The malformed one is logged too, with its peer and reason and no path.
        assert [r["path"] for r in access_records(caplog)] == [*paths, ""]
    # The same, the error inside the body of the request after the valid one: the valid
    # one is served, the broken upload is answered 400 and never forwarded.
    upstream.seen.clear()
    broken = req("/open/up", "Transfer-Encoding: chunked", method="POST", body=b"2\r\nab\r\nzz\r\n")
    data = await exchange(gw.public_port, req("/open/valid") + broken)
    assert [parse_response(r).status for r in split_responses(data)] == [200, 400]
    assert [s.raw_path for s in upstream.seen] == ["/open/valid"]


async def test_requests_refused_before_they_parse_are_logged_and_counted(
    make_gateway: GatewayFactory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    # The product rule: the operator gets the reason in the log and in a metric, for
    # these too (before, only a bare debug line said anything of them).
    caplog.set_level(logging.INFO, logger="gateway.access")
    gw = await make_gateway(open_policy(upstream))
    before = requests_counted(gw, "OTHER", "4xx", "denied", route="_unmatched")
    bad_line = b"GET /open/x HTTP/1.1\r\nHost: g\r\nBad Header\r\n\r\n"
    huge = b"GET /open/x HTTP/1.1\r\nHost: g\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    statuses, ids = [], []
    for raw in (bad_line, huge):
        response = parse_response(await exchange(gw.public_port, raw))
        statuses.append(response.status)
        ids.append(response.headers["x-request-id"])
    assert statuses == [400, 431]
    records = access_records(caplog)
    assert [(r["status"], r["reason"], r["client"], r["route"]) for r in records] == [
        (400, "bad_request", "127.0.0.1", "-"),
        (431, "bad_request", "127.0.0.1", "-"),
    ]
    # The client's answer names the log line (a new ID each, never the request's own).
    assert [r["request_id"] for r in records] == ids
    assert all(len(i) == 32 for i in ids)
    assert ids[0] != ids[1]
    assert "X-Big" not in caplog.text
    assert "Bad Header" not in caplog.text
    assert requests_counted(gw, "OTHER", "4xx", "denied", route="_unmatched") - before == 2
    assert upstream.seen == []


async def test_a_request_after_a_chunked_body_is_answered_wherever_the_reads_split(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    # When a body ends in a later read than its head, llhttp counts the request done
    # there and holds what follows it; that request must still be asked for and
    # answered (found by review: split anywhere in the trailer, /b was never answered).
    gw = await make_gateway(open_policy(upstream))
    data = (
        b"POST /open/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: y\r\n\r\n"
        b"GET /open/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head_end = data.index(b"\r\n\r\n") + 4
    for cut in range(head_end, data.index(b"GET ") + 1):
        answer = await segments(gw.public_port, data[:cut], data[cut:], gap=0.01)
        statuses = [parse_response(r).status for r in split_responses(answer)]
        assert statuses == [200, 200], cut
