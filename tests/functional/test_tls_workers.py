"""TLS through the real program: `gateway run` with two workers sharing the TLS port.

Certificate rotation under load: clients keep opening new connections while the files
are rewritten in place; no request fails, and every worker moves to the new
certificate (its own poll, counted in its own cells). A bad replacement is refused by
every worker, which keeps serving the old one. curl, where installed, is one more
client (the Python `ssl` client covers the same ground everywhere)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.certs import Authority
from tests.conftest import Upstream
from tests.functional.workers_env import WORKERS, logged, routes, until
from tests.metrics_parse import scrape
from tests.procs import GatewayProcess, running_gateway
from tests.rawhttp import parse_response

TLS = "tls: {cert_file: tls.crt, key_file: tls.key}\n"


def der_of(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


async def one_request(port: int, context: ssl.SSLContext) -> tuple[int, bytes]:
    """GET /public/tls on a new TLS connection: the status, and the certificate the
    gateway presented on it (DER)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
    try:
        cert = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(b"GET /public/tls HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
    return parse_response(data).status, cert


class Load:
    """Clients asking on new connections, one after another each, until stopped: every
    outcome (a status, or the exception that ended the attempt) and certificate seen."""

    def __init__(self, port: int, context: ssl.SSLContext, clients: int = 3) -> None:
        self.port, self.context = port, context
        self.outcomes: list[int | str] = []
        self.certs: list[bytes] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._run()) for _ in range(clients)]

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, cert = await one_request(self.port, self.context)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                self.outcomes.append(type(exc).__name__)
            else:
                self.outcomes.append(status)
                self.certs.append(cert)
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def tls_metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    return (await scrape(gw.admin_port)).get(f"gateway_tls_{name}", listener="proxy", **labels)


async def test_rotation_under_load_fails_no_request_and_every_worker_moves(tmp_path: Path, upstream: Upstream) -> None:
    ca = Authority()
    ca.server().write(tmp_path / "tls.crt", tmp_path / "tls.key")
    first = der_of((tmp_path / "tls.crt").read_bytes())
    context = ssl.create_default_context(cadata=ca.pem.decode())
    async with running_gateway(tmp_path, routes(upstream), WORKERS + TLS) as gw:
        load = Load(gw.port, context)
        try:
            await until(lambda: len(load.outcomes) >= 20, 10)
            new = ca.server()
            # In place, the certificate then the key, as a tool without atomic renames does.
            (tmp_path / "tls.crt").write_bytes(new.cert_pem)
            (tmp_path / "tls.key").write_bytes(new.key_pem)
            # Both workers (each polls on its own) have loaded it...
            await until(lambda: _sum_reloads(gw, "success", 2), 15)
            # ...and every new connection from then on presents it.
            seen = len(load.certs)
            await until(lambda: len(load.certs) >= seen + 30, 15)
        finally:
            await load.stop()
        assert set(load.outcomes) == {200}, [o for o in load.outcomes if o != 200][:5]
        assert first in load.certs
        assert set(load.certs[seen:]) == {der_of(new.cert_pem)}
        scraped = await scrape(gw.admin_port)
        assert scraped.get("gateway_tls_certificate_reloads_total", listener="proxy", result="failure") == 0
        expiry = new.cert.not_valid_after_utc.timestamp()
        for worker in ("0", "1"):
            assert scraped.get("gateway_tls_certificate_expiry_seconds", listener="proxy", worker=worker) == expiry
        handshakes = scraped.get("gateway_tls_handshakes_total", listener="proxy", version="1.3")
        assert handshakes >= len(load.certs)
        assert "TLS certificate reloaded: subject CN=localhost" in gw.log_text()


async def _sum_reloads(gw: GatewayProcess, result: str, count: int) -> bool:
    return await tls_metric(gw, "certificate_reloads_total", result=result) >= count


async def test_a_bad_replacement_is_refused_by_every_worker_and_the_old_certificate_stays(
    tmp_path: Path, upstream: Upstream
) -> None:
    ca = Authority()
    ca.server().write(tmp_path / "tls.crt", tmp_path / "tls.key")
    first = der_of((tmp_path / "tls.crt").read_bytes())
    context = ssl.create_default_context(cadata=ca.pem.decode())
    async with running_gateway(tmp_path, routes(upstream), WORKERS + TLS) as gw:
        (tmp_path / "tls.key").write_bytes(ca.server().key_pem)  # another certificate's key
        await until(lambda: _sum_reloads(gw, "failure", 2), 15)
        await logged(gw, "new TLS files refused, the certificate in force stays", 2)
        assert "PRIVATE KEY" not in gw.log_text()
        for _ in range(10):
            status, cert = await one_request(gw.port, context)
            assert (status, cert) == (200, first)
        assert await tls_metric(gw, "certificate_reloads_total", result="success") == 0


CLIENTS = ["python"] + (["curl"] if shutil.which("curl") else [])


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_tls_client_is_served_and_plain_http_is_refused(
    tmp_path: Path, upstream: Upstream, client: str
) -> None:
    ca = Authority()
    ca.server().write(tmp_path / "tls.crt", tmp_path / "tls.key")
    ca.write(tmp_path / "ca.pem")
    async with running_gateway(tmp_path, routes(upstream), WORKERS + TLS) as gw:
        if client == "curl":
            url = f"https://localhost:{gw.port}/public/x"
            common = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"]
            resolve = ["--resolve", f"localhost:{gw.port}:127.0.0.1"]
            ok = await asyncio.to_thread(
                subprocess.run, [*common, *resolve, "--cacert", str(tmp_path / "ca.pem"), url],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert ok.stdout == "200", ok.stderr
            plain = await asyncio.to_thread(
                subprocess.run, [*common, f"http://127.0.0.1:{gw.port}/public/x"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert plain.returncode != 0
            assert plain.stdout == "000"
        else:
            status, _ = await one_request(gw.port, ssl.create_default_context(cadata=ca.pem.decode()))
            assert status == 200
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(b"GET /public/x HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
            assert not await asyncio.wait_for(reader.read(-1), 5)
            writer.close()
        assert upstream.seen
        assert all(s.headers["x-forwarded-proto"] == ["https"] for s in upstream.seen)
        await until(lambda: _failures(gw, "not_tls"), 5)


async def _failures(gw: GatewayProcess, reason: str) -> bool:
    return await tls_metric(gw, "handshake_failures_total", reason=reason) >= 1


@pytest.mark.parametrize("breakage", ["wrong key", "deleted"])
async def test_a_worker_restarted_while_the_tls_files_are_bad_serves_the_pair_the_policy_was_loaded_with(
    tmp_path: Path, upstream: Upstream, breakage: str
) -> None:
    """The files go bad while the gateway runs (every worker refuses the rotation and
    keeps its certificate), then a worker dies: the one started in its place serves the
    pair the supervisor checked, from the policy's snapshot, rather than fail to start
    (which stops the whole gateway, found by review); fixed files are then taken by a
    rotation as usual."""
    ca = Authority()
    ca.server().write(tmp_path / "tls.crt", tmp_path / "tls.key")
    first = der_of((tmp_path / "tls.crt").read_bytes())
    context = ssl.create_default_context(cadata=ca.pem.decode())
    async with running_gateway(tmp_path, routes(upstream), "server: {workers: 1}\n" + TLS) as gw:
        (pid,) = (await gw.health())["pids"]
        if breakage == "deleted":
            (tmp_path / "tls.key").unlink()
            await logged(gw, "TLS file missing", seconds=6)
        else:
            (tmp_path / "tls.key").write_bytes(ca.server().key_pem)  # another certificate's key
            await until(lambda: _sum_reloads(gw, "failure", 1), 15)
        os.kill(pid, signal.SIGKILL)

        async def restarted() -> bool:
            health = await gw.health()
            return bool(health["workers"] == 1 and pid not in health["pids"])

        await until(restarted, 15)
        await logged(gw, "TLS files unusable (", seconds=5)
        assert gw.proc.poll() is None
        assert await one_request(gw.port, context) == (200, first)
        new = ca.server()
        new.write(tmp_path / "tls.crt", tmp_path / "tls.key")
        await until(lambda: _sum_reloads(gw, "success", 1), 15)
        assert await one_request(gw.port, context) == (200, der_of(new.cert_pem))
    log = gw.log_text()
    assert "PRIVATE KEY" not in log
    assert "worker cannot start" not in log
