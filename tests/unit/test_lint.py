"""`gateway check` warnings (policy/lint.py): each fires on its case, located, and not on its near miss."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policy.lint import LONG_LIFETIME
from gateway.policy.load import load_policy_linted

SECRET = "s" * 64


def warnings(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "secret").write_text(SECRET)
    path = tmp_path / "p.yaml"
    path.write_text(text)
    _, found = load_policy_linted(str(path))
    prefix = f"{path}:"
    assert all(w.startswith(prefix) for w in found), found
    return [w.removeprefix(prefix) for w in found]


PROVIDER = """\
providers:
  local: {issuer: https://idp.test, audiences: [a], algorithms: [HS256], keys: [{hmac_secret: {file: secret}}]}
"""


def test_a_clean_policy_has_no_warnings(tmp_path: Path) -> None:
    text = (
        "listen: 0.0.0.0:8080\nadmin: {listen: 127.0.0.1:9901}\n" + PROVIDER + "routes:\n"
        "  - {name: health, match: {path: /healthz}, upstream: 'http://127.0.0.1:1', auth: public}\n"
        "  - {name: api, match: {prefix: /api}, upstream: 'https://api.internal', auth: {any_of: [local]}}\n"
        "  - {name: v6, match: {prefix: /v6}, upstream: 'http://[::1]:1', auth: {any_of: [local], optional: true}}\n"
        "  - {name: all, match: {prefix: /}, upstream: 'http://localhost:1', auth: {any_of: [local]}}\n"
    )
    assert warnings(tmp_path, text) == []


def test_public_route_under_a_protected_prefix(tmp_path: Path) -> None:
    text = PROVIDER + (
        "routes:\n"
        "  - {name: hook, match: {path: /api/hook}, upstream: 'http://127.0.0.1:1', auth: public}\n"
        "  - {name: get, match: {prefix: /api/docs, methods: [GET]}, upstream: 'http://127.0.0.1:1', auth: public}\n"
        "  - {name: api, match: {prefix: /api, methods: [POST]}, upstream: 'http://127.0.0.1:1',"
        " auth: {any_of: [local]}}\n"
        "  - {name: apix, match: {path: /apix}, upstream: 'http://127.0.0.1:1', auth: public}\n"
    )
    found = warnings(tmp_path, text)
    # `get` takes only GET, which `api` never does; `/apix` is not under `/api`.
    assert found == [
        "4: routes[0].auth: route 'hook' is public, under the prefix /api that 'api' (routes[2]) protects"
        " (jwt required any_of=local): requests it takes need no token"
    ]


def test_public_exceptions_to_a_protected_catch_all_are_not_warned(tmp_path: Path) -> None:
    text = PROVIDER + (
        "routes:\n"
        "  - {name: health, match: {path: /healthz}, upstream: 'http://127.0.0.1:1', auth: public}\n"
        "  - {name: all, match: {prefix: /}, upstream: 'http://127.0.0.1:1', auth: {any_of: [local]}}\n"
    )
    assert warnings(tmp_path, text) == []


def test_provider_no_route_uses(tmp_path: Path) -> None:
    text = PROVIDER + (
        "  spare: {issuer: https://b.test, audiences: [a], algorithms: [HS256],"
        " keys: [{hmac_secret: {file: secret}}]}\n"
        "routes:\n"
        "  - {name: api, match: {prefix: /api}, upstream: 'http://127.0.0.1:1', auth: {any_of: [local]}}\n"
    )
    assert warnings(tmp_path, text) == [
        "3: providers.spare: provider 'spare' is used by no route (no auth.any_of names it)"
    ]


@pytest.mark.parametrize(
    ("identity", "route_extra", "warned"),
    [
        ("identity: {claims: {}, provider_header: null}\n", "", True),
        ("identity: {claims: {}, provider_header: null}\n", ", forward_authorization: true", False),
        ("identity: {claims: {}}\n", "", False),  # the provider header still says who verified
        ("identity: {provider_header: null}\n", "", False),  # sub and iss are forwarded
    ],
)
def test_optional_route_whose_upstream_receives_no_identity(
    tmp_path: Path, identity: str, route_extra: str, warned: bool
) -> None:
    text = (
        PROVIDER
        + identity
        + "routes:\n"
        + "  - {name: maybe, match: {prefix: /m}, upstream: 'http://127.0.0.1:1',"
        + f" auth: {{any_of: [local], optional: true}}{route_extra}}}\n"
    )
    found = [w for w in warnings(tmp_path, text) if "optional" in w]
    assert found == (
        [
            "5: routes[0].auth.optional: route 'maybe' is optional, but its upstream receives no identity"
            " (no claim headers, no provider header, no Authorization): it cannot tell a verified caller"
            " from an anonymous one"
        ]
        if warned
        else []
    )


@pytest.mark.parametrize(("lifetime", "warned"), [("90d", False), ("91d", True), ("365d", True)])
def test_long_max_lifetime(tmp_path: Path, lifetime: str, warned: bool) -> None:
    text = (
        "providers:\n"
        "  local:\n"
        "    {issuer: https://idp.test, audiences: [a], algorithms: [HS256],"
        f" max_lifetime: {lifetime}, keys: [{{hmac_secret: {{file: secret}}}}]}}\n"
        "routes:\n"
        "  - {name: api, match: {prefix: /api}, upstream: 'http://127.0.0.1:1', auth: {any_of: [local]}}\n"
    )
    found = warnings(tmp_path, text)
    assert LONG_LIFETIME == 90 * 86400
    assert found == (
        [
            f"3: providers.local.max_lifetime: provider 'local' accepts tokens valid for {lifetime}, longer than"
            " 90d: a leaked token stays useful that long (revocation aside)"
        ]
        if warned
        else []
    )


@pytest.mark.parametrize(
    ("upstream", "warned"),
    [
        ("http://backend:8080", True),
        ("http://10.0.0.5", True),
        ("http://[2001:db8::1]:80", True),
        ("https://backend:8443", False),
        ("http://127.0.0.2:80", False),
        ("http://localhost:80", False),
        ("http://api.localhost", False),
        ("http://[::1]:80", False),
    ],
)
def test_plain_http_upstream_on_a_non_loopback_host(tmp_path: Path, upstream: str, warned: bool) -> None:
    text = f"routes:\n  - {{name: api, match: {{prefix: /api}}, upstream: '{upstream}', auth: public}}\n"
    found = warnings(tmp_path, text)
    assert len(found) == warned
    if warned:
        assert found[0].startswith("2: routes[0].upstream: route 'api' forwards over plain http to ")


@pytest.mark.parametrize(
    ("listen", "admin", "warned"),
    [
        ("127.0.0.1:8080", "127.0.0.1:8080", True),
        ("0.0.0.0:8080", "127.0.0.1:8080", True),
        ("localhost:8080", "127.0.0.1:8080", True),
        ("'[::]:8080'", "'[::1]:8080'", True),
        ("0.0.0.0:8080", "'[::1]:8080'", False),  # asyncio binds [::] and [::1] IPv6-only
        ("127.0.0.1:8080", "127.0.0.2:8080", False),
        ("127.0.0.1:8080", "127.0.0.1:8081", False),
        ("127.0.0.1:0", "127.0.0.1:0", False),  # each picks a free port
    ],
)
def test_two_listeners_on_one_port(tmp_path: Path, listen: str, admin: str, warned: bool) -> None:
    text = (
        f"listen: {listen}\nadmin: {{listen: {admin}}}\n"
        "routes:\n  - {name: api, match: {prefix: /api}, upstream: 'http://127.0.0.1:1', auth: public}\n"
    )
    found = warnings(tmp_path, text)
    assert len(found) == warned, found
    if warned:
        assert found[0].startswith("2: admin.listen: admin.listen ")
        assert found[0].endswith("are one port: `gateway run` cannot bind both")


def test_shadowed_routes_are_located_too(tmp_path: Path) -> None:
    text = (
        "routes:\n"
        "  - {name: api, match: {prefix: /api}, upstream: 'http://127.0.0.1:1', auth: public}\n"
        "  - {name: v2, match: {prefix: /api/v2}, upstream: 'http://127.0.0.1:1', auth: public}\n"
    )
    assert warnings(tmp_path, text) == [
        "3: routes[1].match: route 'v2' (routes[1]) can never match: every request it takes is taken first"
        " by 'api' (routes[0])"
    ]
