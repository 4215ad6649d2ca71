"""The soak's load generator: the mixed load, at a fixed rate or as fast as it goes.

    python bench/loadgen.py PORT TOKENS_JSON --seconds 600 --rate 4000 [--report-every 60]
    python bench/loadgen.py PORT TOKENS_JSON --seconds 10            # no --rate: full speed

One process, one event loop (uvloop), `--connections` keep-alive connections. With
`--rate` it is open-loop: request i is due at start + i / rate whatever the answers
do, waits in a queue for a free connection, and its latency and its deadline count from
when it was due, so a slow gateway shows as latency and timeouts instead of quietly
lowering the rate (wrk's closed loop would). Without `--rate`, each connection sends its
next request as soon as the last is answered: the maximum.

Prints one JSON line every `--report-every` seconds and a last one with `"final": true`:
cumulative outcomes per kind of request, and the interval's completions, rate and
latency. An outcome is "ok" (the expected status), "status N" (any other), "connection
error", "malformed response" or "timeout" (not answered within `--timeout` of its due
time); everything but "ok" is an error. `--any-status` counts every answer as ok (to
measure the generator itself against the plain backend).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import uvloop

# Per 100 requests. Uploads are few because each is large: at 4 000 req/s, 2 % of
# requests averaging 448 KiB is about 35 MiB/s through the gateway, about a twentieth of
# what it streams on one core (bench/README.md), so they add up to memory and
# descriptor churn without turning the soak into a streaming benchmark.
MIX = {"public": 30, "reused": 30, "unique": 22, "bad": 16, "upload": 2}
EXPECTED = {"public": 200, "reused": 200, "unique": 200, "bad": 401, "upload": 200}
PATHS = {"public": "/public/soak", "reused": "/jwt/soak", "unique": "/jwt/soak", "bad": "/jwt/soak"}
UPLOAD_PATH = "/stream/up"
UPLOAD_SIZES = (64 * 1024, 256 * 1024, 1024 * 1024)
# A connection asks to be closed on its 100th request and the next one opens anew, so
# the gateway accepts and closes connections all along (where descriptors leak), not
# only 64 at the start.
RECYCLE_AFTER = 100
# Every time here is perf_counter's: uvloop's `loop.time()` counts whole milliseconds,
# too coarse for the latency of a request that takes one.
clock = time.perf_counter
_END = b"\r\n"
_CLOSE_END = b"Connection: close\r\n\r\n"


class Requests:
    """The requests of each kind, built once, in rotation: unique tokens in order, so
    a pool larger than the gateway's LRU token cache misses on every request."""

    def __init__(self, port: int, tokens: dict[str, list[str]]) -> None:
        host = f"Host: 127.0.0.1:{port}\r\n"

        def get(path: str, token: str | None) -> bytes:
            auth = f"Authorization: Bearer {token}\r\n" if token else ""
            return f"GET {path} HTTP/1.1\r\n{host}{auth}".encode()

        self._heads: dict[str, Iterator[tuple[bytes, bytes]]] = {
            "public": itertools.cycle([(get(PATHS["public"], None), b"")]),
            "reused": itertools.cycle([(get(PATHS["reused"], t), b"") for t in tokens["reused"]]),
            "unique": itertools.cycle([(get(PATHS["unique"], t), b"") for t in tokens["unique"]]),
            "bad": itertools.cycle([(get(PATHS["bad"], t), b"") for t in tokens["bad"]]),
        }
        body = bytes(UPLOAD_SIZES[-1])
        self._heads["upload"] = itertools.cycle(
            [
                (
                    f"POST {UPLOAD_PATH} HTTP/1.1\r\n{host}Content-Type: application/octet-stream\r\n"
                    f"Content-Length: {size}\r\n".encode(),
                    body[:size],
                )
                for size in UPLOAD_SIZES
            ]
        )
        kinds = [kind for kind, weight in MIX.items() for _ in range(weight)]
        random.Random(14).shuffle(kinds)  # noqa: S311 - an order, not a secret: the same every run
        self.kinds = itertools.cycle(kinds)

    def next(self, kind: str) -> tuple[bytes, bytes]:
        """The head (without its blank line) and body of the next request of `kind`."""
        return next(self._heads[kind])


class MalformedResponseError(ValueError):
    """A status line that is not HTTP's: counted apart from connection errors."""


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Status and whether the server will close, after reading the whole response."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise MalformedResponseError(lines[0][:80])
        status = int(parts[1])
        length, chunked, close = -1, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if 100 <= status < 200:
            continue  # an interim response; the real one follows
        if chunked:
            while size := int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16):
                await reader.readexactly(size + 2)  # the chunk and its CRLF
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailer fields, up to the blank line
        elif length >= 0:
            await reader.readexactly(length)
        elif status not in (204, 304):
            await reader.read()  # delimited by the close
            close = True
        return status, close


class Conn:
    """One keep-alive connection, opened on first use and again after it closes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = 0

    async def request(self, head: bytes, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.used += 1
        last = self.used >= RECYCLE_AFTER
        self.writer.write(head + (_CLOSE_END if last else _END))
        if body:
            self.writer.write(body)
        await self.writer.drain()
        status, close = await read_response(self.reader)
        if last or close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
        self.used = 0


@dataclass
class Tally:
    """Outcomes per kind (cumulative) and the latencies and due count of the interval."""

    outcomes: dict[str, dict[str, int]] = field(default_factory=lambda: {kind: {} for kind in MIX})
    completed: int = 0
    due: int = 0
    latencies: list[float] = field(default_factory=list)

    def count(self, kind: str, outcome: str) -> None:
        mine = self.outcomes[kind]
        mine[outcome] = mine.get(outcome, 0) + 1
        self.completed += 1


class Generator:
    def __init__(self, args: argparse.Namespace, tokens: dict[str, list[str]]) -> None:
        self.args = args
        self.requests = Requests(args.port, tokens)
        self.tally = Tally()
        self.queue: asyncio.Queue[tuple[str, float] | None] = asyncio.Queue()
        self._reported = 0  # completions at the last report
        self._since = clock()  # when the last report was printed

    async def one(self, conn: Conn, kind: str, due: float) -> None:
        budget = due + self.args.timeout - clock()
        if budget <= 0:  # waited its whole budget for a connection
            self.tally.count(kind, "timeout")
            return
        head, body = self.requests.next(kind)
        try:
            async with asyncio.timeout(budget):
                status = await conn.request(head, body)
        except TimeoutError:
            conn.close()  # mid-request: what the connection holds next is unknown
            self.tally.count(kind, "timeout")
            return
        except MalformedResponseError:
            conn.close()
            self.tally.count(kind, "malformed response")
            return
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError):
            # Refused, reset, closed mid-response (IncompleteReadError is an EOFError),
            # a bad length or chunk size.
            conn.close()
            self.tally.count(kind, "connection error")
            return
        self.tally.latencies.append(clock() - due)
        ok = self.args.any_status or status == EXPECTED[kind]
        self.tally.count(kind, "ok" if ok else f"status {status}")

    async def scheduled(self) -> None:
        """A connection's loop in open-loop mode: whatever is due next, in order."""
        conn = Conn(self.args.port)
        while (item := await self.queue.get()) is not None:
            await self.one(conn, *item)
        conn.close()

    async def closed_loop(self, end: float) -> None:
        conn = Conn(self.args.port)
        while (now := clock()) < end:
            self.tally.due += 1
            await self.one(conn, next(self.requests.kinds), now)
        conn.close()

    async def dispatch(self, start: float, end: float) -> None:
        """Queue each request at its due time; the sleep's granularity (about 1 ms)
        only batches a few requests, their due times stay exact."""
        rate: float = self.args.rate
        i = 0
        while (due := start + i / rate) < end:
            now = clock()
            while due <= now and due < end:
                self.queue.put_nowait((next(self.requests.kinds), due))
                self.tally.due += 1
                i += 1
                due = start + i / rate
            await asyncio.sleep(max(0.0, due - clock()))
        for _ in range(self.args.connections):
            self.queue.put_nowait(None)  # after every request still queued (FIFO)

    def report(self, start: float, final: bool) -> None:
        now = clock()
        since, self._since = self._since, now
        lat = sorted(self.tally.latencies)
        completed = self.tally.completed

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

        line = {
            "t": round(now - start, 2),
            "final": final,
            "outcomes": self.tally.outcomes,
            "completed": completed,
            "interval": {
                "seconds": round(now - since, 2),
                "completed": completed - self._reported,
                "due": self.tally.due,
                "rate": round((completed - self._reported) / max(now - since, 1e-9), 1),
                "backlog": self.queue.qsize(),
                "p50_ms": pct(0.50),
                "p99_ms": pct(0.99),
                "max_ms": round(lat[-1] * 1000, 2) if lat else None,
            },
        }
        print(json.dumps(line), flush=True)
        self._reported = completed
        self.tally.latencies = []
        self.tally.due = 0

    async def reporter(self, start: float, end: float) -> None:
        every: float = self.args.report_every
        k = 1
        while start + k * every < end:
            await asyncio.sleep(start + k * every - clock())
            self.report(start, final=False)
            k += 1

    async def run(self) -> None:
        start = clock()
        self._since = start
        end = start + self.args.seconds
        reporter = asyncio.create_task(self.reporter(start, end))
        if self.args.rate:
            conns = [asyncio.create_task(self.scheduled()) for _ in range(self.args.connections)]
            await self.dispatch(start, end)
        else:
            conns = [asyncio.create_task(self.closed_loop(end)) for _ in range(self.args.connections)]
        # Every request due has its own deadline, so this ends within `timeout` of `end`.
        await asyncio.gather(*conns)
        reporter.cancel()
        self.report(start, final=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("tokens", help="JSON: reused, unique and bad token lists")
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--rate", type=float, default=0.0, help="requests per second; 0: as fast as it goes")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--report-every", type=float, default=60.0)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--any-status", action="store_true")
    args = ap.parse_args()
    with open(args.tokens) as f:
        tokens: dict[str, list[str]] = json.load(f)

    async def go() -> None:
        await Generator(args, tokens).run()

    uvloop.run(go())


if __name__ == "__main__":
    main()
