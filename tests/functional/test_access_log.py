"""The access log of a real gateway process: its fields, and that no secret reaches it."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Upstream
from tests.factories import SigningKey, claims, sign, write
from tests.metrics_parse import scrape
from tests.procs import GatewayProcess, running_gateway
from tests.rawhttp import get, raw_request

ISS = "https://files.test"


def routes(upstream: Upstream) -> str:
    return f"""
    - {{name: orders, match: {{prefix: /orders}}, upstream: "{upstream.url}", auth: {{any_of: [files]}}}}
    - {{name: public, match: {{prefix: /public}}, upstream: "{upstream.url}", auth: public}}
    - {{name: admin, match: {{prefix: /admin}}, upstream: "{upstream.url}", auth: {{any_of: [files], scopes: [admin]}}}}
    """


def extra(tmp_path: Path, key: SigningKey, log: str = "{redact_params: [custom_secret]}") -> str:
    pem = write(tmp_path / "key.pem", key.public_pem())
    return f"""
access_log: {log}
providers:
  files: {{issuer: "{ISS}", audiences: [orders-api], algorithms: [RS256], keys: [{{pem_file: "{pem}"}}]}}
"""


def access_lines(tmp_path: Path) -> list[dict[str, object]]:
    lines = [line for line in (tmp_path / "gateway.log").read_text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    # Lines are hand-built for speed: each must be exactly what json.dumps would write,
    # but for durations, written with six decimals (the same values).
    assert [json.dumps(r, separators=(",", ":")) for r in records] == [_shortest_durations(line) for line in lines]
    return records


def _shortest_durations(line: str) -> str:
    return re.sub(r'("(?:upstream|duration)_seconds":)([0-9.]+)', lambda m: m[1] + repr(float(m[2])), line)


async def _settle(gw: GatewayProcess) -> None:
    # The access log is written by a thread: give it a moment, then stop the process
    # so that everything is flushed.
    await asyncio.sleep(0.2)
    gw.proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(gw.proc.wait, 10)


async def test_no_secret_reaches_any_log_line_or_response(tmp_path: Path, upstream: Upstream, rsa: SigningKey) -> None:
    token = sign(rsa, claims(ISS, sub="alice"), kid=None)
    path_jwt = sign(rsa, claims(ISS, sub="in-path"), kid=None)
    query_jwt = sign(rsa, claims(ISS, sub="in-query"), kid=None)
    secrets = {f"S{i}SECRET{i}" for i in range(1, 14)}
    requests = [
        get("/orders?access_token=S1SECRET1"),
        get("/public/x?api_key=S2SECRET2&x=1&PASSWORD=S3SECRET3"),
        get("/public/x?X-Amz-Signature=S4SECRET4&custom_secret=S5SECRET5&sig=S6SECRET6"),
        get("/public/x?token=S7SECRET7&token=S8SECRET8&q=" + query_jwt),
        get(f"/public/{path_jwt}/x"),
        get("/orders/1", f"Authorization: Bearer {token}", "Cookie: session=S9SECRET9"),
        get("/orders/1", "Authorization: Bearer S10SECRET10!"),  # malformed
        get("/orders/1", "Authorization: Bearer S11SECRET11\x01"),  # unparseable
        get(
            "/public/x",
            "Referer: https://app.example/cb?code=S12SECRET12&state=ok",
            'User-Agent: quote" back\\slash tab\t caf\u00e9',
        ),
        get("/public/x", "Proxy-Authorization: Basic S13SECRET13", "X-Api-Key: S13SECRET13"),
        get(f"/orders/1?x=1&access_token={token}"),
    ]
    bodies = b""
    async with running_gateway(tmp_path, routes(upstream), extra(tmp_path, rsa)) as gw:
        for request in requests:
            resp = await raw_request(gw.port, request)
            if resp.status >= 400:  # the gateway's own answers (the test upstream echoes paths)
                bodies += resp.body + str(resp.headers).encode()
        await _settle(gw)
    log_text = (tmp_path / "gateway.log").read_text()
    lines = access_lines(tmp_path)
    assert len(lines) == len(requests)  # the unparseable one too: its peer and reason only
    assert ("-", "", 400) in [(line["method"], line["path"], line["status"]) for line in lines]
    for secret in [*secrets, token, path_jwt, query_jwt, token.rsplit(".", 1)[1]]:
        assert secret not in log_text, secret
        assert secret.encode() not in bodies, secret
    paths = [line["path"] for line in lines]
    assert "/public/x?api_key=[REDACTED]&x=1&PASSWORD=[REDACTED]" in paths
    assert "/public/[REDACTED]/x" in paths
    assert any(line.get("referer") == "https://app.example/cb?code=[REDACTED]&state=ok" for line in lines)
    assert "unparseable request" in log_text


async def test_a_hostile_referer_does_not_stall_other_clients(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey
) -> None:
    """Issue 11, defect 10: 17 KB of `eyJ` in a Referer cost 0.36 s of event-loop time
    in the redactor, on any request (a 404 here); eight connections pipelining four
    such requests each held every other client for 15 s. (C parser only: redaction
    does not depend on the parser, and the pure-Python one sometimes refuses a 17 KB
    line that arrives in several reads, LineTooLong, which is not this test's subject.)"""
    referer = "http://a/" + "eyJ" * 5790
    one = f"GET /none HTTP/1.1\r\nHost: g\r\nReferer: {referer}\r\n\r\n".encode()
    flood = one * 3 + one.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    # An operator may admit header lines this long (the default, 8 KiB, would refuse
    # them with 431 before any redaction): the redactor must be linear all the same.
    wide = "server: {max_header_line: 32768}\n" + extra(tmp_path, rsa)
    async with running_gateway(tmp_path, routes(upstream), wide) as gw:
        conns = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(8)]
        for _, writer in conns:
            writer.write(flood)
        for _, writer in conns:
            await writer.drain()
        # One answer back: the flood is being served.
        await asyncio.wait_for(conns[0][0].readuntil(b"\r\n\r\n"), 120)
        start = time.monotonic()
        probe = await raw_request(gw.port, get("/public/x"), wait=120)
        waited = time.monotonic() - start
        answers = []
        for reader, writer in conns:
            answers.append(await asyncio.wait_for(reader.read(-1), 120))
            writer.close()
        await _settle(gw)
    assert probe.status == 200
    assert waited < 1.0, f"an unrelated request waited {waited:.1f}s behind the redactor"
    assert [a.count(b"HTTP/1.1 404 ") for a in answers] == [3] + [4] * 7
    referers = [line.get("referer") for line in access_lines(tmp_path) if line["path"] == "/none"]
    assert referers == ["http://a/[REDACTED]...[truncated]"] * 32


@pytest.mark.parametrize("parser", ["c", "python"])
async def test_no_fragment_reaches_any_log(tmp_path: Path, upstream: Upstream, rsa: SigningKey, parser: str) -> None:
    """Issue 11, defect 7: `#access_token=S` was logged as part of `path` (and, its
    sibling, the userinfo of an absolute-form target)."""
    env = {"AIOHTTP_NO_EXTENSIONS": "1"} if parser == "python" else {}
    targets = [
        "/public/cb#access_token=F1FRAG",
        "/public/cb?x=1#F2FRAG",
        "/orders/1#/x?y=F3FRAG",
        "/none#F4FRAG",
        "http://user:F6FRAG@gateway.test/public/x",  # not a fragment: userinfo, as secret
    ]
    async with running_gateway(tmp_path, routes(upstream), extra(tmp_path, rsa), env=env) as gw:
        for target in targets:
            assert (await raw_request(gw.port, get(target))).status == 400, target
        resp = await raw_request(gw.port, get("/public/x", "Referer: https://app.example/cb?s=1#access_token=F5FRAG"))
        assert resp.status == 200
        await _settle(gw)
    assert "FRAG" not in (tmp_path / "gateway.log").read_text()
    assert [(line["path"], line.get("referer")) for line in access_lines(tmp_path)] == [
        ("/public/cb#[REDACTED]", None),
        ("/public/cb?x=1#[REDACTED]", None),
        ("/orders/1#[REDACTED]", None),
        ("/none#[REDACTED]", None),
        ("http://[REDACTED]@gateway.test/public/x", None),
        ("/public/x", "https://app.example/cb?s=1#[REDACTED]"),
    ]


@pytest.mark.parametrize("parser", ["c", "python"])
async def test_query_secrets_are_redacted_in_any_spelling(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey, parser: str
) -> None:
    """Issue 11, defect 8: these spellings of secret parameters were logged in clear."""
    env = {"AIOHTTP_NO_EXTENSIONS": "1"} if parser == "python" else {}
    targets = [
        "/public/x?access_token[]=Q1SECRET",
        "/public/x?access_token%00=Q2SECRET",
        "/public/x?a=1;access_token=Q3SECRET",
        "/public/x?api-key=Q4SECRET&x-api-key=Q5SECRET&access_key=Q6SECRET&auth=Q7SECRET",
        "/public/app;jsessionid=Q8SECRET/x",
        "/public/x?user%5Bpassword%5D=Q9SECRET&Custom.Secret=Q10SECRET",
    ]
    referer = "Referer: https://app.example/cb;jsessionid=Q11SECRET?x-api-key=Q12SECRET&user[password]=Q13SECRET"
    async with running_gateway(tmp_path, routes(upstream), extra(tmp_path, rsa), env=env) as gw:
        for target in targets:
            assert (await raw_request(gw.port, get(target))).status == 200, target
        assert (await raw_request(gw.port, get("/public/x", referer))).status == 200
        await _settle(gw)
    assert re.search(r"Q\d+SECRET", (tmp_path / "gateway.log").read_text()) is None
    lines = access_lines(tmp_path)
    assert [line["path"] for line in lines] == [
        "/public/x?access_token[]=[REDACTED]",
        "/public/x?access_token%00=[REDACTED]",
        "/public/x?a=1;access_token=[REDACTED]",
        "/public/x?api-key=[REDACTED]&x-api-key=[REDACTED]&access_key=[REDACTED]&auth=[REDACTED]",
        "/public/app;jsessionid=[REDACTED]/x",
        "/public/x?user%5Bpassword%5D=[REDACTED]&Custom.Secret=[REDACTED]",
        "/public/x",
    ]
    assert lines[-1]["referer"] == (
        "https://app.example/cb;jsessionid=[REDACTED]?x-api-key=[REDACTED]&user[password]=[REDACTED]"
    )


async def test_fields_subject_and_outcomes(tmp_path: Path, upstream: Upstream, rsa: SigningKey) -> None:
    token = sign(rsa, claims(ISS, sub="alice"), kid=None)
    async with running_gateway(tmp_path, routes(upstream), extra(tmp_path, rsa)) as gw:
        await raw_request(gw.port, get("/orders/1", f"Authorization: Bearer {token}", "User-Agent: t/1"))
        request = b"POST /public/up HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        await raw_request(gw.port, request)
        await raw_request(gw.port, get("/orders/1"))
        await raw_request(gw.port, get("/none"))
        await _settle(gw)
    allowed, upload, denied, unmatched = access_lines(tmp_path)
    assert set(allowed) >= {
        "ts", "client", "method", "path", "status", "route", "outcome", "reason", "subject",
        "upstream_seconds", "duration_seconds", "bytes_in", "bytes_out",
    }  # fmt: skip
    assert (allowed["status"], allowed["route"], allowed["outcome"], allowed["subject"]) == (
        200,
        "orders",
        "allowed",
        "alice",
    )
    assert allowed["client"] == "127.0.0.1"
    assert allowed["user_agent"] == "t/1"
    assert isinstance(allowed["upstream_seconds"], float)
    assert isinstance(allowed["duration_seconds"], float)
    assert allowed["duration_seconds"] >= allowed["upstream_seconds"]
    assert isinstance(allowed["bytes_out"], int)
    assert allowed["bytes_out"] > 0
    assert (upload["method"], upload["bytes_in"]) == ("POST", 5)
    assert (denied["status"], denied["outcome"], denied["reason"], denied["subject"]) == (
        401,
        "denied",
        "token_missing",
        None,
    )
    assert denied["upstream_seconds"] is None
    assert (unmatched["status"], unmatched["route"], unmatched["reason"]) == (404, "-", "no_route")


async def test_text_format_without_subject(tmp_path: Path, upstream: Upstream, rsa: SigningKey) -> None:
    token = sign(rsa, claims(ISS, sub="alice"), kid=None)
    async with running_gateway(
        tmp_path, routes(upstream), extra(tmp_path, rsa, "{format: text, subject: false}")
    ) as gw:
        await raw_request(gw.port, get("/orders/1?token=S1", f"Authorization: Bearer {token}"))
        await _settle(gw)
    lines = [ln for ln in (tmp_path / "gateway.log").read_text().splitlines() if ln.startswith("ts=")]
    assert len(lines) == 1
    assert 'path="/orders/1?token=[REDACTED]"' in lines[0]
    assert "status=200" in lines[0]
    assert 'route="orders"' in lines[0]
    assert "alice" not in lines[0]
    assert "subject" not in lines[0]


async def test_a_403_is_logged_against_the_verified_subject(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey
) -> None:
    """Issue 11, defect 14: a refusal after verification logged `"subject": null`."""
    token = sign(rsa, claims(ISS, sub="alice", scope="read"), kid=None)
    auth = f"Authorization: Bearer {token}"
    async with running_gateway(tmp_path, routes(upstream), extra(tmp_path, rsa)) as gw:
        assert (await raw_request(gw.port, get("/admin/x", auth))).status == 403  # verified afresh
        assert (await raw_request(gw.port, get("/orders/1", auth))).status == 200  # now cached
        assert (await raw_request(gw.port, get("/admin/x", auth))).status == 403  # from the cache
        assert (await raw_request(gw.port, get("/admin/x"))).status == 401
        await _settle(gw)
    lines = access_lines(tmp_path)
    assert [(ln["status"], ln["reason"], ln["subject"], ln["provider"]) for ln in lines] == [
        (403, "insufficient_scope", "alice", "files"),
        (200, "-", "alice", "files"),
        (403, "insufficient_scope", "alice", "files"),
        (401, "token_missing", None, None),
    ]


async def test_text_format_writes_a_dash_for_no_value(tmp_path: Path, upstream: Upstream, rsa: SigningKey) -> None:
    """Issue 11, defect 14: the text format wrote `subject=None`."""
    async with running_gateway(tmp_path, routes(upstream), extra(tmp_path, rsa, "{format: text}")) as gw:
        await raw_request(gw.port, get("/orders/1"))
        await _settle(gw)
    lines = [ln for ln in (tmp_path / "gateway.log").read_text().splitlines() if ln.startswith("ts=")]
    assert len(lines) == 1
    assert " subject=- provider=- upstream_seconds=- " in lines[0]
    assert "None" not in lines[0]
    assert 'reason="token_missing"' in lines[0]


async def test_sighup_reloads_the_policy_and_a_bad_file_keeps_the_old_one(
    tmp_path: Path, upstream: Upstream, rsa: SigningKey
) -> None:
    async with running_gateway(tmp_path, routes(upstream), extra(tmp_path, rsa)) as gw:
        config = tmp_path / "gateway.yaml"
        original = config.read_text()
        assert (await raw_request(gw.port, get("/later/x"))).status == 404
        config.write_text(
            original.replace(
                "routes:\n",
                f'routes:\n  - {{name: later, match: {{prefix: /later}}, upstream: "{upstream.url}", auth: public}}\n',
            )
        )
        gw.proc.send_signal(signal.SIGHUP)
        await _until(lambda: _status(gw, "/later/x", 200))
        config.write_text(original.replace("routes:\n", "routes:\n  - {name: broken}\n"))
        gw.proc.send_signal(signal.SIGHUP)
        await _until(lambda: _reloads(gw, "failure", 1))
        assert (await raw_request(gw.port, get("/later/x"))).status == 200  # still the last good policy
        s = await scrape(gw.admin_port)
        assert s.get("gateway_config_reloads_total", result="success") == 1
        await _settle(gw)
    log_text = (tmp_path / "gateway.log").read_text()
    assert "reload refused; the running policy stays in force" in log_text
    assert "routes[0].match: required field is missing" in log_text


async def _status(gw: GatewayProcess, path: str, status: int) -> bool:
    return (await raw_request(gw.port, get(path))).status == status


async def _reloads(gw: GatewayProcess, result: str, count: int) -> bool:
    return (await scrape(gw.admin_port)).get("gateway_config_reloads_total", result=result) == count


async def _until(check: object, seconds: float = 10.0) -> None:
    assert callable(check)
    for _ in range(int(seconds / 0.05)):
        try:
            if await check():
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")
