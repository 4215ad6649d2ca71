"""Query-string and URL redaction for logs."""

from __future__ import annotations

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


def test_access_log_json_lines_match_the_json_module() -> None:
    import json

    from gateway.obs.access import _json_line

    record = {
        "ts": "2026-01-01T00:00:00.000Z",
        "path": '/a?b="c"\\\n\u00e9\ud800',
        "status": 200,
        "subject": None,
        "upstream_seconds": 0.001577,
        "duration_seconds": 1e-06,
        "flag": True,
        "bytes_in": 0,
    }
    line = _json_line(record)
    assert line == json.dumps(record, ensure_ascii=True, separators=(",", ":"))
    assert json.loads(line) == record
