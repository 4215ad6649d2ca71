"""Path canonicalisation: what is rewritten, what is refused."""

from __future__ import annotations

import time

import pytest

from gateway.pathnorm import Rejected, normalize_target


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/", "/", ""),
        ("/orders", "/orders", ""),
        ("/orders/7?x=1&y=%2F", "/orders/7", "x=1&y=%2F"),
        ("/orders/", "/orders/", ""),
        ("/a/./b", "/a/b", ""),
        ("/a/b/../c", "/a/c", ""),
        ("/a/b/..", "/a/", ""),
        ("/a/b/.", "/a/b/", ""),
        ("/a//b///c", "/a/b/c", ""),
        ("//admin", "/admin", ""),
        ("/%7Euser/%61bc", "/~user/abc", ""),
        ("/public/%2e%2e/admin", "/admin", ""),
        ("/public/%2E%2E/admin", "/admin", ""),
        ("/a%20b/%c3%a9", "/a%20b/%C3%A9", ""),
        ("/a%3fb", "/a%3Fb", ""),
        ("/v1.2/file.json", "/v1.2/file.json", ""),
        ("/a|b", "/a%7Cb", ""),
        ("/caf\u00e9", "/caf%C3%A9", ""),
        ("/a;b=c/d", "/a;b=c/d", ""),
        ("/100%25", "/100%25", ""),
        ("/a%2541", "/a%2541", ""),
        ("/...", "/...", ""),
        ("/a%20./b", "/a%20./b", ""),
        ("/?", "/", ""),
        ("/x?a=1?b", "/x", "a=1?b"),
    ],
)
def test_canonical(target: str, path: str, query: str) -> None:
    assert normalize_target(target) == (path, query)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/a%2Fb", "encoded slash"),
        ("/a%2fb", "encoded slash"),
        ("/a%5Cb", "backslash"),
        ("/a%5cb", "backslash"),
        ("/a\\b", "backslash"),
        ("/a%00b", "NUL"),
        ("/..", "escapes"),
        ("/a/../..", "escapes"),
        ("/%2e%2e/etc/passwd", "escapes"),
        ("/a/..;/admin", "parameters"),
        ("/a/.;x/b", "parameters"),
        ("/a%zz", "malformed"),
        ("/a%4", "malformed"),
        ("http://evil.example/admin", "origin-form"),
        ("*", "origin-form"),
        ("example.com:443", "origin-form"),
        ("", "origin-form"),
        ("/a#frag", "fragment"),
        ("/a?x#frag", "fragment"),
        ("/a\x01b", "control"),
        ("/a/%C0%AE%C0%AE/b", "not UTF-8"),
        ("/a/%C3", "not UTF-8"),
        ("/a/%C3x", "not UTF-8"),
        ("/a/%ff%2e", "not UTF-8"),
        ("/a/\udcff", "not UTF-8"),
        ("/a/%252e%252e/b", "double-encoded"),
        ("/a/%252F", "double-encoded"),
        ("/a/%255c", "double-encoded"),
        ("/a/%2525", "double-encoded"),
        ("/a/..%20/b", "whitespace"),
        ("/a/.%20", "whitespace"),
        ("/a/..%09%20./b", "whitespace"),
        ("/x?a=\u00e9", "non-ASCII"),
        ("/a\x7fb", "control"),
    ],
)
def test_rejected(target: str, why: str) -> None:
    result = normalize_target(target)
    assert isinstance(result, Rejected), result
    assert why in result.detail


def test_canonical_is_a_fixed_point() -> None:
    # Whatever we forward must itself be canonical, or a second hop would read it anew.
    for target in ["/a/./b/../c//d", "/%7e/%2e/x", "/x%20y/%c3%a9|"]:
        result = normalize_target(target)
        assert not isinstance(result, Rejected)
        assert normalize_target(result[0]) == (result[0], "")


def test_hostile_long_segments_get_the_right_answer() -> None:
    # Shapes that make a backtracking pattern quadratic (runs of dots before the one
    # character that spoils the match): each must be decided, and decided right. The
    # dot-segment pattern took 1.2 s on the first one at 8 KB; it is linear now.
    dots = "." * 8000
    assert normalize_target(f"/{dots}%21/x") == (f"/{dots}%21/x", "")
    assert isinstance(normalize_target(f"/{dots}%20/x"), Rejected)
    assert isinstance(normalize_target(f"/{dots}%09{dots}%20"), Rejected)
    blanks = ".%20" * 2000
    assert normalize_target(f"/{blanks}x") == (f"/{blanks}x", "")
    assert isinstance(normalize_target(f"/{blanks}"), Rejected)
    deep = "/a" * 4000
    assert normalize_target(deep + "/.") == (deep + "/", "")
    assert normalize_target(deep + "|") == (deep + "%7C", "")
    assert normalize_target(deep + "?" + "a=" * 4000) == (deep, "a=" * 4000)


def test_canonicalising_costs_linear_time_in_the_path() -> None:
    # A budget, not a speed target: 64 KiB of dots take milliseconds when the work is
    # linear, and over a minute of CPU with the old backtracking dot-segment pattern
    # (quadratic: 1.2 s at 8 KB). CPU time of this process only, so a busy machine
    # does not make it flaky; the margin either way is several hundredfold.
    dots = "." * 65536
    started = time.process_time()
    for target in (f"/{dots}%21/x", f"/{dots}%09{dots}!", "/a" * 32768 + "/."):
        normalize_target(target)
    assert time.process_time() - started < 2.0
