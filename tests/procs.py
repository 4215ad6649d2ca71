"""Run the real `gateway` program as a child process, on free loopback ports."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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

    def rss_kib(self, field: str = "VmRSS") -> int:
        """Resident memory (or `VmHWM`, its peak) of the gateway process, in KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
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
        )
        gw = GatewayProcess(proc, port, admin_port)
        try:
            await _wait_ready(gw)
            yield gw
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)


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
