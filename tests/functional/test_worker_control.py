"""One worker process driven over its control channel, as the supervisor drives it: a
real `python -m gateway.runtime.worker` on a real listening socket and socket pair."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.policy import load_policy
from gateway.policy.compile import CompiledPolicy
from gateway.runtime.control import Channel, Message
from tests.conftest import Upstream
from tests.factories import IdentityProvider
from tests.functional.workers_env import corp, routes, until


def _wire(policy: CompiledPolicy) -> Message:
    return {"source": policy.source, "snapshot": policy.snapshot.to_wire()}


@asynccontextmanager
async def worker(tmp_path: Path, policy: CompiledPolicy) -> AsyncIterator[Channel]:
    """A started worker (accepting nothing) and the supervisor's end of its channel."""
    listen = socket.socket()
    listen.bind(("127.0.0.1", 0))
    listen.listen()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with (tmp_path / "worker.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.runtime.worker", "--listen-fd", str(listen.fileno())]
            + ["--control-fd", str(theirs.fileno()), "--name", "0", "--metrics-file", str(tmp_path / "w.cells")],
            pass_fds=(listen.fileno(), theirs.fileno()),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    theirs.close()
    listen.close()
    channel = await Channel.open(ours)
    serving = asyncio.ensure_future(channel.serve(lambda _: None))
    try:
        answer = await channel.request({"op": "start", **_wire(policy), "accept": False}, within=30)
        assert answer["op"] == "serving"
        yield channel
    finally:
        channel.close()  # its end of file: the worker stops
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        try:
            assert await asyncio.to_thread(proc.wait, 10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def policy_file(path: Path, text: str) -> CompiledPolicy:
    path.write_text(f"listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\n{text}")
    return load_policy(str(path))


async def test_an_abort_stops_a_prepare_under_way(tmp_path: Path, upstream: Upstream, idp: IdentityProvider) -> None:
    """The supervisor aborts a reload while a worker still waits for the new keys (it
    gave up waiting, or another worker failed): that worker's new key sources stop, and
    it does not go on fetching from the IdP until its own reload_timeout."""
    idp.fail = True  # the JWKS endpoint answers 500: the new sources retry every 100 ms
    running = policy_file(tmp_path / "a.yaml", "routes:\n  " + routes(upstream))
    new = policy_file(
        tmp_path / "b.yaml",
        "server: {reload_timeout: 60s}\n"
        + corp(idp.issuer, f'{{jwks_url: "{idp.url}/jwks"}}', "{retry_interval: 100ms}")
        + "routes:\n  "
        + "\n  ".join(routes(upstream, providers=True).splitlines()),
    )
    async with worker(tmp_path, running) as channel:
        preparing = asyncio.ensure_future(channel.request({"op": "prepare", "gen": 1, **_wire(new)}, within=70))
        await until(lambda: idp.jwks_hits >= 3, 10)  # fetching, and retrying
        assert (await channel.request({"op": "abort", "gen": 1}, within=5))["op"] == "aborted"
        answer = await preparing
        assert answer == {"op": "prepared", "ok": False, "error": "aborted", "reply": answer["reply"]}
        await asyncio.sleep(0.3)  # a fetch in flight as it stopped may still land
        hits = idp.jwks_hits
        await asyncio.sleep(1.0)
        assert idp.jwks_hits == hits  # ten retries a second, had the sources gone on
        # The worker serves on, and a later commit of that generation finds nothing.
        assert (await channel.request({"op": "status"}, within=5))["op"] == "status"
        assert (await channel.request({"op": "commit", "gen": 1}, within=5))["ok"] is False
