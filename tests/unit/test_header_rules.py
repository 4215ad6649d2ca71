"""The memoised request-header rules give what the rules say, header by header.

The reference below is the rule written out plainly (as the gateway applied it before
the per-spelling memo); the test drives both with random spellings of the headers
that matter, trusted and untrusted peers, and `Connection` lists."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth.forward import IdentityHeaders, fold
from gateway.overrides import OVERRIDE_PREFIXES, OVERRIDES
from gateway.proxy.headers import (
    _REQUEST_DROP,
    KEEP,
    ForwardedFor,
    RequestHeaderRules,
    _spoofable,
    connection_tokens,
    upstream_request_headers,
)

IDENTITY = IdentityHeaders.of("X-Auth-", ["X-Tenant"])
TRUSTED = ForwardedFor((ipaddress.ip_network("10.0.0.0/8"),))


def reference(
    inbound: CIMultiDictProxy[str], peer: str, keep_authorization: bool, claims: list[tuple[str, str]]
) -> dict[str, list[str]]:
    drop = connection_tokens(inbound)
    trusted = TRUSTED.is_trusted(peer)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in inbound.items():
        folded = fold(name)
        if folded in _REQUEST_DROP or folded in drop:
            continue
        bare = folded.removeprefix("http-")
        if bare in OVERRIDES or bare.startswith(OVERRIDE_PREFIXES):
            continue
        if _spoofable(folded) and not (trusted and name.lower() == folded):
            continue
        if bare != folded and (_spoofable(bare) or IDENTITY.reserved(bare)):
            continue
        if folded == "authorization" and not keep_authorization:
            continue
        if IDENTITY.reserved(folded):
            continue
        out.add(name, value)
    for name, value in claims:
        out.add(name, value)
    prior = ", ".join(out.getall("X-Forwarded-For", ()))
    out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    if "X-Forwarded-Proto" not in out:
        out["X-Forwarded-Proto"] = "http"
    if "X-Forwarded-Host" not in out:
        out["X-Forwarded-Host"] = "gw.example"
    return by_name(out.items())


def by_name(items: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in items:
        grouped.setdefault(name.lower(), []).append(value)
    return grouped


def spellings(rng: random.Random, name: str) -> str:
    chars = [c.upper() if rng.random() < 0.3 else c for c in name]
    return "".join(rng.choice("-_.~") if c == "-" and rng.random() < 0.3 else c for c in chars)


def test_memoised_rules_agree_with_the_plain_rules() -> None:
    rng = random.Random(5)  # noqa: S311 - reproducible test inputs, not secrets
    names = [
        "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "forwarded", "x-real-ip",
        "authorization", "x-auth-subject", "x-tenant", "host", "content-length", "te", "upgrade", "x-original-url",
        "accept", "user-agent", "x-request-id", "cookie", "x-http-method-override", "keep-alive",
        "x-envoy-original-path", "x-forwarded-prefix", "http-x-original-url", "x-script-name", "x-envoyx",
        "http-accept", "x-http-method", "true-client-ip", "client-ip", "cf-connecting-ip",
        "http-x-auth-subject", "http-x-forwarded-for", "http-client-ip", "x-forwarded", "forwarded-for",
        "x-originating-ip", "http-x-tenant",
    ]  # fmt: skip
    rules = RequestHeaderRules(IDENTITY)
    kept = 0
    for _ in range(3000):
        inbound: CIMultiDict[str] = CIMultiDict()
        for _ in range(rng.randrange(1, 8)):
            inbound.add(spellings(rng, rng.choice(names)), f"v{rng.randrange(100)}")
        if rng.random() < 0.3:
            inbound.add("Connection", ", ".join(spellings(rng, rng.choice(names)) for _ in range(2)))
        proxy = CIMultiDictProxy(inbound)
        peer = rng.choice(["10.1.2.3", "192.0.2.9"])
        keep = rng.random() < 0.5
        claims = [("X-Auth-Subject", "alice")] if rng.random() < 0.5 else []
        ours = upstream_request_headers(
            proxy, peer=peer, scheme="http", host="gw.example", forwarded=TRUSTED, rules=rules,
            keep_authorization=keep, claims=claims,
        )  # fmt: skip
        assert by_name(ours) == reference(proxy, peer, keep, claims), inbound
        kept += len(ours) - 3
    assert kept > 3000  # client headers did cross, many times


def test_the_memo_stays_small_whatever_names_clients_send() -> None:
    rules = RequestHeaderRules(IDENTITY)
    for i in range(10_000):
        rules.kind(f"x-{i}")
    rules.kind("x-" + "a" * 100)
    assert len(rules._memo) == 4096
    assert ("x-" + "a" * 100) not in rules._memo


OVERRIDE_SPELLINGS = [
    # path
    "X-Envoy-Original-Path", "x-envoy-original-url", "X_Envoy_Original_Path", "X-Original-URL", "X_ORIGINAL_URL",
    "HTTP_X_ORIGINAL_URL", "Http-X-Original-Url", "X-Rewrite-URL", "X.Rewrite.Url", "X-Original-URI",
    "X-Original-Path", "X-Forwarded-Prefix", "X_Forwarded_Prefix", "X-Forwarded-Path", "X-Forwarded-Uri",
    "X-Forwarded-Url", "X-Replaced-Path", "X-Script-Name", "x_script_name", "X-Override-URL", "X-Proxy-Url",
    "X-Request-URI", "Request-Uri", "Request_URI", "X-HTTP-DestinationURL",
    # method
    "X-HTTP-Method-Override", "x_http_method_override", "X-HTTP-Method", "X-Method-Override",
    "X-Original-Method", "X-Forwarded-Method", "HTTP_X_HTTP_METHOD_OVERRIDE",
    # host and scheme
    "X-Host", "X-HTTP-Host-Override", "X-Original-Host", "X-Scheme", "X-Url-Scheme", "Front-End-Https",
    "X-Original-Prefix", "X-Original-Proto", "X-WAWS-Unencoded-URL",
    # any Envoy-internal header
    "X-Envoy-Original-Dst-Host", "x-envoy-internal", "X-Envoy-Upstream-Rq-Timeout-Ms", "X.Envoy.Retry.On",
]  # fmt: skip


def test_override_headers_are_dropped_in_every_spelling_even_from_a_trusted_peer() -> None:
    rules = RequestHeaderRules(IDENTITY)
    inbound = CIMultiDictProxy(CIMultiDict([(name, "/admin") for name in OVERRIDE_SPELLINGS] + [("X-Kept", "1")]))
    for peer in ("10.1.2.3", "192.0.2.9"):
        ours = upstream_request_headers(
            inbound, peer=peer, scheme="http", host="gw.example", forwarded=TRUSTED, rules=rules,
            keep_authorization=True, claims=[],
        )  # fmt: skip
        assert sorted(by_name(ours)) == ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-kept"]


def test_names_near_an_override_are_kept() -> None:
    rules = RequestHeaderRules(IDENTITY)
    for name in ("X-Original", "X-Envoy", "X-Envoyx-Foo", "X-Hosts", "X-Request-Id", "Http-Accept", "Script-Name"):
        assert rules.kind(name)[0] == KEEP, name
