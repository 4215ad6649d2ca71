"""Validated model -> runtime objects. Cross-field checks that need the whole file live here."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path as FsPath

import aiohttp
from yarl import URL

from gateway.auth.claims import ClaimRule, ClaimRules, normalise_typ
from gateway.auth.forward import ClaimHeaders, IdentityHeaders, fold
from gateway.auth.requirement import TokenRequirement
from gateway.auth.verifier import ProviderVerifier
from gateway.keys.keyset import ALG_KINDS, UnusableKeyError, VerifyKey
from gateway.keys.provider_keys import ProviderKeys
from gateway.keys.sources import (
    FileKeys,
    KeySource,
    RemoteJwks,
    RemoteSettings,
    StaticKeys,
    insecure_url,
    parse_key_file,
)
from gateway.limits import Limits, default_max_connections
from gateway.obs.access import AccessLog
from gateway.obs.redact import Redactor
from gateway.overrides import is_override
from gateway.pathnorm import Rejected, normalize_target
from gateway.policy.errors import CompileError, Path, Problem
from gateway.policy.model import Identity, JwtAuth, Listen, Policy, Provider, Route
from gateway.policy.model import KeySource as KeySourceModel
from gateway.policy.snapshot import Reader, Snapshot, base_dir_of
from gateway.routing import CompiledRoute, PublicAccess, RouteTable, Upstream
from gateway.runtime.cpus import available_cpus
from gateway.tokens.keystore import JWKS_FILE
from gateway.tokens.revocation import RevocationError, RevocationWatcher

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MIN_HMAC_BYTES = 32
_HMAC_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
# Headers the gateway owns, that frame or encode the message, or that steer how a
# backend routes or trusts it: never a claim header.
_FORBIDDEN_CLAIM_HEADERS = frozenset(
    fold(h)
    for h in (
        "Host",
        "Authorization",
        "Proxy-Authorization",
        "Cookie",
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Expect",
        "Range",
        "If-Range",
        "Forwarded",
        "X-Real-IP",
    )
)
_FORBIDDEN_CLAIM_PREFIXES = ("content-", "x-forwarded-")


def _forbidden_claim_header(name: str) -> bool:
    folded = fold(name)
    return (
        folded in _FORBIDDEN_CLAIM_HEADERS
        or folded.startswith(_FORBIDDEN_CLAIM_PREFIXES)
        # The gateway drops these from every request; a claim in one would steer the backend.
        or is_override(folded)
    )


def _collisions(headers: list[tuple[str, Path]]) -> list[Problem]:
    """Two claims (or a claim and the provider header) in one header, in any spelling,
    would let a backend read one where the other was meant."""
    seen: dict[str, str] = {}
    out = []
    for header, path in headers:
        folded = fold(header)
        if folded in seen:
            out.append(
                Problem(
                    path,
                    f"{header!r} is the same header as {seen[folded]!r} "
                    "(compared case-insensitively, with _ and . read as -)",
                )
            )
        else:
            seen[folded] = header
    return out


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """What the running gateway uses. Built once; never mutated."""

    source: str
    listen: Listen
    admin_listen: Listen
    trusted_proxies: tuple[Network, ...]
    shutdown_timeout: float
    keepalive_timeout: float
    send_timeout: float
    table: RouteTable
    providers: tuple[ProviderKeys, ...]
    identity: IdentityHeaders
    realm: str
    max_token_bytes: int
    access_log: AccessLog
    limits: Limits = dataclasses.field(default_factory=Limits)
    cache_entries: int = 10_000
    cache_ttl: float = 300.0
    upstream_keepalive: bool = True
    websocket_idle_timeout: float = 60.0
    max_websockets: int = 1000
    reload_timeout: float = 10.0
    revocations: tuple[RevocationWatcher, ...] = ()
    # Public JWKS documents served on the public listener: path -> provider keys.
    published: Mapping[str, ProviderKeys] = dataclasses.field(default_factory=dict)
    # Worker processes to run, `auto` already resolved to this process's CPUs at load.
    workers: int = 1
    workers_auto: bool = False
    watch: bool = True
    # The files this policy was read from (`_inputs`): what `watch` watches.
    inputs: tuple[str, ...] = ()
    # What it was compiled from: the supervisor sends this to its workers.
    snapshot: Snapshot = dataclasses.field(default_factory=lambda: Snapshot("", "."))


def _compile_limits(policy: Policy, problems: list[Problem]) -> Limits:
    server = policy.server
    request_line = Limits().max_request_line
    # Twice the largest token, so that the handler, not the parser, answers an
    # oversized token (401 token_too_large).
    authorization = max(server.max_header_line, 2 * policy.identity.max_token_bytes + 1024)
    # Room for the request line, the Authorization line and a few ordinary lines.
    needed = request_line + authorization + 4 * 1024
    head = server.max_head_bytes
    if head is None:
        head = max(64 * 1024, needed)
    elif head < needed:
        problems.append(
            Problem(
                ("server", "max_head_bytes"),
                f"{head} cannot hold a request line ({request_line}), an Authorization line for"
                f" identity.max_token_bytes ({authorization}) and a few headers: expected at least {needed}",
            )
        )
    return Limits(
        max_request_line=request_line,
        max_header_line=server.max_header_line,
        max_authorization_line=authorization,
        max_head_bytes=head,
        max_headers=server.max_headers,
        max_pipelined_bytes=server.max_pipelined_bytes,
        max_connections=server.max_connections or default_max_connections(),
    )


def compile_policy(policy: Policy, source: str, text: str = "", replay: Snapshot | None = None) -> CompiledPolicy:
    """Compile or raise CompileError listing everything wrong, by field path. `text` is
    what `policy` was parsed from; with `replay`, the key files it names are taken
    from that snapshot, not read."""
    problems: list[Problem] = []
    base = replay.base_dir if replay is not None else base_dir_of(source)
    base_dir = FsPath(base)
    reader = Reader(replay)
    verifiers: dict[str, ProviderVerifier] = {}
    for name, provider in policy.providers.items():
        verifier = _compile_provider(name, provider, base_dir, reader, problems)
        if verifier is not None:
            verifiers[name] = verifier
    seen: dict[str, int] = {}
    routes: list[CompiledRoute] = []
    for i, route in enumerate(policy.routes):
        if route.name in seen:
            problems.append(
                Problem(("routes", i, "name"), f"duplicate route name {route.name!r} (also routes[{seen[route.name]}])")
            )
        seen.setdefault(route.name, i)
        compiled = _compile_route(i, route, policy, verifiers, problems)
        if compiled is not None:
            routes.append(compiled)
    claim_headers = _claim_header_names(policy, problems)
    limits = _compile_limits(policy, problems)
    published: dict[str, ProviderKeys] = {}
    for name, provider in policy.providers.items():
        path = provider.api_tokens.publish_jwks if provider.api_tokens else None
        if path is not None and name in verifiers:
            if path in published:
                problems.append(
                    Problem(("providers", name, "api_tokens", "publish_jwks"), f"{path} is published twice")
                )
            published[path] = verifiers[name].keys
    if problems:
        raise CompileError(problems)
    identity = policy.identity
    workers = policy.server.workers
    return CompiledPolicy(
        source=source,
        workers=available_cpus() if workers == "auto" else workers,
        workers_auto=workers == "auto",
        watch=policy.server.watch,
        inputs=_inputs(policy, source, base_dir),
        snapshot=reader.snapshot(text, base),
        listen=policy.listen,
        admin_listen=policy.admin.listen,
        trusted_proxies=tuple(ipaddress.ip_network(n, strict=False) for n in policy.server.trusted_proxies),
        shutdown_timeout=policy.server.shutdown_timeout,
        reload_timeout=policy.server.reload_timeout,
        keepalive_timeout=policy.server.keepalive_timeout,
        send_timeout=policy.server.send_timeout,
        upstream_keepalive=policy.server.upstream_keepalive,
        websocket_idle_timeout=policy.server.websocket_idle_timeout,
        max_websockets=policy.server.max_websockets,
        table=RouteTable(tuple(routes)),
        providers=tuple(v.keys for v in verifiers.values()),
        identity=IdentityHeaders.of(identity.reserved_prefix, claim_headers),
        realm=identity.realm,
        max_token_bytes=identity.max_token_bytes,
        limits=limits,
        cache_entries=policy.token_cache.max_entries,
        cache_ttl=policy.token_cache.max_ttl,
        revocations=tuple(v.revocations for v in verifiers.values() if v.revocations is not None),
        published=published,
        access_log=AccessLog(
            fmt=policy.access_log.format,
            log_subject=policy.access_log.subject,
            redactor=Redactor(policy.access_log.redact_params),
            enabled=policy.access_log.enabled,
        ),
    )


def _inputs(policy: Policy, source: str, base_dir: FsPath) -> tuple[str, ...]:
    """The policy file, then every file compiling it read (sorted): a change to any of
    them can change the compiled policy.

    abspath, not realpath: Kubernetes updates a ConfigMap by swapping a `..data` symlink,
    which only a stat through the symlink sees. The named files are the paths
    `_key_source` and `_read_secret` read. Left out on purpose: revocation files (each
    worker polls them itself; a policy reload per revoked token would be waste)
    and the `api_tokens.signing_keys` directory (its private keys, lock and ledger are the
    token CLI's; `jwks.json`, the one file the gateway reads there, is a `jwks_file`)."""
    named: set[str] = set()
    for provider in policy.providers.values():
        for spec in provider.keys:
            for name in (spec.pem_file, spec.jwks_file, spec.hmac_secret.file if spec.hmac_secret else None):
                if name is not None:
                    named.add(str(base_dir / name))  # the path compile reads, unnormalised
    first = os.path.abspath(source)
    return (first, *sorted(named - {first}))


def _claim_header_names(policy: Policy, problems: list[Problem]) -> set[str]:
    """Every header a claim may be forwarded in, on any route: stripped on all routes."""
    found: dict[str, Path] = {}
    for claim, header in policy.identity.claims.items():
        found.setdefault(header, ("identity", "claims", claim))
    if policy.identity.provider_header:
        found.setdefault(policy.identity.provider_header, ("identity", "provider_header"))
    for i, route in enumerate(policy.routes):
        if isinstance(route.auth, JwtAuth):
            for claim, maybe in route.auth.forward_claims.items():
                if maybe is not None:
                    found.setdefault(maybe, ("routes", i, "auth", "forward_claims", claim))
    for header, path in found.items():
        if _forbidden_claim_header(header):
            problems.append(Problem(path, f"{header!r} cannot carry a claim (expected a header such as X-Auth-Email)"))
    identity = policy.identity
    global_headers: list[tuple[str, Path]] = [(h, ("identity", "claims", c)) for c, h in identity.claims.items()]
    if identity.provider_header:
        global_headers.append((identity.provider_header, ("identity", "provider_header")))
    problems.extend(_collisions(global_headers))
    for i, route in enumerate(policy.routes):
        if isinstance(route.auth, JwtAuth) and route.auth.forward_claims:
            own = route.auth.forward_claims
            effective = [(h, p) for h, p in global_headers if p[-1] not in own or p[1] == "provider_header"]
            effective += [(h, ("routes", i, "auth", "forward_claims", c)) for c, h in own.items() if h is not None]
            problems.extend(p for p in _collisions(effective) if p.path[0] == "routes")
    return set(found)


def _compile_provider(
    name: str, provider: Provider, base_dir: FsPath, reader: Reader, problems: list[Problem]
) -> ProviderVerifier | None:
    path: Path = ("providers", name)
    hmac = {a.startswith("HS") for a in provider.algorithms} == {True}
    sources: list[KeySource] = []
    settings = RemoteSettings(**provider.remote.model_dump())
    for j, spec in enumerate(provider.keys):
        where = (*path, "keys", j)
        source = _key_source(name, provider, spec, hmac, settings, base_dir, reader, where, problems)
        if source is not None:
            sources.append(source)
    if len(sources) != len(provider.keys):
        return None
    revocations = None
    if provider.revocation_file is not None:
        file = base_dir / provider.revocation_file
        try:
            revocations = RevocationWatcher(name, file)
        except (OSError, RevocationError) as exc:
            problems.append(Problem((*path, "revocation_file"), f"{file}: {exc}"))
            return None
    if provider.api_tokens is not None:
        expected = (base_dir / provider.api_tokens.signing_keys / JWKS_FILE).resolve()
        listed = [(base_dir / k.jwks_file).resolve() for k in provider.keys if k.jwks_file is not None]
        if expected not in listed:
            problems.append(
                Problem(
                    (*path, "keys"),
                    f"an API-token provider verifies with its own keys (expected a key source "
                    f"{{jwks_file: {provider.api_tokens.signing_keys.rstrip('/')}/{JWKS_FILE}}})",
                )
            )
            return None
    required = provider.required_claims + (("jti",) if revocations is not None else ())
    return ProviderVerifier(
        name=name,
        algorithms=frozenset(provider.algorithms),
        audiences=frozenset(provider.audiences),
        rules=ClaimRules(
            issuer=provider.issuer,
            leeway=provider.leeway,
            max_lifetime=provider.max_lifetime,
            typ=normalise_typ(provider.typ) if provider.typ else None,
            required=required,
        ),
        keys=ProviderKeys(name, sources),
        revocations=revocations,
    )


def _key_source(
    name: str,
    provider: Provider,
    spec: KeySourceModel,
    hmac: bool,
    settings: RemoteSettings,
    base_dir: FsPath,
    reader: Reader,
    where: Path,
    problems: list[Problem],
) -> KeySource | None:
    if spec.hmac_secret is not None:
        if not hmac:
            problems.append(Problem(where, "an HMAC secret needs HMAC algorithms (HS256, HS384, HS512)"))
            return None
        secret = _read_secret(spec.hmac_secret.env, spec.hmac_secret.file, base_dir, reader)
        if isinstance(secret, str):
            problems.append(Problem((*where, "hmac_secret"), secret))
            return None
        # RFC 7518 §3.2: an HMAC key at least as long as the hash's output, per algorithm.
        need = max(_HMAC_BYTES.get(alg, MIN_HMAC_BYTES) for alg in provider.algorithms)
        if len(secret) < need:
            longest = max(provider.algorithms, key=lambda alg: _HMAC_BYTES.get(alg, 0))
            problems.append(
                Problem(
                    (*where, "hmac_secret"),
                    f"the secret is {len(secret)} bytes (expected at least {need} for {longest}, RFC 7518 §3.2)",
                )
            )
            return None
        return StaticKeys(f"hmac secret of {name}", [VerifyKey(kid=None, kind="oct", alg=None, key=secret)])
    if hmac:
        problems.append(Problem(where, "HMAC algorithms take an 'hmac_secret' key source, not public keys"))
        return None
    if spec.pem_file is not None or spec.jwks_file is not None:
        field, kind = ("pem_file", "pem") if spec.pem_file is not None else ("jwks_file", "jwks")
        file = str(base_dir / (spec.pem_file or spec.jwks_file or ""))
        try:
            keys = parse_key_file(reader.read(file), file, kind)
        except OSError as exc:
            hint = (
                f" (create it with: gateway keys generate --dir {FsPath(file).parent})"
                if provider.api_tokens is not None and kind == "jwks"
                else ""
            )
            problems.append(Problem((*where, field), f"cannot read {file}: {exc.strerror}{hint}"))
            return None
        except UnusableKeyError as exc:
            problems.append(Problem((*where, field), f"{file}: {exc}"))
            return None
        for key in keys:
            if key.kind == "oct":
                problems.append(Problem((*where, field), f"{file}: holds an HMAC secret (expected public keys)"))
                return None
            if not any(key.fits(alg) for alg in provider.algorithms):
                fits = sorted(a for a, kinds in ALG_KINDS.items() if key.kind in kinds)
                problems.append(
                    Problem(
                        (*where, field),
                        f"{file}: a {key.kind} key{f' (kid {key.kid!r})' if key.kid else ''} fits none of "
                        f"algorithms {list(provider.algorithms)} (expected one of {fits})",
                    )
                )
                return None
        return FileKeys(file, kind, keys, read_now=not reader.replaying)
    if spec.jwks_url is not None:
        problem = insecure_url(spec.jwks_url, settings.allow_insecure_http)
        if problem:
            problems.append(Problem((*where, "jwks_url"), problem))
            return None
        return RemoteJwks(name, settings, jwks_url=spec.jwks_url)
    if spec.oidc_discovery is not True:
        problems.append(Problem((*where, "oidc_discovery"), "expected true"))
        return None
    problem = insecure_url(provider.issuer, settings.allow_insecure_http)
    if problem:
        problems.append(Problem((*where, "oidc_discovery"), f"the issuer is fetched for discovery: {problem}"))
        return None
    return RemoteJwks(name, settings, issuer=provider.issuer)


def _read_secret(env: str | None, file: str | None, base_dir: FsPath, reader: Reader) -> bytes | str:
    """The secret's bytes, or what is wrong (never the secret itself)."""
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            return f"environment variable {env} is not set"
        data = value.encode()
    else:
        path = base_dir / (file or "")
        try:
            # One trailing newline is an artefact of `echo > file`, not part of the secret.
            data = reader.read(str(path)).removesuffix(b"\n").removesuffix(b"\r")
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror}"
    if len(data) < MIN_HMAC_BYTES:
        return f"the secret is {len(data)} bytes (expected at least {MIN_HMAC_BYTES})"
    return data


def _compile_route(
    i: int, route: Route, policy: Policy, verifiers: Mapping[str, ProviderVerifier], problems: list[Problem]
) -> CompiledRoute | None:
    upstream = _upstream(route.upstream)
    if isinstance(upstream, str):
        problems.append(Problem(("routes", i, "upstream"), upstream))
        return None
    auth: PublicAccess | TokenRequirement | None = PublicAccess()
    if isinstance(route.auth, JwtAuth):
        auth = _compile_requirement(i, route.auth, policy, verifiers, problems)
    if auth is None:
        return None
    timeouts = route.timeouts
    return CompiledRoute(
        index=i,
        name=route.name,
        exact=route.match.path,
        prefix=route.match.prefix,
        methods=frozenset(route.match.methods) if route.match.methods else None,
        host=route.match.host,
        upstream=upstream,
        strip_prefix=route.strip_prefix,
        # total=None: a 1 GiB stream may legitimately take minutes; `read` bounds each
        # wait for data instead, which is what "too slow" means for a stream.
        timeout=aiohttp.ClientTimeout(total=None, connect=timeouts.connect, sock_read=timeouts.read),
        auth=auth,
        forward_authorization=route.forward_authorization,
        websocket=route.websocket,
        websocket_close_on_expiry=route.websocket_close_on_expiry,
    )


def _compile_requirement(
    i: int, auth: JwtAuth, policy: Policy, verifiers: Mapping[str, ProviderVerifier], problems: list[Problem]
) -> TokenRequirement | None:
    where: Path = ("routes", i, "auth")
    known = sorted(policy.providers)
    chosen: list[ProviderVerifier] = []
    ok = True
    for j, name in enumerate(auth.any_of):
        if name not in policy.providers:
            expected = ", ".join(known) if known else "none are defined under 'providers'"
            problems.append(Problem((*where, "any_of", j), f"unknown provider {name!r} (expected one of: {expected})"))
            ok = False
        elif name in verifiers:
            chosen.append(verifiers[name])
        else:
            ok = False  # the provider's own problem is already reported
    if not ok:
        return None
    narrowed: dict[str, frozenset[str]] = {}
    if auth.audiences is not None:
        # Narrowing is per provider: a route's audience list never lends one provider
        # an audience configured only for another.
        wanted = frozenset(auth.audiences)
        offered = set().union(*(v.audiences for v in chosen))
        extra = sorted(wanted - offered)
        if extra:
            problems.append(
                Problem(
                    (*where, "audiences"),
                    f"{extra} is not among the providers' audiences {sorted(offered)} (a route may only narrow them)",
                )
            )
            return None
        for verifier in chosen:
            narrowed[verifier.name] = verifier.audiences & wanted
            if not narrowed[verifier.name]:
                problems.append(
                    Problem(
                        (*where, "audiences"),
                        f"provider {verifier.name!r} has none of these audiences "
                        f"(its own: {sorted(verifier.audiences)}); remove it from any_of or add one",
                    )
                )
                return None
    by_issuer: dict[str, list[ProviderVerifier]] = {}
    for verifier in chosen:
        by_issuer.setdefault(verifier.rules.issuer, []).append(verifier)
    mapping = dict(policy.identity.claims)
    for claim, header in auth.forward_claims.items():
        if header is None:
            mapping.pop(claim, None)
        else:
            mapping[claim] = header
    rules = tuple(
        ClaimRule(claim, tuple(value) if isinstance(value, tuple) else (value,)) for claim, value in auth.claims.items()
    )
    return TokenRequirement(
        providers=tuple(chosen),
        by_issuer={k: tuple(v) for k, v in by_issuer.items()},
        optional=auth.optional,
        scopes=frozenset(auth.scopes),
        scope_text=" ".join(auth.scopes),
        claim_rules=rules,
        audiences=narrowed,
        headers=ClaimHeaders(tuple(mapping.items()), _provider_header(policy.identity)),
        allow_query_token=auth.allow_query_token,
    )


def _provider_header(identity: Identity) -> str | None:
    return identity.provider_header


def _upstream(text: str) -> Upstream | str:
    url = URL(text, encoded=True)
    base = url.raw_path.rstrip("/")
    if base:
        canonical = normalize_target(base)
        if isinstance(canonical, Rejected) or canonical[0] != base:
            return (
                f"base path of {text!r} is not canonical "
                "(expected a path without dot segments or escaped unreserved characters)"
            )
    if url.host is None or url.port is None:
        return f"not a URL: {text!r} (expected http(s)://host[:port][/base])"
    return Upstream(scheme=url.scheme, host=url.host, port=url.port, base=base)
