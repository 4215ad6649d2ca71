"""The `gateway` program: exit codes, check output, schema, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.runtime.cpus import cpu_budget
from tests.procs import gateway_cmd, running_gateway

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(gateway_cmd(*args), capture_output=True, text=True, timeout=30, check=False)


def test_example_config_is_valid_once_its_keys_exist(tmp_path: Path) -> None:
    example = tmp_path / "config.example.yaml"
    shutil.copy(ROOT / "config.example.yaml", example)
    result = run("check", "--config", str(example))
    assert result.returncode == 2
    assert "cannot read" in result.stderr
    assert "gateway keys generate --dir" in result.stderr  # the error says what to do
    assert run("keys", "generate", "--dir", str(tmp_path / "demo-keys")).returncode == 0
    result = run("check", "--config", str(example))
    assert result.returncode == 0, result.stderr
    assert "valid, 3 routes" in result.stdout
    assert "prefix /catalog" in result.stdout
    assert "jwt required any_of=api-tokens scopes=orders:read" in result.stdout
    assert "origins=http://localhost:3000 methods=GET,HEAD,POST" in result.stdout


def test_check_warns_about_shadowed_routes(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(
        "routes:\n"
        "  - {name: api, match: {prefix: /api}, upstream: 'http://u', auth: public}\n"
        "  - {name: v2, match: {prefix: /api/v2}, upstream: 'http://u', auth: public}\n"
    )
    result = run("check", "--config", str(f))
    assert result.returncode == 0
    assert f"warning: {f}:3: routes[1].match: route 'v2' (routes[1]) can never match" in result.stderr
    assert "'api' (routes[0])" in result.stderr


def test_check_marks_the_routes_that_relay_websockets(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(
        "routes:\n"
        "  - {name: live, match: {prefix: /live}, upstream: 'http://u', websocket: true, auth: public}\n"
        "  - {name: api, match: {prefix: /api}, upstream: 'http://u', auth: public}\n"
    )
    result = run("check", "--config", str(f))
    assert result.returncode == 0, result.stderr
    [live] = [line for line in result.stdout.splitlines() if " live " in line]
    [api] = [line for line in result.stdout.splitlines() if " api " in line]
    assert "(websocket)" in live
    assert "(websocket)" not in api


def test_check_invalid_exits_2_with_located_message(tmp_path: Path) -> None:
    f = tmp_path / "config.yaml"
    f.write_text("routes:\n  - name: x\n    match: {prefix: /x}\n    upstream: orders:80\n    auth: public\n")
    result = run("check", "--config", str(f))
    assert result.returncode == 2
    assert f"{f}:4: routes[0].upstream: not a URL: 'orders:80' (expected http(s)://host[:port][/base])" in result.stderr
    assert result.stdout == ""


def test_check_prints_the_workers_run_would_start(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    routes = "routes:\n  - {name: api, match: {prefix: /api}, upstream: 'http://u', auth: public}\n"
    budget = cpu_budget()  # the child sees the same affinity mask and cgroup
    auto = f"workers: {budget.count} (auto: {budget.describe()})"
    for server, option, expected in [
        ("", (), "workers: 1"),
        ("server: {workers: 3}\n", (), "workers: 3"),
        ("server: {workers: auto}\n", (), auto),
        ("server: {workers: 3}\n", ("--workers", "auto"), auto),
        ("server: {workers: auto}\n", ("--workers", "2"), "workers: 2"),
    ]:
        f.write_text(server + routes)
        result = run("check", "--config", str(f), *option)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[:2] == [f"{f}: valid, 1 routes (first match wins)", expected], option


def test_bad_workers_option_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("routes:\n  - {name: api, match: {prefix: /api}, upstream: 'http://u', auth: public}\n")
    for command, value in [("check", "0"), ("check", "257"), ("run", "many"), ("run", "-1")]:
        result = run(command, "--config", str(f), f"--workers={value}")
        assert result.returncode == 2
        assert (
            f"argument --workers: not a worker count: {value if value.isdigit() else repr(value)} "
            "(expected a whole number from 1 to 256, or auto)" in result.stderr
        )
        assert result.stdout == ""


def test_check_missing_file_and_bad_usage_exit_2(tmp_path: Path) -> None:
    assert run("check", "--config", str(tmp_path / "nope.yaml")).returncode == 2
    assert run("check").returncode == 2
    assert run("frobnicate").returncode == 2


def test_run_with_invalid_config_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "config.yaml"
    f.write_text("routes: []\n")
    result = run("run", "--config", str(f))
    assert result.returncode == 2
    assert "routes: expected at least one entry" in result.stderr


def test_schema_is_json_schema_for_the_policy() -> None:
    result = run("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["required"] == ["routes"]
    assert schema["additionalProperties"] is False
    route = schema["$defs"]["Route"]
    assert set(route["required"]) == {"name", "match", "upstream", "auth"}


def test_schema_update_docs_renders_the_tables_again(tmp_path: Path) -> None:
    committed = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    doc = tmp_path / "config.md"
    doc.write_text(committed.replace("| `shutdown_timeout` | duration | `30s` |", "| `shutdown_timeout` | x | y |"))
    result = run("schema", "--update-docs", str(doc))
    assert result.returncode == 0, result.stderr
    assert doc.read_text(encoding="utf-8") == committed


def test_schema_update_docs_names_what_does_not_fit(tmp_path: Path) -> None:
    doc = tmp_path / "config.md"
    doc.write_text("<!-- generated: server.nope -->\n<!-- end generated -->\n")
    result = run("schema", "--update-docs", str(doc))
    assert result.returncode == 1
    assert "'nope' is not a key there" in result.stderr


def test_console_script_matches_module(tmp_path: Path) -> None:
    script = Path(__import__("sys").executable).parent / "gateway"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith("gateway ")


async def test_sigterm_drains_in_flight_requests_then_exits_0(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(1.0)
        return web.Response(text="finished")

    app = web.Application()
    app.router.add_get("/slow", slow)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    try:
        async with running_gateway(
            tmp_path,
            f"""
            - {{name: s, match: {{prefix: /}}, upstream: "http://127.0.0.1:{upstream.port}", auth: public}}
            """,
            extra="server: {shutdown_timeout: 5s}",
        ) as gw:
            async with aiohttp.ClientSession() as client:
                pending = asyncio.ensure_future(client.get(f"{gw.url}/slow"))
                await asyncio.wait_for(started.wait(), 5)
                gw.proc.send_signal(signal.SIGTERM)
                t0 = time.monotonic()
                resp = await pending
                assert resp.status == 200
                assert await resp.text() == "finished"
                resp.release()
                # New connections are refused once draining has begun.
                try:
                    async with client.get(f"{gw.url}/slow", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        raise AssertionError(f"accepted a new request while draining: {r.status}")
                except aiohttp.ClientConnectionError:
                    pass
            code = await asyncio.to_thread(gw.proc.wait, 10)
            assert code == 0
            assert time.monotonic() - t0 < 5
    finally:
        await upstream.close()
