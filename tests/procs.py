"""Child processes for tests: the real `gateway` program on free loopback ports, or Python code."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests import tcpowners
from tests.rawhttp import KeptAlive, get


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    config: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        """The worker processes' ids (the supervisor's children)."""
        return worker_pids(self.proc.pid)

    def rss_kib(self, field: str = "VmRSS") -> int:
        """Resident memory (or `VmHWM`, its peak) of the one worker process, in KiB."""
        (pid,) = self.workers()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"{field} not in /proc status")

    def log_text(self) -> str:
        """Everything it wrote so far: the access log (stdout) and its stderr."""
        return self.log.read_text(errors="replace")

    async def health(self) -> dict[str, Any]:
        """What /healthz reports."""
        async with aiohttp.ClientSession() as client, client.get(f"http://127.0.0.1:{self.admin_port}/healthz") as r:
            assert r.status == 200
            answer: dict[str, Any] = json.loads(await r.text())
            return answer

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        """/readyz: its status and its JSON body."""
        async with aiohttp.ClientSession() as client, client.get(f"http://127.0.0.1:{self.admin_port}/readyz") as r:
            answer: dict[str, Any] = json.loads(await r.text())
            return r.status, answer


@asynccontextmanager
async def running_gateway(
    tmp_path: Path,
    routes_yaml: str,
    extra: str = "",
    env: dict[str, str] | None = None,
    *,
    ready: bool = True,
) -> AsyncIterator[GatewayProcess]:
    """Start `python -m gateway run` and wait until /readyz answers (or, if not `ready`,
    until /healthz shows every worker serving, keys or not); always reap it."""
    port, admin_port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin_port}}}\n{extra}\nroutes:\n"
        + textwrap.indent(textwrap.dedent(routes_yaml), "  ")
    )
    async with gateway_process(config, port, admin_port, tmp_path / "gateway.log", env, ready=ready) as gw:
        yield gw


@asynccontextmanager
async def gateway_process(
    config: Path,
    port: int,
    admin_port: int,
    log: Path,
    env: dict[str, str] | None = None,
    *,
    ready: bool = True,
) -> AsyncIterator[GatewayProcess]:
    """`running_gateway` for a policy file the caller wrote (listening on `port` and
    `admin_port`): stdout and stderr go to `log`."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            gateway_cmd("run", "--config", str(config)),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: the workers are reaped with it
        )
        gw = GatewayProcess(proc, port, admin_port, config, log)
        try:
            await (_wait_ready(gw) if ready else _wait_serving(gw))
            yield gw
        finally:
            kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a gateway started with `start_new_session` and every worker it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def worker_pids(supervisor: int) -> list[int]:
    try:
        text = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text()
    except FileNotFoundError:
        return []
    # A worker that exited stays a child (a zombie) until the supervisor reaps it.
    return [int(pid) for pid in text.split() if alive(int(pid))]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (exited, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # pid (comm) state ...: comm may hold spaces and parentheses, the state follows the last ")".
    return stat.rpartition(")")[2].split()[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live processes (zombies left out) in process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # After the comm: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def connection_owners(pids: Iterable[int], server_port: int) -> dict[int, int]:
    """Which process holds the server side of each TCP connection to `server_port`, as
    {the client's local port: pid} (read from the kernel: tests/tcpowners.py)."""
    return tcpowners.owners(None, server_port, pids)


def local_port(conn: KeptAlive) -> int:
    return int(conn.writer.get_extra_info("sockname")[1])


async def spread_connections(
    gw: GatewayProcess, count: int = 20, request: bytes = get("/", close=False), expect: int = 200, tries: int = 10
) -> list[tuple[KeptAlive, int]]:
    """`count` keep-alive connections, each with `request` answered `expect`, and the
    pid of the worker that accepted each; retried until every worker holds at least one
    (the split is never asserted). The caller closes them.

    Batches alternate: all opened at once, then one at a time 10 ms apart. Workers
    accept one connection per wakeup from one shared queue, so both kinds usually
    spread; on a busy machine one worker may still be the only one awake for a while."""
    workers = gw.workers()
    for attempt in range(tries):
        if attempt % 2 == 0:
            conns = list(await asyncio.gather(*(KeptAlive.open(gw.port) for _ in range(count))))
        else:
            conns = []
            for _ in range(count):
                conns.append(await KeptAlive.open(gw.port))
                await asyncio.sleep(0.01)
        try:
            responses = await asyncio.gather(*(c.send(request) for c in conns))
            assert [r.status for r in responses] == [expect] * count
            owners = connection_owners(workers, gw.port)
            found = [(c, owners.get(local_port(c), 0)) for c in conns]
            assert all(pid in workers for _, pid in found), (found, workers)
            if {pid for _, pid in found} == set(workers):
                return found
        except BaseException:
            await asyncio.gather(*(c.close() for c in conns))
            raise
        await asyncio.gather(*(c.close() for c in conns))
    raise AssertionError(f"in {tries} batches of {count} connections, some of the workers {workers} got none")


async def _wait_ready(gw: GatewayProcess) -> None:
    async with aiohttp.ClientSession() as client:
        for _ in range(600):  # 30 s: a supervisor and its workers start slowly on a busy machine
            if gw.proc.poll() is not None:
                raise AssertionError(f"gateway exited early with {gw.proc.returncode}")
            try:
                async with client.get(f"http://127.0.0.1:{gw.admin_port}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("gateway did not become ready")


async def _wait_serving(gw: GatewayProcess) -> None:
    for _ in range(200):
        if gw.proc.poll() is not None:
            raise AssertionError(f"gateway exited early with {gw.proc.returncode}")
        with contextlib.suppress(aiohttp.ClientConnectionError):
            health = await gw.health()
            if health["workers"] == health["workers_configured"]:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway's workers did not all serve")


@contextmanager
def python_child(code: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A Python child importing this checkout's `gateway`, stdin and stdout pipes;
    killed if still running at the end."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-c", textwrap.dedent(code), *args]
    with subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
