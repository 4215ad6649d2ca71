"""The client of the reload load test: lanes of requests on raw sockets, every answer
checked, every connection failure classified.

Raw sockets, not aiohttp's client: the test must know whether a connection was reused,
whether any byte of a response came before it ended, and that nothing is retried
behind its back. A lane sends one request at a time (no pipelining), so a response is
read by its framing and nothing of the next one is ever in the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

# No answer for this long is a hang.
HANG = 10.0
KINDS = ("public", "token", "upload", "public", "token")
_MAX_REPORTED = 40


class CutError(ConnectionError):
    """The connection ended before a whole response: `received` bytes of it had come."""

    def __init__(self, received: int) -> None:
        super().__init__(f"connection ended after {received} bytes of the response")
        self.received = received


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"

    def json(self) -> object:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader) -> Response:
    """One response, framed by Content-Length or chunked; CutError if it ends early."""
    buf = bytearray()
    try:
        while (end := buf.find(b"\r\n\r\n")) < 0:
            chunk = await reader.read(65536)
            if not chunk:
                raise CutError(len(buf))
            buf += chunk
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = bytearray(buf[end + 4 :])
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        length = int(headers.get("content-length", "0"))
        while not (body.endswith(b"0\r\n\r\n") if chunked else len(body) >= length):
            chunk = await reader.read(65536)
            if not chunk:
                raise CutError(end + 4 + len(body))
            body += chunk
    except ConnectionError as exc:
        if isinstance(exc, CutError):
            raise
        raise CutError(len(buf)) from exc
    return Response(status, headers, _dechunk(bytes(body)) if chunked else bytes(body))


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += data[:size]
        data = data[size + 2 :]


@dataclass(eq=False)
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    port: int  # the client's own port: how /proc names this connection
    started: float  # before connect() was called
    served: int = 0

    async def exchange(self, request: bytes) -> Response:
        """Send and read the answer (CutError, TimeoutError after HANG)."""
        async with asyncio.timeout(HANG):
            self.writer.write(request)
            try:
                await self.writer.drain()
            except ConnectionError as exc:
                raise CutError(0) from exc
            response = await read_response(self.reader)
        self.served += 1
        return response

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass(frozen=True)
class Killed:
    """The connections of a killed worker: client ports read from /proc while it was
    stopped, for connections begun before that."""

    ports: frozenset[int]
    at: float

    def holds(self, conn: Conn) -> bool:
        return conn.port in self.ports and conn.started < self.at


@dataclass
class Tally:
    responses: int = 0  # whole responses received: what /metrics must count
    kinds: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    moved: int = 0  # connects refused on the old port and made on the new one
    retried: int = 0  # GETs sent again: a reused connection closed with no byte of answer
    told_to_close: int = 0  # `Connection: close` on a connection the client meant to keep
    # (request id, bytes of its response received) of requests in flight on the killed worker
    lost_on_killed: list[tuple[int, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    failed: int = 0

    def fail(self, what: str) -> None:
        self.failed += 1
        if len(self.failures) < _MAX_REPORTED:
            self.failures.append(what)


Check = Callable[[Response], str | None]


class Load:
    """`lanes` connections kept busy; the first `keepalive` of them reuse their connection
    for a few dozen requests, the others open one per request (`Connection: close`)."""

    def __init__(self, port: int, tokens: dict[str, str], lanes: int = 50, keepalive: int = 35) -> None:
        self.port = port
        self.next_port: int | None = None  # where to go when `port` refuses (a listen change)
        self.killed: Killed | None = None
        self.tally = Tally()
        self.stop = asyncio.Event()
        self.open: set[Conn] = set()
        self._tokens = list(tokens.items())
        self._lanes = lanes
        self._keepalive = keepalive
        self._ids = itertools.count(1)

    async def run(self) -> None:
        await asyncio.gather(*(self._lane(i) for i in range(self._lanes)))

    def next_id(self) -> int:
        return next(self._ids)

    async def connect(self, port: int) -> Conn:
        started = time.monotonic()
        async with asyncio.timeout(HANG):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = Conn(reader, writer, writer.get_extra_info("sockname")[1], started)
        self.tally.connections += 1
        self.open.add(conn)
        return conn

    def drop(self, conn: Conn) -> None:
        self.open.discard(conn)
        conn.close()

    async def get(self, conn: Conn, path: str) -> Response:
        """A GET on `conn` for the test's own checks, counted like the lanes' requests."""
        rid = self.next_id()
        response = await conn.exchange(f"GET {path} HTTP/1.1\r\nHost: load.test\r\nX-Load-Id: {rid}\r\n\r\n".encode())
        self.tally.responses += 1
        return response

    async def _connect(self, port: int) -> tuple[Conn | None, int]:
        """A connection, moving to `next_port` when `port` refuses, as a client behind a
        load balancer would once the old address is gone."""
        while True:
            try:
                return await self.connect(port), port
            except ConnectionRefusedError:
                if self.next_port is None or port == self.next_port:
                    self.tally.fail(f"connect to port {port} refused")
                    return None, port
                self.tally.moved += 1
                port = self.next_port
            except (OSError, TimeoutError) as exc:
                self.tally.fail(f"connect to port {port}: {exc!r}")
                return None, port

    async def _lane(self, index: int) -> None:
        keep = index < self._keepalive
        rng = random.Random(index)  # noqa: S311 (request sizes, not secrets)
        port = self.port
        conn: Conn | None = None
        budget = 1
        for n in itertools.count():
            if self.stop.is_set():
                break
            kind = KINDS[(index + n) % len(KINDS)]
            rid = self.next_id()
            request, check = self._request(kind, rid, keep, rng)
            while True:
                if conn is None:
                    conn, port = await self._connect(port)
                    if conn is None:
                        await asyncio.sleep(0.1)
                        break
                    budget = rng.randint(10, 60) if keep else 1
                reused = conn.served > 0
                try:
                    response = await conn.exchange(request)
                except CutError as cut:
                    self.drop(conn)
                    if self.killed is not None and self.killed.holds(conn):
                        self.tally.lost_on_killed.append((rid, cut.received))
                    elif cut.received == 0 and reused and request.startswith(b"GET "):
                        # RFC 9112 §9.3.1: an idempotent request on a reused connection
                        # that closed before any byte of its answer may be sent again.
                        self.tally.retried += 1
                        conn = None
                        continue
                    else:
                        self.tally.fail(f"{kind} #{rid}: {cut} (reused: {reused})")
                    conn = None
                    break
                except TimeoutError:
                    self.tally.fail(f"{kind} #{rid}: no answer in {HANG}s")
                    self.drop(conn)
                    conn = None
                    break
                self.tally.responses += 1
                self.tally.kinds[kind] += 1
                problem = check(response)
                if problem is not None:
                    self.tally.fail(f"{kind} #{rid}: {problem}")
                if response.closes or conn.served >= budget:
                    if keep and response.closes:
                        self.tally.told_to_close += 1
                    self.drop(conn)
                    conn = None
                break
        if conn is not None:
            self.drop(conn)

    def _request(self, kind: str, rid: int, keep: bool, rng: random.Random) -> tuple[bytes, Check]:
        close = "" if keep else "Connection: close\r\n"
        head = f"Host: load.test\r\nX-Load-Id: {rid}\r\n{close}"
        if kind == "public":
            path = f"/public/{rid}"
            return f"GET {path} HTTP/1.1\r\n{head}\r\n".encode(), _expect({"path": path})
        if kind == "token":
            token, sub = self._tokens[rid % len(self._tokens)]
            auth = f"Authorization: Bearer {token}\r\n"
            return f"GET /orders/{rid} HTTP/1.1\r\n{head}{auth}\r\n".encode(), _expect({"sub": sub})
        body = rng.randbytes(rng.randint(1024, 6144))
        upload = f"POST /upload HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n"
        expected = {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        return upload.encode() + body, _expect(expected)


def _expect(expected: dict[str, object]) -> Check:
    def check(response: Response) -> str | None:
        if response.status != 200:
            return f"status {response.status}: {response.body[:200]!r}"
        try:
            answer = response.json()
        except ValueError:
            return f"not JSON: {response.body[:200]!r}"
        return None if answer == expected else f"answer {answer!r}, expected {expected!r}"

    return check
