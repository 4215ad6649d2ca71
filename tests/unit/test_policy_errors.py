"""Config errors name the file, the line, the field path, and what was expected."""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import pytest

from gateway.policy import ConfigError, load_policy
from gateway.policy.source import _SCALAR_LOADER, SourceError, parse_yaml
from gateway.runtime.cpus import available_cpus

GOOD_ROUTE = """\
  - name: ok
    match: {prefix: /ok}
    upstream: http://127.0.0.1:81
    auth: public
"""

WORKERS_EXPECTED = "(expected a whole number from 1 to 256, or auto)"
FRAME_RATE_EXPECTED = "(expected a whole number from 10 to 1000000)"


def errors(tmp_path: Path, text: str) -> list[str]:
    f = tmp_path / "config.yaml"
    f.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        load_policy(str(f))
    prefix = f"{f}:"
    lines = list(info.value.lines)
    assert all(line.startswith(prefix) for line in lines), lines
    return [line[len(prefix) :] for line in lines]


def test_bad_upstream_names_line_field_and_expectation(tmp_path: Path) -> None:
    text = (
        "routes:\n"
        + GOOD_ROUTE
        + GOOD_ROUTE.replace("ok", "b")
        + GOOD_ROUTE.replace("ok", "c").replace("http://127.0.0.1:81", "orders:80")
    )
    assert errors(tmp_path, text) == [
        "12: routes[2].upstream: not a URL: 'orders:80' (expected http(s)://host[:port][/base])"
    ]


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("listen: nowhere\n", "1: listen: not a listen address: 'nowhere' (expected host:port"),
        (
            "bogus: 1\n",
            "1: bogus: unknown field 'bogus' "
            "(expected one of: access_log, admin, identity, listen, providers, routes, server, tls, token_cache, "
            "upstream_tls)",
        ),
        ("server:\n  shutdown_timeout: 10\n", "2: server.shutdown_timeout: not a duration: 10 (expected"),
        ("server:\n  shutdown_timeout: 10y\n", "2: server.shutdown_timeout: not a duration: '10y' (expected"),
        ("server:\n  trusted_proxies: [nope]\n", "2: server.trusted_proxies[0]: not a network: 'nope'"),
        ("server:\n  workers: 0\n", f"2: server.workers: not a worker count: 0 {WORKERS_EXPECTED}"),
        ("server:\n  workers: 257\n", f"2: server.workers: not a worker count: 257 {WORKERS_EXPECTED}"),
        ("server:\n  workers: '2'\n", f"2: server.workers: not a worker count: '2' {WORKERS_EXPECTED}"),
        ("server:\n  workers: 1.5\n", f"2: server.workers: not a worker count: 1.5 {WORKERS_EXPECTED}"),
        ("server:\n  workers: true\n", f"2: server.workers: not a worker count: true {WORKERS_EXPECTED}"),
        ("server:\n  workers: AUTO\n", f"2: server.workers: not a worker count: 'AUTO' {WORKERS_EXPECTED}"),
        ("server:\n  watch: 'yes'\n", "2: server.watch: expected true or false"),
        *(
            (
                f"server:\n  websocket_max_client_frames_per_second: {bad}\n",
                f"2: server.websocket_max_client_frames_per_second: not a frame rate: {bad} {FRAME_RATE_EXPECTED}",
            )
            for bad in ("9", "1000001", "true", "'2000'", "1.5")
        ),
    ],
)
def test_top_level_fields(tmp_path: Path, snippet: str, expected: str) -> None:
    [message] = errors(tmp_path, snippet + "routes:\n" + GOOD_ROUTE)
    assert message.startswith(expected), message


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ("    match: {prefix: /ok}\n    upstream: http://u\n    auth: public\n", "3: routes[0].name: required field"),
        ("    name: x\n    match: {prefix: /ok}\n    upstream: http://u\n", "3: routes[0].auth: required field"),
        (
            "    name: x\n    match: {prefix: /ok, paht: /x}\n    upstream: http://u\n    auth: public\n",
            "4: routes[0].match.paht: unknown field 'paht' (expected one of: host, methods, path, prefix)",
        ),
        (
            "    name: x\n    match: {prefix: /a/../b}\n    upstream: http://u\n    auth: public\n",
            "4: routes[0].match.prefix: not a canonical path: '/a/../b'",
        ),
        (
            "    name: x\n    match: {prefix: /a/}\n    upstream: http://u\n    auth: public\n",
            "4: routes[0].match.prefix: trailing slash in '/a/' (expected '/a'",
        ),
        (
            "    name: x\n    match: {path: /a, prefix: /b}\n    upstream: http://u\n    auth: public\n",
            "4: routes[0].match: expected exactly one of 'path' or 'prefix'",
        ),
        (
            "    name: x\n    match: {path: /a, methods: [get]}\n    upstream: http://u\n    auth: public\n",
            "4: routes[0].match.methods[0]: not an HTTP method: 'get'",
        ),
        (
            "    name: x\n    match: {path: /a}\n    upstream: http://u\n    strip_prefix: true\n    auth: public\n",
            "3: routes[0]: strip_prefix needs a 'match.prefix'",
        ),
        (
            "    name: x\n    match: {path: /a}\n    upstream: http://u\n    auth: private\n",
            "6: routes[0].auth: expected 'public' or a mapping with 'any_of",
        ),
        (
            "    name: x\n    match: {path: /a}\n    upstream: http://u\n"
            "    timeouts: {read: fast}\n    auth: public\n",
            "6: routes[0].timeouts.read: not a duration: 'fast'",
        ),
        (
            "    name: x\n    match: {path: /a}\n    upstream: http://u/a/../b\n    auth: public\n",
            "5: routes[0].upstream: base path of 'http://u/a/../b' is not canonical",
        ),
    ],
)
def test_route_fields(tmp_path: Path, route: str, expected: str) -> None:
    [message] = errors(tmp_path, "routes:\n  -\n" + route)
    assert message.startswith(expected), message


def test_unknown_provider_lists_known_ones(tmp_path: Path) -> None:
    text = """\
    providers:
      corp-idp:
        issuer: https://idp.example
        audiences: [api]
        algorithms: [RS256]
        keys: [{jwks_url: https://idp.example/jwks}]
      api-tokens:
        issuer: https://gw.example
        audiences: [api]
        algorithms: [EdDSA]
        keys: [{jwks_file: /etc/gw/jwks.json}]
    routes:
      - name: x
        match: {prefix: /x}
        upstream: http://u
        auth:
          any_of: [corp-idp, corp_idp]
    """
    found = errors(tmp_path, text)
    assert "17: routes[0].auth.any_of[1]: unknown provider 'corp_idp' (expected one of: api-tokens, corp-idp)" in found


def test_provider_refuses_none_and_mixed_algorithms(tmp_path: Path) -> None:
    text = """\
    providers:
      a: {issuer: i, audiences: [x], algorithms: [none], keys: [{pem_file: k.pem}]}
      b: {issuer: i, audiences: [x], algorithms: [RS256, HS256], keys: [{pem_file: k.pem}]}
      c: {issuer: i, audiences: [x], algorithms: [HS256], keys: [{hmac_secret: {value: hunter2hunter2}}]}
    routes:
      - {name: x, match: {prefix: /x}, upstream: "http://u", auth: public}
    """
    found = errors(tmp_path, text)
    assert found[0].startswith("2: providers.a.algorithms[0]: unsupported algorithm 'none'")
    assert found[1] == "3: providers.b.algorithms: HMAC and asymmetric algorithms cannot be mixed in one provider"
    assert found[2].startswith(
        "4: providers.c.keys[0].hmac_secret.value: unknown field 'value' (expected one of: env, file)"
    )


def test_leeway_is_capped_at_five_minutes(tmp_path: Path) -> None:
    text = """\
    providers:
      a:
        issuer: i
        audiences: [x]
        algorithms: [RS256]
        keys: [{pem_file: k.pem}]
        leeway: 1h
      b: {issuer: i, audiences: [x], algorithms: [RS256], keys: [{pem_file: k.pem}], leeway: 301s}
    routes:
      - {name: x, match: {prefix: /x}, upstream: "http://u", auth: public}
    """
    assert errors(tmp_path, text) == [
        "7: providers.a.leeway: leeway 1h is too long (expected at most 5m)",
        "8: providers.b.leeway: leeway 301s is too long (expected at most 5m)",
    ]


def test_several_problems_are_all_reported_in_line_order(tmp_path: Path) -> None:
    text = """\
    routes:
      - {name: dup, match: {prefix: /a}, upstream: "http://u", auth: public}
      - {name: dup, match: {prefix: /b}, upstream: "http://u", auth: public}
      - {name: z, match: {prefix: /c}, upstream: "ftp://u", auth: public}
    """
    found = errors(tmp_path, text)
    assert found == ["4: routes[2].upstream: not a URL: 'ftp://u' (expected http(s)://host[:port][/base])"]
    text = text.replace("ftp://u", "http://u")
    assert errors(tmp_path, text) == ["3: routes[1].name: duplicate route name 'dup' (also routes[0])"]


def test_yaml_problems(tmp_path: Path) -> None:
    assert errors(tmp_path, "routes: [\n")[0].startswith("2: not valid YAML")
    dup = "routes:\n" + GOOD_ROUTE + "routes: []\n"
    assert errors(tmp_path, dup) == ["6: routes: duplicate key 'routes'"]
    assert errors(tmp_path, "- a\n") == ["1: expected a mapping with 'routes' at the top level"]
    assert errors(tmp_path, "listen: 127.0.0.1:8080\n") == ["1: routes: required field is missing"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Tags are applied after parsing: each of these was a traceback, not exit 2.
        ("listen: !foo x\n", "1: listen: not a valid value: could not determine a constructor for the tag '!foo'"),
        # Never the conversion's own text, which quotes the value (found by review).
        ("routes:\n  - !!int abc\n", "2: routes[0]: not a valid int"),
        ("routes: !!int\n", "1: routes: not a valid int"),
        ("routes: !!timestamp\n", "1: routes: not a valid timestamp"),
        ("? !!float x\n: 1\n", "1: not a valid float"),
        # An alias inside itself is infinitely deep (was RecursionError).
        (
            "routes: &r [*r]\n",
            "1: routes" + "[0]" * 64 + ": nested too deeply (at most 64 levels; or an alias contains itself)",
        ),
        # Deeper than PyYAML's own recursion (was RecursionError).
        ("routes: " + "[" * 2000 + "]" * 2000 + "\n", "1: nested too deeply (at most 64 levels)"),
    ],
)
def test_yaml_values_that_cannot_be_built(tmp_path: Path, text: str, expected: str) -> None:
    # Found by tests/unit/test_properties_policy.py.
    assert errors(tmp_path, text) == [expected]


def test_aliases_expand_to_a_bounded_number_of_values(tmp_path: Path) -> None:
    # A few lines of aliases of aliases are 10**6 values: refused at 100 000, quickly.
    lines = ["a: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6)]
    lines[0] = lines[0].replace("a: ", "a0: ")
    found = errors(tmp_path, "\n".join(lines) + "\n")
    assert len(found) == 1
    assert found[0].endswith(": more than 100000 values (aliases expanded)")


def test_parsing_keeps_no_yaml_node_alive() -> None:
    # The module-wide scalar loader cached every node it built: each load (each reload
    # of a running gateway) grew it by the policy's size, for the process's life.
    text = Path(__file__).resolve().parents[2].joinpath("config.example.yaml").read_text()
    for bad in (text, text, "a: !!int x\n"):
        with contextlib.suppress(SourceError):
            parse_yaml(bad, "config.yaml")
    assert not _SCALAR_LOADER.constructed_objects
    assert not _SCALAR_LOADER.recursive_objects


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the policy file"):
        load_policy(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize(
    ("snippet", "workers", "auto", "watch"),
    [
        ("", 1, False, True),
        ("server:\n  workers: 256\n  watch: false\n", 256, False, False),
        ("server:\n  workers: auto\n", available_cpus(), True, True),
    ],
)
def test_workers_and_watch(tmp_path: Path, snippet: str, workers: int, auto: bool, watch: bool) -> None:
    f = tmp_path / "config.yaml"
    f.write_text(snippet + "routes:\n" + GOOD_ROUTE)
    policy = load_policy(str(f))
    assert (policy.workers, policy.workers_auto, policy.watch) == (workers, auto, watch)


def test_a_key_with_a_control_character_is_named_escaped_on_one_line(tmp_path: Path) -> None:
    """The field path is the file's own spelling: a newline in a key used to split the
    report, leaving a line without its `file:line:` (found by the property tests)."""
    found = errors(tmp_path, 'server:\n  "shutdown\\ntimeout\\u001b[2J": 1\nroutes:\n' + GOOD_ROUTE)
    assert len(found) == 1, found  # and `errors` checked that every line is located
    assert found[0].startswith("2: server.'shutdown\\ntimeout\\x1b[2J': unknown field"), found


@pytest.mark.parametrize(
    ("snippet", "rate"), [("", 2000), ("server:\n  websocket_max_client_frames_per_second: 10\n", 10)]
)
def test_the_client_frame_rate(tmp_path: Path, snippet: str, rate: int) -> None:
    f = tmp_path / "config.yaml"
    f.write_text(snippet + "routes:\n" + GOOD_ROUTE)
    assert load_policy(str(f)).websocket_client_frame_rate == rate


@pytest.mark.parametrize("value", ["true", "'50'", "50.0"])
def test_a_count_is_a_whole_number_not_a_flag_a_string_or_a_float(tmp_path: Path, value: str) -> None:
    """`max_websockets: true` used to load as 1 (pydantic's lax int takes a bool)."""
    assert errors(tmp_path, f"server:\n  max_websockets: {value}\nroutes:\n" + GOOD_ROUTE) == [
        "2: server.max_websockets: expected a whole number"
    ]


@pytest.mark.parametrize("tag", ["!!int", "!!float", "!!bool"])
def test_a_tagged_value_that_cannot_be_built_is_never_quoted(tmp_path: Path, tag: str) -> None:
    """A secret pasted inline by mistake, with a tag: the conversion's error quoted it,
    and the report goes to stderr and to the reload log (found by review)."""
    text = f"providers:\n  p:\n    issuer: https://i\n    keys: [{{hmac_secret: {tag} s3cretinline}}]\nroutes:\n"
    found = errors(tmp_path, text + GOOD_ROUTE)
    assert not any("s3cretinline" in line for line in found), found
    assert f"4: providers.p.keys[0].hmac_secret: not a valid {tag[2:]}" in found
