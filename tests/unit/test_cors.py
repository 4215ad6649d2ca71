"""gateway/cors.py without a loop, and `cors` / `server.request_id` errors at load
(file:line: field: message, naming what was expected)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cors import CorsPolicy, header_list, origin_problem
from gateway.errors import Reason
from gateway.requestid import MAX_LENGTH, RequestIds, new_id, well_formed
from tests.unit.test_policy_errors import errors

APP = "https://app.example.com"


@pytest.mark.parametrize(
    "origin",
    ["*", APP, "http://localhost:3000", "http://127.0.0.1:8080", "http://[::1]:5173", "capacitor://localhost"],
)
def test_origins_accepted(origin: str) -> None:
    assert origin_problem(origin) is None


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("null", "any page can send it"),
        ("https://app.example.com/", "expected 'https://app.example.com'"),
        ("https://app.example.com/path", "expected scheme://host[:port]"),
        ("https://App.Example.com", "expected 'https://app.example.com'"),
        ("HTTPS://app.example.com", "expected 'https://app.example.com'"),
        ("https://app.example.com:443", "expected 'https://app.example.com'"),
        ("http://app.example.com:80", "expected 'http://app.example.com'"),
        ("https://app.example.com:99999", "port out of range"),
        ("https://app.example.com:0443", "expected scheme://host[:port]"),
        ("https://*.example.com", "expected scheme://host[:port]"),
        ("app.example.com", "expected scheme://host[:port]"),
        ("https://user@app.example.com", "expected scheme://host[:port]"),
        ("https://app.example.com?x", "expected scheme://host[:port]"),
    ],
)
def test_origins_refused(origin: str, expected: str) -> None:
    problem = origin_problem(origin)
    assert problem is not None
    assert expected in problem


def test_header_list() -> None:
    assert header_list(["Content-Type, ,X-A", "\tx-b\t", ""]) == ["content-type", "x-a", "x-b"]


def test_preflight_and_actual() -> None:
    cors = CorsPolicy(frozenset({APP}), ("GET", "PUT"), ("X-A",), ("X-Total",), credentials=True, max_age=60)
    granted = cors.preflight(APP, "PUT", ["x-a"])
    assert isinstance(granted, list)
    assert dict(granted)["Access-Control-Allow-Origin"] == APP
    assert dict(granted)["Access-Control-Max-Age"] == "60"
    assert cors.preflight("https://other.example", "PUT", []) is Reason.CORS_ORIGIN_NOT_ALLOWED
    assert cors.preflight(APP, "put", []) is Reason.CORS_METHOD_NOT_ALLOWED  # methods are case-sensitive
    assert cors.preflight(APP, "GET", ["x-a, x-b"]) is Reason.CORS_HEADER_NOT_ALLOWED
    assert cors.actual(None) == [("Vary", "Origin")]
    assert cors.actual(APP) == [
        ("Access-Control-Allow-Origin", APP),
        ("Vary", "Origin"),
        ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Expose-Headers", "X-Total"),
    ]


def test_any_origin_never_with_credentials() -> None:
    with pytest.raises(ValueError, match="never with credentials"):
        CorsPolicy(frozenset({"*"}), ("GET",), credentials=True)


def test_request_id_format() -> None:
    for good in ("a", "A-z_0.9:x", "0f8e2c1a-9b7d-4e3f-a2c1-d4e5f6a7b8c9", "x" * MAX_LENGTH):
        assert well_formed(good), good
    for bad in ("", "x" * (MAX_LENGTH + 1), "a b", "a=b", 'a"', "a\n", "caf\u00e9", "a/b", "a;b"):
        assert not well_formed(bad), bad
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    r = RequestIds()
    assert r.choose(["abc"], trusted=True) == "abc"
    assert r.choose(["abc"], trusted=False) != "abc"
    assert r.choose(["abc", "abc"], trusted=True) != "abc"


ROUTE = """\
routes:
  - name: r
    match: {prefix: /r, methods: [GET, POST]}
    upstream: http://127.0.0.1:81
    auth: public
    cors:
"""


@pytest.mark.parametrize(
    ("cors", "expected"),
    [
        (
            "      allow_origins: ['*']\n      allow_credentials: true\n",
            "8: routes[0].cors.allow_credentials: credentials cannot be allowed for every origin ('*'): "
            "expected the exact origins to allow",
        ),
        (
            "      allow_origins: ['*', 'https://a.example']\n",
            "7: routes[0].cors.allow_origins: '*' allows every origin: expected it alone, or exact origins only",
        ),
        (
            "      allow_origins: ['null']\n",
            "7: routes[0].cors.allow_origins[0]: the 'null' origin cannot be allowed: any page can send it "
            "(a sandboxed iframe, a file: page); expected scheme://host[:port]",
        ),
        (
            "      allow_origins:\n        - https://a.example\n        - https://b.example/\n",
            "9: routes[0].cors.allow_origins[1]: not an origin: 'https://b.example/' "
            "(no path or trailing slash: expected 'https://b.example')",
        ),
        (
            "      allow_origins: [https://a.example]\n      allow_methods: [GET, DELETE]\n",
            "8: routes[0].cors.allow_methods[1]: DELETE is not one of this route's match.methods ['GET', 'POST']",
        ),
        (
            "      allow_origins: [https://a.example]\n      allow_headers: ['*']\n",
            "8: routes[0].cors.allow_headers[0]: '*' is not accepted here (expected the header names, "
            "e.g. Content-Type)",
        ),
        (
            "      allow_origins: [https://a.example]\n      max_age: 2d\n",
            "8: routes[0].cors.max_age: expected whole seconds, at most 24h (browsers cap it lower still)",
        ),
        (
            "      allow_origins: []\n",
            "7: routes[0].cors.allow_origins: expected at least one entry",
        ),
        (
            "      allow_origins: [https://a.example]\n      allow_origin: [https://b.example]\n",
            "8: routes[0].cors.allow_origin: unknown field 'allow_origin' (expected one of: allow_credentials, "
            "allow_headers, allow_methods, allow_origins, expose_headers, max_age)",
        ),
    ],
)
def test_cors_errors_at_load(tmp_path: Path, cors: str, expected: str) -> None:
    assert errors(tmp_path, ROUTE + cors) == [expected]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Authorization", "cannot carry the request ID"),
        ("X-Forwarded-For", "cannot carry the request ID"),
        ("Access-Control-Allow-Origin", "cannot carry the request ID"),
        ("Set-Cookie", "cannot carry the request ID"),
        ("X-Auth-Request", "is an identity header"),
        ("X Request", "not valid: 'X Request' (expected an HTTP header name such as X-Auth-Subject)"),
    ],
)
def test_request_id_header_errors_at_load(tmp_path: Path, header: str, expected: str) -> None:
    text = f"server:\n  request_id:\n    header: {header}\n" + ROUTE.removesuffix("    cors:\n")
    (line,) = errors(tmp_path, text)
    assert line.startswith("3: server.request_id.header: ")
    assert expected in line
