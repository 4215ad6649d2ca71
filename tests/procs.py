"""Child processes for tests: the real `gateway` program on free loopback ports, or Python code."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp


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


@asynccontextmanager
async def running_gateway(
    tmp_path: Path, routes_yaml: str, extra: str = "", env: dict[str, str] | None = None
) -> AsyncIterator[GatewayProcess]:
    """Start `python -m gateway run` and wait until /readyz answers; always reap it."""
    port, admin_port = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin_port}}}\n{extra}\nroutes:\n"
        + textwrap.indent(textwrap.dedent(routes_yaml), "  ")
    )
    with (tmp_path / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(
            gateway_cmd("run", "--config", str(config)),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: the workers are reaped with it
        )
        gw = GatewayProcess(proc, port, admin_port)
        try:
            await _wait_ready(gw)
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
    return [int(pid) for pid in text.split()]


async def _wait_ready(gw: GatewayProcess) -> None:
    async with aiohttp.ClientSession() as client:
        for _ in range(200):
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
