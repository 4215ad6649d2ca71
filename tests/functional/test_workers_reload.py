"""Reloading a gateway of two workers: SIGHUP, a watched file, a ConfigMap symlink swap;
refusals (invalid text, providers without keys) that leave every worker on the running
policy; and the changes that replace the workers (listen port, worker count).

"Every worker" is checked on kept-alive connections that the `spread` fixture placed on
each worker (read from /proc), opened before the change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import time
from pathlib import Path

from tests.conftest import Upstream
from tests.factories import IdentityProvider, SigningKey, claims, rsa_key, sign, write
from tests.functional.workers_env import (
    REFUSED,
    RELOADED,
    WORKERS,
    Asking,
    Spread,
    corp,
    logged,
    on_each,
    replace_file,
    routes,
    until,
    with_route,
)
from tests.metrics_parse import scrape
from tests.procs import GatewayProcess, alive, free_port, gateway_process, running_gateway
from tests.rawhttp import get

UNWATCHED = "server: {workers: 2, watch: false}\n"
ISS = "https://files.test"
PUBLIC = get("/public/x", close=False)
LATER = get("/later/x", close=False)


def later(upstream: Upstream) -> str:
    return f'{{name: later, match: {{prefix: /later}}, upstream: "{upstream.url}", auth: public}}'


async def test_sighup_switches_every_worker_in_place(tmp_path: Path, upstream: Upstream, spread: Spread) -> None:
    async with running_gateway(tmp_path, routes(upstream), UNWATCHED) as gw, Asking(gw.port) as asking:
        pids = sorted(gw.workers())
        conns = await spread(gw, 12, PUBLIC)
        assert set(await on_each(conns, LATER)) == {404}
        gw.config.write_text(with_route(gw.config.read_text(), later(upstream)))
        gw.proc.send_signal(signal.SIGHUP)
        await logged(gw, RELOADED)
        assert set(await on_each(conns, LATER)) == {200}  # on each worker
        assert set(await on_each(conns, PUBLIC)) == {200}
        await spread(gw, 12, LATER)  # new connections too
        assert set(await asking.stop()) == {200}  # no request failed meanwhile
        assert sorted(gw.workers()) == pids  # in place: the same workers
        metrics = await scrape(gw.admin_port)
        assert metrics.get("gateway_config_reloads_total", result="success") == 1
        assert metrics.get("gateway_config_reloads_total", result="failure") == 0


async def test_a_rewritten_file_is_reloaded_without_a_signal(
    tmp_path: Path, upstream: Upstream, spread: Spread
) -> None:
    async with running_gateway(tmp_path, routes(upstream), WORKERS) as gw, Asking(gw.port) as asking:
        pids = sorted(gw.workers())
        conns = await spread(gw, 12, PUBLIC)
        gw.config.write_text(with_route(gw.config.read_text(), later(upstream)))  # in place, as an editor
        took = await logged(gw, RELOADED)
        assert took < 3  # polled each second, acted on once it settled
        assert set(await on_each(conns, LATER)) == {200}
        assert set(await asking.stop()) == {200}
        assert sorted(gw.workers()) == pids
        assert "policy input changed" in gw.log_text()


async def test_files_rewritten_with_the_same_bytes_are_no_reload(
    tmp_path: Path, upstream: Upstream, idp: IdentityProvider, rsa: SigningKey
) -> None:
    """`touch`, or a tool that rewrites a file it did not change: the watch sees new
    stamps, the contents are those in force, so no worker reloads, and none refetches
    its remote keys. A real change afterwards is a reload (and a refetch)."""
    pem = tmp_path / "key.pem"
    write(pem, rsa.public_pem())
    extra = WORKERS + corp(ISS, f'{{jwks_url: "{idp.url}/jwks"}}, {{pem_file: "{pem}"}}')
    async with running_gateway(tmp_path, routes(upstream, providers=True), extra) as gw:
        assert idp.jwks_hits == 2  # each worker's first fetch
        os.utime(gw.config)
        replace_file(pem, pem.read_text())  # another inode, the same bytes
        await logged(gw, "policy files rewritten with the same contents", seconds=5)
        await asyncio.sleep(1.5)  # a poll more: no reload follows
        assert RELOADED not in gw.log_text()
        assert idp.jwks_hits == 2
        metrics = await scrape(gw.admin_port)
        assert metrics.get("gateway_config_reloads_total", result="success") == 0
        gw.config.write_text(with_route(gw.config.read_text(), later(upstream)))
        await logged(gw, RELOADED)
        assert idp.jwks_hits == 4  # the reloaded policy's sources, one fetch per worker
        assert (await scrape(gw.admin_port)).get("gateway_config_reloads_total", result="success") == 1


async def test_a_configmap_symlink_swap_is_detected(tmp_path: Path, upstream: Upstream, spread: Spread) -> None:
    """Kubernetes' layout: each key of the ConfigMap is a link through `..data`, which
    is swapped (a rename) to a new timestamped directory. The policy and the key file
    it names (relative to the policy's directory) change together."""
    old_key, new_key = rsa_key("a"), rsa_key("b")
    port, admin_port = free_port(), free_port()
    mount = tmp_path / "config"
    mount.mkdir()

    def version(name: str, key: SigningKey, extra_route: str = "") -> None:
        data = mount / name
        data.mkdir()
        write(data / "key.pem", key.public_pem())
        text = (
            f"listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin_port}}}\n{WORKERS}"
            + corp(ISS, "{pem_file: key.pem}")
            + "routes:\n"
            + "".join(f"  {line}\n" for line in routes(upstream, providers=True).splitlines())
        )
        write(data / "policy.yaml", with_route(text, extra_route) if extra_route else text)

    version("..2026_a", old_key)
    os.symlink("..2026_a", mount / "..data")
    for name in ("policy.yaml", "key.pem"):
        os.symlink(f"..data/{name}", mount / name)

    def orders(key: SigningKey) -> bytes:
        return get("/orders/1", f"Authorization: Bearer {sign(key, claims(ISS), kid=None)}", close=False)

    async with gateway_process(mount / "policy.yaml", port, admin_port, tmp_path / "gateway.log") as gw:
        conns = await spread(gw, 12, PUBLIC)
        assert set(await on_each(conns, orders(old_key))) == {200}
        assert set(await on_each(conns, orders(new_key))) == {401}
        version("..2026_b", new_key, later(upstream))
        os.symlink("..2026_b", mount / "..data_tmp")
        os.rename(mount / "..data_tmp", mount / "..data")  # atomic, as the kubelet does
        assert await logged(gw, RELOADED) < 3
        assert set(await on_each(conns, orders(new_key))) == {200}
        assert set(await on_each(conns, orders(old_key))) == {401}
        assert set(await on_each(conns, LATER)) == {200}


async def test_an_invalid_version_is_refused_and_every_worker_keeps_the_running_policy(
    tmp_path: Path, upstream: Upstream, spread: Spread
) -> None:
    async with running_gateway(tmp_path, routes(upstream), WORKERS) as gw, Asking(gw.port) as asking:
        good = gw.config.read_text()
        conns = await spread(gw, 12, PUBLIC)
        replace_file(gw.config, with_route(good, "{name: broken}"))
        await logged(gw, REFUSED)
        assert "routes[0].match: required field is missing" in gw.log_text()
        assert set(await on_each(conns, PUBLIC)) == {200}
        assert set(await on_each(conns, LATER)) == {404}
        await asyncio.sleep(1.5)
        assert gw.log_text().count(REFUSED) == 1  # said once, not retried every poll
        refused = await scrape(gw.admin_port)
        # The watch carries on: the next good version is taken.
        replace_file(gw.config, with_route(good, later(upstream)))
        await logged(gw, RELOADED)
        assert set(await on_each(conns, LATER)) == {200}
        assert set(await asking.stop()) == {200}
        assert refused.get("gateway_config_reloads_total", result="failure") == 1
        assert refused.get("gateway_config_reloads_total", result="success") == 0
        metrics = await scrape(gw.admin_port)
        assert metrics.get("gateway_config_reloads_total", result="success") == 1


async def test_a_version_whose_provider_gets_no_keys_is_refused(
    tmp_path: Path, upstream: Upstream, spread: Spread
) -> None:
    async with running_gateway(tmp_path, routes(upstream), UNWATCHED) as gw:
        conns = await spread(gw, 12, PUBLIC)
        nobody = free_port()  # nothing listens there
        text = gw.config.read_text() + corp(
            ISS, f'{{jwks_url: "http://127.0.0.1:{nobody}/jwks"}}', "{retry_interval: 100ms}"
        )
        route = f'{{name: later, match: {{prefix: /later}}, upstream: "{upstream.url}", auth: {{any_of: [corp]}}}}'
        # server.reload_timeout of the new version bounds its wait for keys.
        text = text.replace("watch: false}", "watch: false, reload_timeout: 1s}")
        assert "reload_timeout: 1s" in text
        gw.config.write_text(with_route(text, route))
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGHUP)
        # While the workers wait for the new keys, the running policy serves, ready.
        while REFUSED not in gw.log_text():
            assert time.monotonic() - t0 < 5, "the reload was neither refused nor taken in reload_timeout"
            assert set(await on_each(conns, PUBLIC)) == {200}
            assert (await gw.readiness())[0] == 200
            await asyncio.sleep(0.2)
        log = gw.log_text()
        # The first worker to give up makes the other abort: one of them says why.
        assert "the new policy's providers have no keys (corp)" in log
        assert RELOADED not in log
        assert set(await on_each(conns, LATER)) == {404}  # the new route never served
        metrics = await scrape(gw.admin_port)
        assert metrics.get("gateway_config_reloads_total", result="failure") == 1


async def test_a_worker_gone_during_a_reload_stops_the_others_preparing(
    tmp_path: Path, upstream: Upstream, idp: IdentityProvider
) -> None:
    """A worker dies while every worker waits for the new policy's keys: the reload is
    refused at once and the others stop fetching, rather than both at their own
    reload_timeout (found by review: 7.9 s of an 8 s timeout, fetching meanwhile)."""
    idp.fail = True  # the new provider's JWKS answers 500: the new sources retry
    async with running_gateway(tmp_path, routes(upstream), UNWATCHED) as gw:
        text = gw.config.read_text().replace("watch: false}", "watch: false, reload_timeout: 8s}")
        text += corp(idp.issuer, f'{{jwks_url: "{idp.url}/jwks"}}', "{retry_interval: 100ms}")
        gw.config.write_text(text)
        pids = (await gw.health())["pids"]
        gw.proc.send_signal(signal.SIGHUP)
        await until(lambda: idp.jwks_hits >= 4, 5)  # both workers fetching
        t0 = time.monotonic()
        os.kill(pids[0], signal.SIGKILL)
        await logged(gw, REFUSED, seconds=10)
        assert time.monotonic() - t0 < 3
        assert "worker 0: gone" in gw.log_text()
        await asyncio.sleep(0.5)
        hits = idp.jwks_hits
        await asyncio.sleep(1.0)
        assert idp.jwks_hits == hits  # the other worker stopped fetching


async def test_a_worker_restarted_after_a_reload_serves_the_reloaded_policy(
    tmp_path: Path, upstream: Upstream, spread: Spread
) -> None:
    async with running_gateway(tmp_path, routes(upstream), UNWATCHED) as gw:
        gw.config.write_text(with_route(gw.config.read_text(), later(upstream)))
        gw.proc.send_signal(signal.SIGHUP)
        await logged(gw, RELOADED)
        gw.config.write_text("not: [a policy")  # what the file says now is not what runs
        victim = (await gw.health())["pids"][0]
        os.kill(victim, signal.SIGKILL)
        await until(lambda: _replaced(gw, victim), 10)
        conns = await spread(gw, 12, LATER)  # on the new worker too
        assert set(await on_each(conns, PUBLIC)) == {200}


async def _replaced(gw: GatewayProcess, victim: int) -> bool:
    health = await gw.health()
    return bool(health["workers"] == 2 and victim not in health["pids"] and not alive(victim))


async def test_a_new_listen_port_replaces_the_workers(tmp_path: Path, upstream: Upstream, spread: Spread) -> None:
    async with (
        running_gateway(tmp_path, routes(upstream), UNWATCHED) as gw,
        Asking(gw.admin_port, get("/readyz")) as readiness,
    ):
        old = gw.workers()
        new_port = free_port()
        gw.config.write_text(gw.config.read_text().replace(f"127.0.0.1:{gw.port}\n", f"127.0.0.1:{new_port}\n"))
        gw.proc.send_signal(signal.SIGHUP)
        await logged(gw, RELOADED, seconds=15)
        health = await gw.health()
        assert health["workers"] == 2
        assert health["restarts"] == 0  # a replacement is not a restart
        assert not set(health["pids"]) & set(old)
        # The old workers drain and go; the old port refuses connections.
        await until(lambda: not any(alive(pid) for pid in old), 5)
        await until(lambda: _refused(gw.port), 3)
        moved = dataclasses.replace(gw, port=new_port)
        assert sorted(moved.workers()) == sorted(health["pids"])
        await spread(moved, 12, PUBLIC)
        assert set(await readiness.stop()) == {200}  # ready throughout the replacement


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def test_a_new_worker_count_replaces_the_workers(tmp_path: Path, upstream: Upstream, spread: Spread) -> None:
    async with (
        running_gateway(tmp_path, routes(upstream), UNWATCHED) as gw,
        Asking(gw.port) as asking,
        Asking(gw.admin_port, get("/readyz")) as readiness,
    ):
        old = gw.workers()
        gw.config.write_text(gw.config.read_text().replace("workers: 2", "workers: 3"))
        gw.proc.send_signal(signal.SIGHUP)
        await logged(gw, RELOADED, seconds=15)
        assert "(1 routes, 3 workers)" in gw.log_text()
        health = await gw.health()
        assert (health["workers"], health["workers_configured"], health["restarts"]) == (3, 3, 0)
        assert len(health["pids"]) == 3
        assert not set(health["pids"]) & set(old)
        await until(lambda: not any(alive(pid) for pid in old), 5)
        assert sorted(gw.workers()) == sorted(health["pids"])
        await spread(gw, 24, PUBLIC)  # all three serve
        # The same listening socket throughout: no request failed.
        assert set(await asking.stop()) == {200}
        assert set(await readiness.stop()) == {200}  # ready throughout the replacement
        metrics = await scrape(gw.admin_port)
        assert metrics.get("gateway_workers") == 3


async def test_a_replacement_refused_for_want_of_keys_never_serves_its_policy(
    tmp_path: Path, upstream: Upstream
) -> None:
    """New workers take no connection until they have their keys: a worker-count change
    whose provider gets none is refused, and its new route was never answered, not even
    while the supervisor waited (it once was, by the new workers, for reload_timeout)."""
    async with running_gateway(tmp_path, routes(upstream), UNWATCHED) as gw, Asking(gw.port, get("/later/x")) as asking:
        nobody = free_port()  # nothing listens there
        text = gw.config.read_text().replace(
            "workers: 2, watch: false}", "workers: 3, watch: false, reload_timeout: 2s}"
        )
        text += corp(ISS, f'{{jwks_url: "http://127.0.0.1:{nobody}/jwks"}}', "{retry_interval: 100ms}")
        gw.config.write_text(with_route(text, later(upstream)))
        gw.proc.send_signal(signal.SIGHUP)
        await logged(gw, REFUSED, seconds=15)
        statuses = await asking.stop()
        assert len(statuses) > 20
        assert set(statuses) == {404}  # the route of the refused version: never served
        assert (await gw.health())["workers"] == 2


async def test_sigterm_does_not_wait_for_a_reload_in_progress(tmp_path: Path, upstream: Upstream) -> None:
    """A reload waiting for keys (here an IdP that accepts and never answers, with a
    20 s reload_timeout) is cancelled by SIGTERM: the drain starts at once."""
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    try:
        async with running_gateway(tmp_path, routes(upstream), UNWATCHED) as gw:
            text = gw.config.read_text().replace("watch: false}", "watch: false, reload_timeout: 20s}")
            text += corp(ISS, f'{{jwks_url: "http://127.0.0.1:{hang.getsockname()[1]}/jwks"}}')
            gw.config.write_text(text)
            gw.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)  # the reload waits for the keys
            t0 = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            await until(lambda: gw.proc.poll() is not None, 10)
            assert gw.proc.returncode == 0
            assert time.monotonic() - t0 < 5
            assert RELOADED not in gw.log_text()
    finally:
        hang.close()
