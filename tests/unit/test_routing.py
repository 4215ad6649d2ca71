"""Route table: order, segment-aware prefixes, methods, hosts, prefix stripping, shadowing."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from gateway.policy import load_policy
from gateway.routing import CompiledRoute, RouteTable, parse_host, request_host


def table(tmp_path: Path, routes: str) -> RouteTable:
    f = tmp_path / "p.yaml"
    f.write_text("routes:\n" + textwrap.indent(textwrap.dedent(routes), "  "))
    return load_policy(str(f)).table


def name(t: RouteTable, method: str, path: str, host: str = "") -> str | None:
    r = t.match(method, host, path)
    return r.name if r else None


def test_first_match_wins_and_prefix_is_segment_aware(tmp_path: Path) -> None:
    t = table(
        tmp_path,
        """
        - {name: exact, match: {path: /orders/special}, upstream: "http://u", auth: public}
        - {name: orders, match: {prefix: /orders}, upstream: "http://u", auth: public}
        - {name: root, match: {prefix: /}, upstream: "http://u", auth: public}
        """,
    )
    assert name(t, "GET", "/orders/special") == "exact"
    assert name(t, "GET", "/orders/special/x") == "orders"
    assert name(t, "GET", "/orders") == "orders"
    assert name(t, "GET", "/orders/7") == "orders"
    assert name(t, "GET", "/ordersX") == "root"
    assert name(t, "GET", "/") == "root"


def test_methods_and_host(tmp_path: Path) -> None:
    t = table(
        tmp_path,
        """
        - {name: read, match: {prefix: /a, methods: [GET, HEAD]}, upstream: "http://u", auth: public}
        - {name: hosted, match: {prefix: /a, host: API.example.com}, upstream: "http://u", auth: public}
        """,
    )
    assert name(t, "GET", "/a") == "read"
    assert name(t, "POST", "/a") is None
    assert name(t, "POST", "/a", "api.example.com") == "hosted"
    assert name(t, "POST", "/a", "other.example.com") is None
    assert request_host("API.Example.com:8443") == "api.example.com"
    assert request_host("[::1]:80") == "[::1]"
    assert request_host("api.example.com.:80") == "api.example.com"
    assert name(t, "POST", "/a", request_host("API.example.com.")) == "hosted"


def test_a_route_host_with_a_trailing_dot_is_the_same_name(tmp_path: Path) -> None:
    t = table(tmp_path, '- {name: h, match: {prefix: /, host: api.example.com.}, upstream: "http://u", auth: public}')
    assert name(t, "GET", "/", request_host("api.example.com")) == "h"
    assert name(t, "GET", "/", request_host("api.example.com.")) == "h"


def test_parse_host_accepts_one_spelling_per_host() -> None:
    assert parse_host("gw.test:65535") == "gw.test"
    assert parse_host("GW.test:1") == "gw.test"
    assert parse_host("a_b-c.d.") == "a_b-c.d"
    assert parse_host("[::FFFF:1.2.3.4]:443") == "[::ffff:1.2.3.4]"
    assert parse_host("a" * 253 + ".") == "a" * 253
    for bad in [
        "gw.test:99999", "gw.test:65536", "gw.test:123456", "gw.test:0", "gw.test:0080", "gw.test:", "gw.test:8o",
        "gw.test:+80", "gw.test:\u0661", "gw.test:80:80", "a@b", "a%2eb", "a..b", ".a", "a..", "", ":80", "[::1",
        "[::1]:0", "[::1]x", "[fe80::1%eth0]", "[v1.x]", "[1.2.3.4]", "[]", "caf\u00e9.test", "a" * 254, "a b",
        "\u212aiosk.test", "\u212aIOSK.TEST:80",
    ]:  # fmt: skip
        assert parse_host(bad) is None, bad


def test_parse_host_is_linear_on_hostile_values() -> None:
    # Correct answers on the shapes that make a backtracking pattern explode; the
    # length cap answers anything longer than a host name can be.
    assert parse_host("a." * 127) == "a." * 126 + "a"
    assert parse_host("a." * 126 + "-!") is None
    assert parse_host("a" * 253 + "!") is None
    assert parse_host("a." * 50_000) is None
    assert parse_host("[" + ":" * 50_000 + "]") is None


def test_upstream_path(tmp_path: Path) -> None:
    t = table(
        tmp_path,
        """
        - {name: s, match: {prefix: /cat}, upstream: "http://u/v1/", strip_prefix: true, auth: public}
        - {name: k, match: {prefix: /keep}, upstream: "http://u/base", auth: public}
        - {name: r, match: {prefix: /}, upstream: "http://u", strip_prefix: true, auth: public}
        """,
    )
    s, k, r = t.routes
    assert s.upstream_path("/cat/items/1") == "/v1/items/1"
    assert s.upstream_path("/cat") == "/v1"
    assert k.upstream_path("/keep/x") == "/base/keep/x"
    assert r.upstream_path("/x/y") == "/x/y"
    assert r.upstream_path("/") == "/"
    assert str(s.upstream) == "http://u:80/v1"


def test_shadowing(tmp_path: Path) -> None:
    t = table(
        tmp_path,
        """
        - {name: all, match: {prefix: /api}, upstream: "http://u", auth: public}
        - {name: under, match: {prefix: /api/v2}, upstream: "http://u", auth: public}
        - {name: exact, match: {path: /api}, upstream: "http://u", auth: public}
        - {name: getonly, match: {prefix: /b, methods: [GET]}, upstream: "http://u", auth: public}
        - {name: anymethod, match: {prefix: /b/c}, upstream: "http://u", auth: public}
        - {name: getsub, match: {path: /b/c, methods: [GET]}, upstream: "http://u", auth: public}
        - {name: apix, match: {prefix: /apix}, upstream: "http://u", auth: public}
        - {name: hosted, match: {prefix: /h, host: a.example}, upstream: "http://u", auth: public}
        - {name: unhosted, match: {prefix: /h}, upstream: "http://u", auth: public}
        """,
    )
    pairs = [(later.name, earlier.name) for later, earlier in t.shadowed()]
    assert pairs == [("under", "all"), ("exact", "all"), ("getsub", "getonly")]


def test_indexed_matching_agrees_with_a_linear_scan(tmp_path: Path) -> None:
    import random

    rng = random.Random(7)  # noqa: S311 - a reproducible test sequence, not a secret
    segments = ["a", "b", "c", "ab"]
    lines = []
    for i in range(200):
        path = "/" + "/".join(rng.choice(segments) for _ in range(rng.randint(0, 3)))
        kind = "prefix" if rng.random() < 0.6 else "path"
        methods = rng.choice(["", ", methods: [GET]", ", methods: [POST, PUT]"])
        host = rng.choice(["", "", ", host: h.example"])
        lines.append(
            f'- {{name: r{i}, match: {{{kind}: "{path}"{methods}{host}}}, upstream: "http://u", auth: public}}'
        )
    t = table(tmp_path, "\n".join(lines) + "\n")
    for _ in range(2000):
        path = "/" + "/".join(rng.choice([*segments, "x"]) for _ in range(rng.randint(0, 4)))
        method = rng.choice(["GET", "POST", "PUT", "DELETE"])
        host = rng.choice(["", "h.example", "other"])
        linear = next((r for r in t.routes if r.matches(method, host, path)), None)
        assert t.match(method, host, path) is linear, (method, host, path)


class _CountingDict(dict[str, tuple[CompiledRoute, ...]]):
    """Counts the characters of every key looked up: the walk's work, without a clock."""

    looked_up = 0

    def get(self, key: str, default: Any = None) -> Any:
        self.looked_up += len(key)
        return super().get(key, default)


def test_matching_a_long_path_looks_at_no_more_than_the_longest_prefix(tmp_path: Path) -> None:
    t = table(
        tmp_path,
        """
        - {name: exact, match: {path: /a/b}, upstream: "http://u", auth: public}
        - {name: deep, match: {prefix: /a/a/a}, upstream: "http://u", auth: public}
        - {name: a, match: {prefix: /a}, upstream: "http://u", auth: public}
        - {name: root, match: {prefix: /}, upstream: "http://u", auth: public}
        """,
    )
    counting = _CountingDict(t._prefix)
    object.__setattr__(t, "_prefix", counting)
    hostile = "/a" * 50_000  # 100 KB, 50 000 segments
    assert name(t, "GET", hostile) == "deep"
    assert name(t, "GET", "/a/b" * 25_000) == "a"
    assert name(t, "GET", "/b" * 50_000) == "root"
    # Keys no longer than the longest prefix (6), plus the root: it was every segment
    # prefix of the path, about 2.5 billion characters for these three.
    assert counting.looked_up <= 3 * (1 + 2 + 4 + 6)
    assert name(t, "GET", "/a/b") == "exact"
    assert name(t, "GET", "/a/a/a") == "deep"
    assert name(t, "GET", "/a/a/ab") == "a"


def test_mismatch_names_the_first_test_a_request_fails(tmp_path: Path) -> None:
    """The one rule the table matches with and `gateway explain` reports."""
    t = table(
        tmp_path,
        """
        - {name: api, match: {prefix: /api, methods: [GET], host: api.test}, upstream: "http://u", auth: public}
        - {name: exact, match: {path: /x}, upstream: "http://u", auth: public}
        """,
    )
    api, exact = t.routes
    assert api.mismatch("POST", "other.test", "/apix") == "path"  # path first, whatever else fails
    assert api.mismatch("POST", "other.test", "/api/7") == "method"
    assert api.mismatch("GET", "other.test", "/api/7") == "host"
    assert api.mismatch("GET", "api.test", "/api/7") is None
    assert exact.mismatch("GET", "", "/x/") == "path"
    assert exact.mismatch("DELETE", "", "/x") is None
    assert api.matches("GET", "api.test", "/api") is True
    assert exact.matches("GET", "", "/y") is False
