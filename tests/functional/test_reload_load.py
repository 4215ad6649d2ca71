"""Issue 12's load test: two workers under ~50 busy connections while the policy changes
20 times and a worker is killed; no request may fail, and /metrics must count what the
client received.

The policy lives in a directory laid out as the kubelet lays out a ConfigMap volume, and
changes by SIGHUP, by a rewrite of the file (the watch), by a `..data` swap, once to an
invalid version and once to another listen port. Version N adds the route /version/N
(and drops /version/N-1): before the next change, every worker is shown to serve N
(which worker answered a connection is read from the kernel, tests/tcpowners.py). The load
itself only uses routes every version has, so each of its requests has one right answer
whichever version a worker runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests import tcpowners
from tests.factories import claims, rsa_key, sign
from tests.functional.load_client import Killed, Load
from tests.metrics_parse import Scrape
from tests.procs import free_port, gateway_cmd, kill_group

WORKERS = 2
ISSUER = "https://load.test"
AUDIENCE = "load-api"
# The changes, in order ("kill" is not one: a worker is SIGKILLed there). SIGHUP
# changes rewrite the file and signal at once; rewrite, swap, invalid and listen are
# noticed by the watch (`invalid` is a rewrite, `listen` a swap).
SCHEDULE = (
    "rewrite", "sighup", "swap", "sighup", "rewrite", "swap", "invalid", "sighup", "listen", "swap",
    "kill", "sighup", "rewrite", "sighup", "swap", "rewrite", "sighup", "swap", "sighup", "rewrite", "swap",
)  # fmt: skip
# How long one change may take to be in force everywhere (a watch poll is 1 s; a
# listen change starts two workers, which may be slow on a loaded machine).
CHANGE_DEADLINE = 20.0


@dataclass
class Upstream:
    """A real aiohttp upstream that answers what it was sent, and remembers the ids of
    the requests it answered (X-Load-Id)."""

    answered: set[int] = field(default_factory=set)
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        answer: dict[str, Any]
        if path == "/upload":
            body = await request.read()
            answer = {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        elif path.startswith("/orders/"):
            answer = {"sub": request.headers.get("X-Auth-Subject")}
        else:
            answer = {"path": path}
        rid = request.headers.get("X-Load-Id")
        if rid is not None:
            self.answered.add(int(rid))
        return web.json_response(answer)


@asynccontextmanager
async def serving(upstream: Upstream) -> AsyncIterator[Upstream]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream.port = int(runner.addresses[0][1])
    try:
        yield upstream
    finally:
        await runner.cleanup()


class ConfigMap:
    """`root/<name>` -> `..data/<name>`, `..data` -> `..<version>`: an update writes a new
    version directory and swaps `..data` with one rename, as the kubelet does."""

    def __init__(self, root: Path, files: dict[str, bytes]) -> None:
        self.root = root
        self._files = dict(files)
        self._serial = 0
        root.mkdir()
        self._publish()
        for name in files:
            (root / name).symlink_to(Path("..data") / name)

    @property
    def policy(self) -> Path:
        return self.root / "policy.yaml"

    def swap(self, text: str) -> None:
        self._files["policy.yaml"] = text.encode()
        self._publish()

    def rewrite(self, text: str) -> None:
        """Write the policy file in place, through the links."""
        self.policy.write_text(text)

    def _publish(self) -> None:
        self._serial += 1
        version = self.root / f"..v{self._serial}"
        version.mkdir()
        for name, data in self._files.items():
            (version / name).write_bytes(data)
        link = self.root / "..data_tmp"
        link.symlink_to(version.name)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        link.rename(self.root / "..data")
        if old is not None:
            for item in (self.root / old).iterdir():
                item.unlink()
            (self.root / old).rmdir()


def policy(version: int, port: int, admin: int, upstream: int, *, valid: bool = True) -> str:
    u = f"http://127.0.0.1:{upstream}"
    # An unknown provider: refused when compiled (the YAML itself is fine).
    orders = "[local]" if valid else "[nobody]"
    return f"""\
listen: 127.0.0.1:{port}
admin: {{listen: 127.0.0.1:{admin}}}
server: {{workers: {WORKERS}, shutdown_timeout: 5s}}
identity: {{realm: load, claims: {{sub: X-Auth-Subject}}}}
providers:
  local:
    issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    algorithms: [RS256]
    keys: [{{pem_file: key.pem}}]
routes:
  - {{name: version-{version}, match: {{prefix: /version/{version}}}, upstream: "{u}", auth: public}}
  - {{name: public, match: {{prefix: /public}}, upstream: "{u}", auth: public}}
  - {{name: orders, match: {{prefix: /orders}}, upstream: "{u}", auth: {{any_of: {orders}}}}}
  - {{name: upload, match: {{path: /upload, methods: [POST]}}, upstream: "{u}", auth: public}}
"""


class Admin:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    async def _get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as client, client.get(self.url + path) as r:
            return r.status, await r.text()

    async def ready(self) -> bool:
        with contextlib.suppress(aiohttp.ClientConnectionError):
            return (await self._get("/readyz"))[0] == 200
        return False

    async def health(self) -> dict[str, Any]:
        status, text = await self._get("/healthz")
        assert status == 200
        answer: dict[str, Any] = json.loads(text)
        return answer

    async def metrics(self) -> Scrape:
        status, text = await self._get("/metrics")
        assert status == 200
        return Scrape(text)

    async def reloads(self) -> tuple[int, int]:
        """(successes, failures) so far."""
        scrape = await self.metrics()
        return (
            int(scrape.get("gateway_config_reloads_total", result="success")),
            int(scrape.get("gateway_config_reloads_total", result="failure")),
        )


async def until(what: str, check: Any, deadline: float = CHANGE_DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not await check():
        assert time.monotonic() < end, f"not within {deadline}s: {what}"
        await asyncio.sleep(0.05)


async def until_everywhere(load: Load, admin: Admin, port: int, serves: int, absent: int) -> None:
    """Every current worker answers /version/`serves` and 404 for /version/`absent`."""
    pids = set((await admin.health())["pids"])
    assert len(pids) == WORKERS
    confirmed: set[int] = set()
    end = time.monotonic() + CHANGE_DEADLINE
    while confirmed != pids:
        assert time.monotonic() < end, f"version {serves} not in force in {pids - confirmed}"
        # A new connection each time: the kernel gives it to one worker or another.
        conn = await load.connect(port)
        try:
            answer = await load.get(conn, f"/version/{serves}")
            # Asked after the request: by then the worker has accepted the connection.
            pid = tcpowners.owners((conn.port,), port, pids).get(conn.port)
            if answer.status == 200:
                gone = await load.get(conn, f"/version/{absent}")
                assert gone.status == 404, f"worker {pid} serves /version/{serves} and still /version/{absent}"
                if pid is not None:
                    confirmed.add(pid)
            else:
                assert answer.status == 404, answer
                assert pid not in confirmed, f"worker {pid} went back from version {serves}"
        finally:
            load.drop(conn)
        if confirmed != pids:
            await asyncio.sleep(0.02)


async def test_twenty_changes_and_a_killed_worker_under_load(tmp_path: Path) -> None:
    began = time.monotonic()
    key = rsa_key("load-1")
    tokens = {sign(key, claims(iss=ISSUER, aud=AUDIENCE, sub=f"user-{i}", ttl=600)): f"user-{i}" for i in range(4)}
    port, admin_port = free_port(), free_port()
    async with serving(Upstream()) as upstream:
        first = policy(0, port, admin_port, upstream.port).encode()
        cm = ConfigMap(tmp_path / "config", {"policy.yaml": first, "key.pem": key.public_pem()})
        admin = Admin(admin_port)
        # The access log apart: the supervisor's own lines (reloads, restarts) stay short to read.
        with (tmp_path / "access.log").open("wb") as out, (tmp_path / "gateway.log").open("wb") as err:
            proc = subprocess.Popen(
                gateway_cmd("run", "--config", str(cm.policy)),
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group: the workers go with it
            )
            try:
                await until("the gateway is ready", admin.ready)
                await _under_load(proc, cm, admin, port, upstream, tokens, began)
            finally:
                kill_group(proc)


async def _under_load(
    proc: subprocess.Popen[bytes],
    cm: ConfigMap,
    admin: Admin,
    port: int,
    upstream: Upstream,
    tokens: dict[str, str],
    began: float,
) -> None:
    load = Load(port, tokens)
    running = asyncio.ensure_future(load.run())
    version, successes, failures, killed = 0, 0, 0, 0
    timeline: list[str] = []
    try:
        await asyncio.sleep(0.5)
        for step in SCHEDULE:
            t0 = time.monotonic()
            if step == "kill":
                killed = await _kill_a_worker(load, admin, port)
                await until_everywhere(load, admin, port, serves=version, absent=version - 1)
                timeline.append(f"kill {time.monotonic() - t0:.1f}s")
                continue
            if step == "invalid":
                cm.rewrite(policy(version + 1, port, admin.port, upstream.port, valid=False))
                failures += 1
                await _until_reloads(admin, successes, failures)
                # The running policy stays in force, in every worker.
                await until_everywhere(load, admin, port, serves=version, absent=version + 1)
                timeline.append(f"invalid {time.monotonic() - t0:.1f}s")
                continue
            version += 1
            successes += 1
            old_port = port
            if step == "listen":
                port = free_port()
                load.next_port = port
            text = policy(version, port, admin.port, upstream.port)
            if step in ("swap", "listen"):
                cm.swap(text)
            else:
                cm.rewrite(text)
                if step == "sighup":
                    proc.send_signal(signal.SIGHUP)
            await _until_reloads(admin, successes, failures)
            await until_everywhere(load, admin, port, serves=version, absent=version - 1)
            if step == "listen":
                load.port = port
                await until(f"old port {old_port} refuses connections", functools.partial(_refused, old_port))
            timeline.append(f"{step} {time.monotonic() - t0:.1f}s")
        await asyncio.sleep(0.5)
    finally:
        load.stop.set()
        await asyncio.wait_for(running, 30)

    tally = load.tally
    lost_answered = [rid for rid, _ in tally.lost_on_killed if rid in upstream.answered]
    lost_partial = [rid for rid, received in tally.lost_on_killed if received]
    scrape = await admin.metrics()
    counted = sum(v for (name, _), v in scrape.samples.items() if name == "gateway_requests_total")
    print(
        f"\nload test: {time.monotonic() - began:.1f}s, {tally.responses} responses {dict(tally.kinds)},"
        f" {tally.connections} connections, moved to the new port {tally.moved},"
        f" told to close {tally.told_to_close}, GETs retried {tally.retried},"
        f" lost on the killed worker {len(tally.lost_on_killed)} (upstream had answered {len(lost_answered)},"
        f" part of a response came for {len(lost_partial)}),"
        f" killed worker held {killed} client connections; gateway counted {counted:.0f}\n"
        f"changes: {', '.join(timeline)}"
    )
    assert tally.failures == [], f"{tally.failed} requests failed"
    # It was a load: every kind of request, and the killed worker was serving some.
    assert min(tally.kinds[kind] for kind in ("public", "token", "upload")) > 1000, tally.kinds
    assert killed > 0
    assert (successes, failures) == (19, 1)
    assert await admin.reloads() == (successes, failures)
    assert (await admin.health())["restarts"] == 1
    assert scrape.get("gateway_worker_restarts_total") == 1
    # Every response the client received was counted once. A response the killed worker
    # had counted but not yet sent (it goes out at the end of the loop's batch,
    # proxy/coalesce.py) can only be one whose upstream answer came and whose client got
    # no byte of it: those are bounded by `lost_answered`.
    assert tally.responses <= counted <= tally.responses + len(lost_answered)
    # SIGTERM: every worker drains and the supervisor exits 0.
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 15) == 0


async def _until_reloads(admin: Admin, successes: int, failures: int) -> None:
    """Each change is one reload: the counts reach what is expected and no further."""

    async def reached() -> bool:
        now = await admin.reloads()
        assert now[0] <= successes, f"reloads {now}, expected {(successes, failures)}"
        assert now[1] <= failures, f"reloads {now}, expected {(successes, failures)}"
        return now == (successes, failures)

    await until(f"reloads (success, failure) = {(successes, failures)}", reached)


async def _kill_a_worker(load: Load, admin: Admin, port: int) -> int:
    """SIGKILL a worker; first SIGSTOP it, so the connections it holds can be read from
    /proc before it dies. Returns how many client connections it held."""
    health = await admin.health()
    victim = health["pids"][0]
    os.kill(victim, signal.SIGSTOP)
    ports = tcpowners.client_ports_of(victim, (port,))
    load.killed = Killed(frozenset(ports), time.monotonic())
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> bool:
        health = await admin.health()
        return health["restarts"] == 1 and health["workers"] == WORKERS and victim not in health["pids"]

    await until(f"worker {victim} replaced", replaced)
    return len(ports)


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()  # accepted still (a worker still drains): closed before any request
    return False
