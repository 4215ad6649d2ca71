"""What the tests of a gateway with several workers share: policies, polling, clients."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from tests.conftest import Upstream
from tests.procs import GatewayProcess
from tests.rawhttp import KeptAlive, get

WORKERS = "server: {workers: 2}\n"
# The supervisor's line once every worker switched (a worker's own line names no count).
RELOADED = "gateway.runtime: policy reloaded from"
REFUSED = "reload refused; the running policy stays in force"


class Spread(Protocol):
    """The `spread` fixture: `tests.procs.spread_connections`, closed at the test's end."""

    async def __call__(
        self, gw: GatewayProcess, count: int = ..., request: bytes = ..., expect: int = ...
    ) -> list[tuple[KeptAlive, int]]: ...


def routes(upstream: Upstream, providers: bool = False) -> str:
    """/public for anyone; with `providers`, /orders too, for the provider `corp`."""
    public = f'- {{name: public, match: {{prefix: /public}}, upstream: "{upstream.url}", auth: public}}'
    orders = f'- {{name: orders, match: {{prefix: /orders}}, upstream: "{upstream.url}", auth: {{any_of: [corp]}}}}'
    return f"{orders}\n{public}\n" if providers else f"{public}\n"


def corp(issuer: str, source: str, remote: str = "{}") -> str:
    """A `providers:` section with the one provider `corp`."""
    return f"""
providers:
  corp:
    issuer: "{issuer}"
    audiences: [orders-api]
    algorithms: [RS256, ES256, EdDSA]
    keys: [{source}]
    remote: {remote}
"""


def with_route(policy: str, line: str) -> str:
    """The policy text with `line` (a flow-style route) as its first route."""
    assert "\nroutes:\n" in policy
    return policy.replace("\nroutes:\n", f"\nroutes:\n  - {line}\n", 1)


def replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` at once (a rename), as a deployment tool would."""
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    os.replace(new, path)


async def answer(port: int, request: bytes) -> int | None:
    """The status of `request` on a new connection; None when the connection was
    refused, or ended (closed or reset) without an answer."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionError:
        return None
    try:
        writer.write(request)
        data = await asyncio.wait_for(reader.read(-1), 10)
    except ConnectionError:
        return None
    finally:
        writer.close()
    return int(data.split(b" ", 2)[1]) if data else None


async def on_each(conns: list[tuple[KeptAlive, int]], request: bytes) -> list[int]:
    """`request` on each kept-alive connection; the statuses."""
    return [r.status for r in await asyncio.gather(*(c.send(request) for c, _ in conns))]


async def until(check: Callable[[], Awaitable[bool] | bool], seconds: float = 5.0) -> float:
    """Poll `check` until it is true; how long that took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        done = check()
        if await done if inspect.isawaitable(done) else done:
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met in {seconds}s")


async def logged(gw: GatewayProcess, text: str, count: int = 1, seconds: float = 5.0) -> float:
    """Wait until the gateway's log holds `text` `count` times; how long that took."""
    return await until(lambda: gw.log_text().count(text) >= count, seconds)


class Asking:
    """`async with Asking(port) as asking:` a client asking `request` on new
    connections, one after another, until `stop()` (or the block's end) returns every
    status it got (None: refused, or ended unanswered)."""

    def __init__(self, port: int, request: bytes = get("/public/asking")) -> None:
        self.port = port
        self.request = request
        self.statuses: list[int | None] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Asking:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stop.is_set():
            self.statuses.append(await answer(self.port, self.request))
            await asyncio.sleep(0.005)

    async def stop(self) -> list[int | None]:
        self._stop.set()
        assert self._task is not None
        await self._task
        return self.statuses
