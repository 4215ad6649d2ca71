"""`gateway explain` reads its URL as a client would send it: the target byte for byte."""

from __future__ import annotations

import pytest

from gateway.explain.walk import split_url


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("http://gw.test/a/b?c=d", ("http", "gw.test", "/a/b?c=d")),
        ("HTTPS://gw.test:8443", ("https", "gw.test:8443", "/")),
        ("http://gw.test?q=1", ("http", "gw.test", "/?q=1")),
        # Kept as sent, so the gateway's own rules judge them (400 bad_path).
        ("http://gw.test/a/../admin", ("http", "gw.test", "/a/../admin")),
        ("http://gw.test/a%2Fb", ("http", "gw.test", "/a%2Fb")),
        ("http://[::1]:80/x", ("http", "[::1]:80", "/x")),
        # Origin-form: the Host comes from -H, if given.
        ("/orders?x=1", ("http", "", "/orders?x=1")),
        ("*", ("http", "", "*")),
    ],
)
def test_split_url(url: str, parts: tuple[str, str, str]) -> None:
    assert split_url(url) == parts
