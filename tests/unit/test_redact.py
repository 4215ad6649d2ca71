"""Query-string and URL redaction for logs."""

from __future__ import annotations

import re

import pytest

from gateway.obs.redact import MARKER, SECRET_PARAMS, Redactor

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"
R = Redactor(["X-Custom-Secret"])


@pytest.mark.parametrize("name", sorted(SECRET_PARAMS))
def test_every_built_in_name_is_redacted(name: str) -> None:
    assert R.query(f"a=1&{name}=hunter2&b=2") == f"a=1&{name}={MARKER}&b=2"
    upper = name.upper()
    assert R.query(f"{upper}=hunter2") == f"{upper}={MARKER}"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("access%5Ftoken=s", f"access%5Ftoken={MARKER}"),
        ("x-custom-secret=s", f"x-custom-secret={MARKER}"),
        ("token=a&token=b", f"token={MARKER}&token={MARKER}"),
        ("token", "token"),
        ("tokens=kept&keyboard=kept", "tokens=kept&keyboard=kept"),
        (f"q={JWT}", f"q={MARKER}"),
        (f"q=Bearer%20{JWT}", f"q=Bearer%20{MARKER}"),
        ("q=eyJhbGciOiJIUzI1NiJ9%2EeyJzdWIiOiJhIn0%2Esig", f"q={MARKER}"),
        ("", ""),
    ],
)
def test_query(query: str, expected: str) -> None:
    assert R.query(query) == expected


def test_target_and_url() -> None:
    assert R.target(f"/a/{JWT}/b?token=s&x=1") == f"/a/{MARKER}/b?token={MARKER}&x=1"
    assert R.target("/plain") == "/plain"
    assert R.url(f"https://user:pw@h.example/cb?code=abc&state=s#access_token={JWT}&x=1") == (
        f"https://{MARKER}@h.example/cb?code={MARKER}&state=s#access_token={MARKER}&x=1"
    )


async def test_access_log_json_lines_match_the_json_module() -> None:
    """The hand-built JSON line says exactly what json.dumps of the record says."""
    import asyncio
    import json

    from gateway.limits import Limits
    from gateway.obs.access import AccessLog, Exchange
    from gateway.proxy.downstream import ClientConnection, Request, Server

    async def nothing(_: Request) -> None:
        return None

    conn = ClientConnection(Server(nothing, asyncio.get_running_loop(), Limits()))
    conn.peer = "10.0.0.1"
    raw = (
        b'GET /a?b="c"&token=SECRET HTTP/1.1\r\nHost: h\r\nUser-Agent: q"\\ \xc3\xa9 \xff\tx\r\n'
        b"Referer: https://u:p@r.example/?code=SECRET2\r\n\r\n"
    )
    messages, _, _ = conn._requests.feed_data(raw)
    request = Request(conn, *messages[0])
    for subject, upstream in ((None, None), ('s"\u00e9\ud800', 0.001577)):
        ex = Exchange(route="r", outcome="denied", reason="token_invalid", subject=subject, upstream_seconds=upstream)
        for log in (AccessLog("json", True, Redactor()), AccessLog("json", False, Redactor())):
            line = log.json_line(request, ex, 401, 1e-06)
            record = log.record(request, ex, 401, 1e-06)
            # Byte for byte, but durations are written with six decimals (same values).
            shortest = re.sub(r'("(?:upstream|duration)_seconds":)([0-9.]+)', lambda m: m[1] + repr(float(m[2])), line)
            assert shortest == json.dumps(json.loads(line), separators=(",", ":"))
            assert '"duration_seconds":0.000001,' in line
            parsed = json.loads(line)
            assert parsed.pop("ts")
            assert record.pop("ts")
            assert parsed == record
            assert "SECRET" not in line
