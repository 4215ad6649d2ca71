"""Several worker processes behind one supervisor, through real processes and sockets:
connections spread, a killed worker is replaced, a worker that cannot start stops the
gateway, SIGTERM drains every worker, readiness waits for every worker's keys, and
revocations and the unknown-kid cooldown hold per worker.

Which worker served a connection is read from /proc (`tests.procs.connection_owners`,
through the `spread` fixture): the worker whose fd table holds the server side of the
client's TCP connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import Upstream
from tests.factories import IdentityProvider, SigningKey, claims, jwks, rsa_key, sign, write
from tests.functional.test_api_tokens import _payload, cli, issue, provider
from tests.functional.workers_env import (
    REFUSED,
    WORKERS,
    Spread,
    answer,
    corp,
    logged,
    replace_file,
    routes,
    until,
)
from tests.metrics_parse import scrape
from tests.procs import (
    GatewayProcess,
    alive,
    free_port,
    gateway_cmd,
    gateway_process,
    group_members,
    kill_group,
    running_gateway,
)
from tests.rawhttp import KeptAlive, get

ISS = "https://files.test"


async def test_connections_land_on_more_than_one_worker(tmp_path: Path, upstream: Upstream, spread: Spread) -> None:
    async with running_gateway(tmp_path, routes(upstream), WORKERS) as gw:
        workers = gw.workers()
        assert len(workers) == 2
        health = await gw.health()
        assert health == {"status": "ok", "workers": 2, "workers_configured": 2, "restarts": 0, "pids": health["pids"]}
        assert sorted(health["pids"]) == sorted(workers)
        conns = await spread(gw, 20, get("/public/x", close=False))
        assert len({pid for _, pid in conns}) > 1
        # Each connection stays with its worker: further requests on it are answered.
        responses = await asyncio.gather(*(c.send(get("/public/y", close=False)) for c, _ in conns))
        assert {r.status for r in responses} == {200}


async def test_a_killed_worker_is_replaced_while_the_others_keep_answering(
    tmp_path: Path, upstream: Upstream, spread: Spread
) -> None:
    async with running_gateway(tmp_path, routes(upstream), WORKERS) as gw:
        before = (await gw.health())["pids"]
        conns = await spread(gw, 16, get("/public/x", close=False))
        victim = conns[0][1]
        slot = before.index(victim)
        stop = asyncio.Event()
        killed: list[float] = []

        async def keep_asking(conn: KeptAlive) -> tuple[int, BaseException | None]:
            """Requests on one kept-alive connection: how many were answered after the
            kill, and the connection error that ended it (None if none did)."""
            after = 0
            while not stop.is_set():
                try:
                    response = await conn.send(get("/public/k", close=False), wait=5)
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    return after, exc
                assert response.status == 200
                after += bool(killed)
                await asyncio.sleep(0.01)
            return after, None

        async def fresh_connections() -> tuple[int, list[float]]:
            """Requests on new connections: how many were answered after the kill, and
            when a connection ended unanswered."""
            after, lost = 0, []
            while not stop.is_set():
                status = await answer(gw.port, get("/public/f"))
                if status is None:
                    lost.append(time.monotonic())
                else:
                    assert status == 200
                    after += bool(killed)
            return after, lost

        async def replaced() -> bool:
            health = await gw.health()
            return bool(health["restarts"] == 1 and health["workers"] == 2 and victim not in health["pids"])

        kept = [asyncio.ensure_future(keep_asking(c)) for c, _ in conns]
        fresh = [asyncio.ensure_future(fresh_connections()) for _ in range(4)]
        try:
            await asyncio.sleep(0.3)
            killed.append(time.monotonic())
            os.kill(victim, signal.SIGKILL)
            await until(replaced, 10)
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await asyncio.wait([*kept, *fresh])
        kept_results = [task.result() for task in kept]
        fresh_results = [task.result() for task in fresh]

        for (_, owner), (after, error) in zip(conns, kept_results, strict=True):
            if owner == victim:
                assert error is not None  # its connections went with it
            else:
                assert error is None, error  # the survivor's never missed a beat
                assert after > 0
        for after, lost in fresh_results:
            assert after > 0
            # At most the one request in flight when the kill came, on the victim.
            assert len(lost) <= 1
            assert all(0 <= t - killed[0] < 1.0 for t in lost)

        health = await gw.health()
        assert health["restarts"] == 1
        assert health["pids"][1 - slot] == before[1 - slot]  # the other slot kept its worker
        assert health["pids"][slot] not in before
        assert sorted(gw.workers()) == sorted(health["pids"])
        assert not alive(victim)
        # The new worker serves.
        await spread(gw, 16, get("/public/x", close=False))
        assert f"worker {slot} (pid {victim}) died (killed by signal 9); restarting it in 0.1s" in gw.log_text()
        # Dying again soon after its start, it waits twice as long.
        second = health["pids"][slot]
        os.kill(second, signal.SIGKILL)
        await until(lambda: _restarted(gw, 2), 10)
        assert f"worker {slot} (pid {second}) died (killed by signal 9); restarting it in 0.2s" in gw.log_text()
        metrics = await scrape(gw.admin_port)
        assert metrics.get("gateway_worker_restarts_total") == 2
        assert metrics.get("gateway_workers") == 2


async def _restarted(gw: GatewayProcess, times: int) -> bool:
    health = await gw.health()
    return bool(health["restarts"] == times and health["workers"] == 2)


async def test_a_worker_restarted_while_its_key_file_is_bad_keeps_the_gateway_up_and_trusts_no_key_of_it(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey
) -> None:
    """A key file broken while the gateway runs (the running worker keeps its last good
    keys) and a worker restarted meanwhile: the gateway goes on (it once stopped), and
    the restarted worker trusts no key of that file until it is fixed, since the copy
    it was given may hold keys retired since (503 keys_unavailable, not ready); fixed,
    it serves."""
    pem = tmp_path / "key.pem"
    write(pem, rsa.public_pem())
    extra = "server: {workers: 1, watch: false, reload_timeout: 1s}\n" + corp(ISS, f'{{pem_file: "{pem}"}}')
    token = get("/orders", f"Authorization: Bearer {sign(rsa, claims(ISS), kid=None)}")
    async with running_gateway(tmp_path, routes(upstream, providers=True), extra) as gw:
        assert await answer(gw.port, token) == 200
        (pid,) = (await gw.health())["pids"]
        pem.write_text("not a key\n")
        await logged(gw, "is unusable (", seconds=6)
        assert await answer(gw.port, token) == 200  # the running worker: its last good keys
        os.kill(pid, signal.SIGKILL)

        async def restarted() -> bool:
            health = await gw.health()
            return bool(health["workers"] == 1 and pid not in health["pids"])

        await until(restarted, 15)
        assert gw.proc.poll() is None
        await logged(gw, "its keys are not trusted here until it is fixed")
        await until(lambda: _answers(gw.port, token, 503), 5)
        status, body = await gw.readiness()
        assert status == 503
        assert body["waiting_for"] == ["worker 0: keys of provider 'corp'"]
        assert await answer(gw.port, get("/public/x")) == 200  # the rest is served
        pem.write_bytes(rsa.public_pem())  # fixed: read at the next poll
        await until(lambda: _answers(gw.port, token, 200), 6)
        assert (await gw.readiness())[0] == 200
    log = gw.log_text()
    assert "could not start" not in log
    assert "worker cannot start" not in log


async def _answers(port: int, request: bytes, status: int) -> bool:
    return await answer(port, request) == status


async def test_a_worker_restarted_after_the_revocation_list_appeared_and_was_lost_does_not_start(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey
) -> None:
    """No list when the policy was validated (nothing revoked yet); `gateway tokens
    revoke` creates it later, and it is then lost (the running worker keeps its list).
    A restarted worker must not revoke nothing: the supervisor noted the list existed,
    so the restart refuses, and the gateway stops, loudly (found by review)."""
    pem, revoked = tmp_path / "key.pem", tmp_path / "revoked.json"
    write(pem, rsa.public_pem())
    extra = "server: {workers: 1}\n" + corp(ISS, f'{{pem_file: "{pem}"}}') + f'    revocation_file: "{revoked}"\n'
    request = get("/orders", f"Authorization: Bearer {sign(rsa, claims(ISS, jti='t-1'), kid=None)}")
    async with running_gateway(tmp_path, routes(upstream, providers=True), extra) as gw:
        assert await answer(gw.port, request) == 200
        revoked.write_text('{"revoked": [{"jti": "t-1"}]}')
        await until(lambda: _answers(gw.port, request, 401), 5)
        await asyncio.sleep(1.5)  # the supervisor's look for lists
        revoked.unlink()
        await logged(gw, "the file has disappeared", seconds=5)
        assert await answer(gw.port, request) == 401
        (pid,) = (await gw.health())["pids"]
        os.kill(pid, signal.SIGKILL)
        assert await asyncio.to_thread(gw.proc.wait, 15) == 1
    assert "the revocation list is gone (this provider has had one)" in gw.log_text()


async def test_a_reload_after_the_revocation_list_disappeared_is_refused(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey
) -> None:
    """The list disappears (the running workers keep their last list); a reload then
    must not swap in watchers that read "no list" (found by review: every revoked
    token was accepted again). It is refused, and the tokens stay revoked."""
    pem, revoked = tmp_path / "key.pem", tmp_path / "revoked.json"
    write(pem, rsa.public_pem())
    revoked.write_text('{"revoked": [{"jti": "t-1"}]}')
    provider = corp(ISS, f'{{pem_file: "{pem}"}}') + f'    revocation_file: "{revoked}"\n'
    extra = "server: {workers: 2, watch: false}\n" + provider
    request = get("/orders", f"Authorization: Bearer {sign(rsa, claims(ISS, jti='t-1'), kid=None)}")
    async with running_gateway(tmp_path, routes(upstream, providers=True), extra) as gw:
        assert await answer(gw.port, request) == 401
        revoked.unlink()
        await logged(gw, "the file has disappeared", 2, 5)
        gw.proc.send_signal(signal.SIGHUP)
        await logged(gw, REFUSED)
        assert "the revocation list is gone" in gw.log_text()
        assert {await answer(gw.port, request) for _ in range(6)} == {401}


async def test_a_worker_restarted_after_every_key_was_retired_trusts_none(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey
) -> None:
    """Every key retired (a JWKS emptied on purpose): the running worker refuses every
    token, the reload is refused (a policy needs a key), so the snapshot in force still
    holds the retired key. A restarted worker reads the file before it serves and
    trusts that key not once (found by review: it did, until its first poll)."""
    path = tmp_path / "jwks.json"
    write(path, json.dumps(jwks(rsa)))
    extra = "server: {workers: 1}\n" + corp(ISS, f'{{jwks_file: "{path}"}}')
    token = get("/orders/1", f"Authorization: Bearer {sign(rsa, claims(ISS))}")
    async with running_gateway(tmp_path, routes(upstream, providers=True), extra) as gw:
        assert await answer(gw.port, token) == 200
        replace_file(path, json.dumps({"keys": []}))
        await logged(gw, "now holds no keys", seconds=6)
        await logged(gw, REFUSED, seconds=6)
        assert await answer(gw.port, token) == 503
        (pid,) = (await gw.health())["pids"]
        os.kill(pid, signal.SIGKILL)
        statuses = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4:
            statuses.append(await answer(gw.port, token))
            await asyncio.sleep(0.02)
        assert (await gw.health())["pids"] != [pid]  # restarted meanwhile
        assert 200 not in statuses


async def test_workers_do_not_reread_key_files_that_did_not_change(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey
) -> None:
    """Each worker compares the file with the snapshot's bytes when it starts: the same
    bytes keep the keys (and what was verified with them); nothing is logged."""
    pem = tmp_path / "key.pem"
    write(pem, rsa.public_pem())
    # Unwatched: the workers' own polls of the file are all that reads it again.
    extra = "server: {workers: 2, watch: false}\n" + corp(ISS, f'{{pem_file: "{pem}"}}')
    async with running_gateway(tmp_path, routes(upstream, providers=True), extra) as gw:
        await asyncio.sleep(2.5)  # past a poll of the file
        pem.write_bytes(pem.read_bytes())  # rewritten the same: a new stamp
        await asyncio.sleep(2.5)
        assert "reloaded 1 key(s)" not in gw.log_text()
        pem.write_bytes(rsa_key("other").public_pem())  # a real change is read
        await logged(gw, "reloaded 1 key(s)", count=2, seconds=5)


async def test_a_worker_restarted_after_a_configmap_swap_reads_the_current_revocation_list(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey
) -> None:
    """The revocation list beside the policy in a ConfigMap; a new version (with a
    broken key file) is swapped in and refused, and the kubelet deletes the old
    directory. A worker restarted then compiles the snapshot in force, but reads the
    revocation list where the policy file is now (found by review: it read the deleted
    directory's, found none and revoked nothing)."""
    port, admin_port = free_port(), free_port()
    mount = tmp_path / "config"
    mount.mkdir()

    def version(name: str, pem: bytes, revoked: str) -> None:
        data = mount / name
        data.mkdir()
        (data / "key.pem").write_bytes(pem)
        (data / "revoked.json").write_text(json.dumps({"revoked": [{"jti": revoked}]}))
        text = (
            f"listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin_port}}}\nserver: {{workers: 1}}\n"
            + corp(ISS, "{pem_file: key.pem}")
            + "    revocation_file: revoked.json\n"
            + "routes:\n"
            + "".join(f"  {line}\n" for line in routes(upstream, providers=True).splitlines())
        )
        write(data / "policy.yaml", text)

    version("..2026_a", rsa.public_pem(), "t-1")
    os.symlink("..2026_a", mount / "..data")
    for name in ("policy.yaml", "key.pem", "revoked.json"):
        os.symlink(f"..data/{name}", mount / name)

    def token(jti: str) -> bytes:
        return get("/orders/1", f"Authorization: Bearer {sign(rsa, claims(ISS, jti=jti), kid=None)}")

    async with gateway_process(mount / "policy.yaml", port, admin_port, tmp_path / "gateway.log") as gw:
        assert await answer(port, token("t-1")) == 401
        assert await answer(port, token("t-2")) == 200
        version("..2026_b", b"not a key\n", "t-2")  # refused; it also revokes t-2
        os.symlink("..2026_b", mount / "..data_tmp")
        os.rename(mount / "..data_tmp", mount / "..data")
        shutil.rmtree(mount / "..2026_a")  # as the kubelet does
        await logged(gw, REFUSED)
        (pid,) = (await gw.health())["pids"]
        os.kill(pid, signal.SIGKILL)

        async def restarted() -> bool:
            health = await gw.health()
            return bool(health["workers"] == 1 and pid not in health["pids"])

        await until(restarted, 15)
        assert await answer(port, token("t-2")) == 401  # the list in the directory of now
        assert await answer(port, token("t-3")) == 200


@pytest.mark.parametrize("broken", ["rewritten", "deleted"])
async def test_a_worker_that_cannot_start_again_stops_the_gateway(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey, broken: str
) -> None:
    """A revocation list is read as a worker starts, never from a snapshot (an old list
    would let revoked tokens through): one broken since, or gone since the policy in
    force was validated, stops the restart, and the gateway with it, rather than a
    restart loop or a worker without it."""
    pem, revoked = tmp_path / "key.pem", tmp_path / "revoked.json"
    write(pem, rsa.public_pem())
    revoked.write_text('{"revoked": [{"jti": "t-0"}]}')
    provider = corp(ISS, f'{{pem_file: "{pem}"}}') + f'    revocation_file: "{revoked}"\n'
    extra = "server: {workers: 2, watch: false}\n" + provider
    async with running_gateway(tmp_path, routes(upstream, providers=True), extra) as gw:
        token = sign(rsa, claims(ISS, jti="t-1"), kid=None)
        assert await answer(gw.port, get("/orders", f"Authorization: Bearer {token}")) == 200
        pids = (await gw.health())["pids"]
        if broken == "deleted":
            revoked.unlink()
        else:
            revoked.write_text("not a list\n")
        t0 = time.monotonic()
        os.kill(pids[0], signal.SIGKILL)
        code = await asyncio.to_thread(gw.proc.wait, 15)
        took = time.monotonic() - t0
        assert code == 1
        assert took < 5
        assert group_members(gw.proc.pid) == []
        assert not any(alive(pid) for pid in pids)
    log = gw.log_text()
    # Its own exit code (EXIT_START), not a kill by the supervisor while it exited.
    assert "gateway: worker 0 could not start (exit code 3)" in log
    assert f"worker 0 (pid {pids[0]}) died (killed by signal 9); restarting it in 0.1s" in log
    # One restart tried, no loop.
    assert log.count("died (") == 1
    assert log.count("restarting it") == 1
    assert log.count("worker cannot start") == 1
    assert "gateway: worker cannot start: invalid policy" in log
    assert "providers.corp.revocation_file" in log
    if broken == "deleted":
        assert "the revocation list is gone (this provider has had one)" in log


@pytest.mark.parametrize("busy_one", ["listen", "admin"])
def test_a_busy_port_stops_the_start_and_leaves_no_worker(tmp_path: Path, busy_one: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        listen, admin = (taken, 0) if busy_one == "listen" else (0, taken)
        config = tmp_path / "gateway.yaml"
        config.write_text(
            f"listen: 127.0.0.1:{listen}\nadmin: {{listen: 127.0.0.1:{admin}}}\n{WORKERS}routes:\n"
            "  - {name: x, match: {prefix: /public}, upstream: 'http://127.0.0.1:9', auth: public}\n"
        )
        proc = subprocess.Popen(
            gateway_cmd("run", "--config", str(config)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=20)
        finally:
            kill_group(proc)
    assert proc.returncode == 1
    stderr = err.decode()
    # One line naming the listener, its address and the cause, and nothing after it
    # (no traceback, no asyncio "Unclosed client session").
    which = "public listener" if busy_one == "listen" else "admin listener"
    assert stderr.strip().splitlines() == [
        f"gateway: cannot start the {which} 127.0.0.1:{taken}: the address is already in use "
        "(another process listens there; `ss -ltnp` shows which)"
    ]
    assert "serving" not in stderr  # no worker was started
    assert group_members(proc.pid) == []


async def test_sigterm_finishes_the_request_in_flight_on_each_worker(
    tmp_path: Path, upstream: Upstream, spread: Spread
) -> None:
    arrived = 0

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal arrived
        arrived += 1
        await asyncio.sleep(1.0)
        return web.Response(text="slow and done")

    upstream.routes["/public/slow"] = slow
    async with running_gateway(tmp_path, routes(upstream), WORKERS) as gw:
        pids = gw.workers()
        conns = await spread(gw, 12, get("/public/x", close=False))
        one_each = [next(c for c, pid in conns if pid == worker) for worker in pids]
        in_flight = [asyncio.ensure_future(c.send(get("/public/slow", close=False))) for c in one_each]
        await until(lambda: arrived == 2, 5)
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        responses = await asyncio.gather(*in_flight)
        assert [r.status for r in responses] == [200, 200]
        assert [r.body for r in responses] == [b"slow and done"] * 2
        assert [r.headers["Connection"] for r in responses] == ["close", "close"]  # draining
        code = await asyncio.to_thread(gw.proc.wait, 10)
        assert code == 0
        # The slow requests, then at most a second for the idle connections to go.
        assert time.monotonic() - t0 < 4
        assert group_members(gw.proc.pid) == []
        assert not any(alive(pid) for pid in pids)
    log = gw.log_text()
    assert "signal received: draining in-flight requests" in log
    assert "stopped" in log


async def test_readyz_waits_until_every_worker_has_keys(
    tmp_path: Path, upstream: Upstream, idp: IdentityProvider, rsa: SigningKey, spread: Spread
) -> None:
    idp.gate = asyncio.Semaphore(0)  # each JWKS answer waits for the test
    extra = WORKERS + corp(idp.issuer, f'{{jwks_url: "{idp.url}/jwks"}}', "{fetch_timeout: 20s}")
    try:
        async with running_gateway(tmp_path, routes(upstream, providers=True), extra, ready=False) as gw:
            await until(lambda: idp.jwks_hits == 2, 5)  # one fetch per worker, held
            status, body = await gw.readiness()
            assert status == 503
            assert sorted(body["waiting_for"]) == [
                "worker 0: keys of provider 'corp'",
                "worker 1: keys of provider 'corp'",
            ]
            assert (await gw.health())["workers"] == 2  # alive, serving, not ready
            assert await answer(gw.port, get("/public/x")) == 200

            idp.gate.release()  # one worker gets its keys; the other still waits

            async def one_left() -> bool:
                return len((await gw.readiness())[1].get("waiting_for", [])) == 1

            await until(one_left, 5)
            status, body = await gw.readiness()
            assert status == 503
            (waiting,) = body["waiting_for"]
            assert waiting in ("worker 0: keys of provider 'corp'", "worker 1: keys of provider 'corp'")

            idp.gate.release()
            await until(lambda: _ready(gw), 5)
            assert await gw.readiness() == (200, {"status": "ready"})
            token = sign(rsa, claims(idp.issuer))
            request = get("/orders", f"Authorization: Bearer {token}", close=False)
            await spread(gw, 12, request)  # 200 from both
    finally:
        for _ in range(10):
            idp.gate.release()


async def _ready(gw: GatewayProcess) -> bool:
    return (await gw.readiness())[0] == 200


async def test_a_revocation_reaches_every_worker(tmp_path: Path, upstream: Upstream, spread: Spread) -> None:
    assert cli("keys", "generate", "--dir", "keys", cwd=tmp_path).returncode == 0
    api_routes = f"""
    - name: orders
      match: {{prefix: /orders}}
      upstream: "{upstream.url}"
      auth: {{any_of: [api-tokens], scopes: [orders:read]}}
    """
    async with running_gateway(tmp_path, api_routes, WORKERS + provider()) as gw:
        token = issue(tmp_path)
        request = get("/orders/1", f"Authorization: Bearer {token}", close=False)
        # Kept-alive connections on both workers, each with the token verified (and
        # so in that worker's verified-token cache).
        conns = await spread(gw, 12, request)
        jti = json.loads(_payload(token))["jti"]
        assert cli("tokens", "revoke", "--config", "gateway.yaml", jti, cwd=tmp_path).returncode == 0
        t0 = time.monotonic()
        refused: dict[int, float] = {}  # connection index -> seconds until its first 401
        while len(refused) < len(conns) and time.monotonic() - t0 < 3:
            statuses = await asyncio.gather(*(c.send(request) for c, _ in conns))
            for i, response in enumerate(statuses):
                if response.status == 401:
                    refused.setdefault(i, time.monotonic() - t0)
                else:
                    assert response.status == 200
                    assert i not in refused  # once refused, never accepted again
            await asyncio.sleep(0.05)
        assert len(refused) == len(conns), f"not refused within 3s on {len(conns) - len(refused)} connections"
        # New connections, on every worker, are refused too.
        more = await spread(gw, 12, request, expect=401)
        assert b"revoked" in (await more[0][0].send(request)).body


async def test_unknown_kids_cost_the_idp_at_most_one_fetch_per_worker_per_cooldown(
    tmp_path: Path, upstream: Upstream, idp: IdentityProvider, rsa: SigningKey, spread: Spread
) -> None:
    extra = WORKERS + corp(idp.issuer, f'{{jwks_url: "{idp.url}/jwks"}}', "{unknown_kid_cooldown: 30s}")
    async with running_gateway(tmp_path, routes(upstream, providers=True), extra) as gw:
        assert idp.jwks_hits == 2  # each worker's first fetch
        good = get("/orders", f"Authorization: Bearer {sign(rsa, claims(idp.issuer))}", close=False)
        conns = await spread(gw, 20, good)  # both workers hold connections

        def unknown(close: bool = False) -> bytes:
            token = sign(rsa, claims(idp.issuer), kid=secrets.token_hex(8))
            return get("/orders", f"Authorization: Bearer {token}", close=close)

        async def storm(conn: KeptAlive) -> list[int]:
            return [(await conn.send(unknown())).status for _ in range(10)]

        kept = await asyncio.gather(*(storm(c) for c, _ in conns))
        fresh = await asyncio.gather(*(answer(gw.port, unknown(close=True)) for _ in range(100)))
        assert {s for statuses in kept for s in statuses} == {401}
        assert set(fresh) == {401}
        # Each worker refetched once for the first unknown kid it saw (both saw some);
        # the cooldown turned every other one away without asking the IdP.
        assert idp.jwks_hits == 2 + 2
        assert {(await c.send(good)).status for c, _ in conns} == {200}
        metrics = await scrape(gw.admin_port)
        assert metrics.get("gateway_jwks_fetches_total", provider="corp", result="success") == 4
