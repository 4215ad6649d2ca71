"""Validated model -> runtime objects. Cross-field checks that need the whole file live here."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path as FsPath

import aiohttp
from cryptography import x509
from yarl import URL

from gateway.auth.claims import ClaimRule, ClaimRules, normalise_typ
from gateway.auth.forward import ClaimHeaders, IdentityHeaders, fold
from gateway.auth.requirement import TokenRequirement
from gateway.auth.verifier import ProviderVerifier
from gateway.cors import ANY, POLICY_HEADERS, CorsPolicy
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
from gateway.policy.model import Cors, Identity, JwtAuth, Listen, Policy, Provider, Route, Tls
from gateway.policy.model import KeySource as KeySourceModel
from gateway.policy.snapshot import Reader, Snapshot, base_dir_of
from gateway.requestid import RequestIds
from gateway.routing import CompiledRoute, PublicAccess, RouteTable, Upstream
from gateway.runtime.cpus import available_cpus
from gateway.tls.context import FileField, TlsFileError, TlsSettings
from gateway.tls.terminator import TlsTerminator, first_load
from gateway.tokens.keystore import JWKS_FILE
from gateway.tokens.revocation import RevocationError, RevocationWatcher
from gateway.upstream_tls import TlsSettingsError, UpstreamTls
from gateway.upstream_tls import build as build_upstream_tls

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
    websocket_client_frame_rate: int = 2000
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
    request_ids: RequestIds = dataclasses.field(default_factory=RequestIds)
    # TLS on the proxy listener (None: plain HTTP), its context loaded and checked.
    tls: TlsTerminator | None = None

    def unverified_upstreams(self) -> list[str]:
        """The https origins whose certificates are not verified (`insecure_skip_verify`)."""
        ups = {r.upstream for r in self.table.routes if r.upstream.tls is not None and not r.upstream.tls.verify}
        return sorted({f"https://{u.authority}" for u in ups})


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
        verifier = _compile_provider(name, provider, source, base_dir, reader, problems)
        if verifier is not None:
            verifiers[name] = verifier
    origins_tls = _upstream_tls(policy, base_dir, reader, problems)
    seen: dict[str, int] = {}
    routes: list[CompiledRoute] = []
    for i, route in enumerate(policy.routes):
        if route.name in seen:
            problems.append(
                Problem(("routes", i, "name"), f"duplicate route name {route.name!r} (also routes[{seen[route.name]}])")
            )
        seen.setdefault(route.name, i)
        compiled = _compile_route(i, route, policy, verifiers, origins_tls, problems)
        if compiled is not None:
            routes.append(compiled)
    claim_headers = _claim_header_names(policy, problems)
    request_ids = _request_ids(policy, claim_headers, problems)
    limits = _compile_limits(policy, problems)
    tls = _compile_tls(policy.tls, base_dir, reader, problems) if policy.tls is not None else None
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
        tls=tls,
        admin_listen=policy.admin.listen,
        trusted_proxies=tuple(ipaddress.ip_network(n, strict=False) for n in policy.server.trusted_proxies),
        shutdown_timeout=policy.server.shutdown_timeout,
        reload_timeout=policy.server.reload_timeout,
        keepalive_timeout=policy.server.keepalive_timeout,
        send_timeout=policy.server.send_timeout,
        upstream_keepalive=policy.server.upstream_keepalive,
        websocket_idle_timeout=policy.server.websocket_idle_timeout,
        max_websockets=policy.server.max_websockets,
        websocket_client_frame_rate=policy.server.websocket_max_client_frames_per_second,
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
        request_ids=request_ids,
        access_log=AccessLog(
            fmt=policy.access_log.format,
            log_subject=policy.access_log.subject,
            redactor=Redactor(policy.access_log.redact_params),
            enabled=policy.access_log.enabled,
        ),
    )


def _compile_tls(tls: Tls, base_dir: FsPath, reader: Reader, problems: list[Problem]) -> TlsTerminator | None:
    """The proxy listener's TLS, its files read (through `reader`, so that they are in the
    snapshot) and checked now (TlsFileError names the setting, which locates the message)."""
    settings = TlsSettings(
        cert_file=str(base_dir / tls.cert_file),
        key_file=str(base_dir / tls.key_file),
        min_version=tls.min_version,
        handshake_timeout=tls.handshake_timeout,
        client_ca_file=str(base_dir / tls.client_ca_file) if tls.client_ca_file else None,
        client_auth=(tls.client_auth or "required") if tls.client_ca_file else None,
        client_subject_header=tls.client_subject_header,
    )

    def read(path: str, field: FileField) -> bytes:
        try:
            return reader.read(path)
        except OSError as exc:
            raise TlsFileError(field, f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None

    try:
        return first_load(settings, read, reader.replaying, time.time())
    except TlsFileError as exc:
        problems.append(Problem(("tls", exc.field), str(exc)))
        return None


def _inputs(policy: Policy, source: str, base_dir: FsPath) -> tuple[str, ...]:
    """The policy file, then every file compiling it read (sorted): a change to any of
    them can change the compiled policy.

    abspath, not realpath: Kubernetes updates a ConfigMap by swapping a `..data` symlink,
    which only a stat through the symlink sees. The named files are the paths
    `_key_source`, `_read_secret` and `_upstream_tls` read (a rotated upstream client
    certificate is a reload). Left out on purpose: revocation files (each worker polls
    them itself; a policy reload per revoked token would be waste), the listener's TLS
    files (each worker re-reads them itself, tls/terminator.py: a rotation swaps one
    context and must neither wait for nor be refused with the rest of the policy) and
    the `api_tokens.signing_keys` directory (its private keys, lock and ledger are the
    token CLI's; `jwks.json`, the one file the gateway reads there, is a `jwks_file`)."""
    named: set[str] = set()
    for provider in policy.providers.values():
        for spec in provider.keys:
            for name in (spec.pem_file, spec.jwks_file, spec.hmac_secret.file if spec.hmac_secret else None):
                if name is not None:
                    named.add(str(base_dir / name))  # the path compile reads, unnormalised
    for tls in policy.upstream_tls.values():
        for name in (tls.ca_file, tls.cert_file, tls.key_file):
            if name is not None:
                named.add(str(base_dir / name))
    first = os.path.abspath(source)
    return (first, *sorted(named - {first}))


# Beyond what can never carry a claim: headers a response needs to mean what it says.
_RESPONSE_HEADERS = frozenset(
    fold(h)
    for h in (
        "Origin",
        "Vary",
        "Date",
        "Server",
        "Location",
        "Set-Cookie",
        "WWW-Authenticate",
        "Cache-Control",
        "Retry-After",
        "Age",
        "ETag",
        "Last-Modified",
        "Expires",
    )
)


def _request_ids(policy: Policy, claim_headers: set[str], problems: list[Problem]) -> RequestIds:
    """`server.request_id`. Its header is the gateway's in both directions (stripped
    inbound and from upstream responses), so it must not be one that means anything else."""
    header = policy.server.request_id.header
    folded = fold(header)
    where: Path = ("server", "request_id", "header")
    identity = IdentityHeaders.of(policy.identity.reserved_prefix, claim_headers)
    if (
        _forbidden_claim_header(header)
        or folded in _RESPONSE_HEADERS
        or folded in POLICY_HEADERS
        or folded.startswith("access-control-")
    ):
        problems.append(
            Problem(where, f"{header!r} cannot carry the request ID (expected a header such as X-Request-Id)")
        )
    elif identity.reserved(folded):
        problems.append(
            Problem(where, f"{header!r} is an identity header (identity.reserved_prefix or a claim header)")
        )
    return RequestIds(header)


def _claim_header_names(policy: Policy, problems: list[Problem]) -> set[str]:
    """Every header a claim may be forwarded in, on any route: stripped on all routes."""
    found: dict[str, Path] = {}
    for claim, header in policy.identity.claims.items():
        found.setdefault(header, ("identity", "claims", claim))
    if policy.identity.provider_header:
        found.setdefault(policy.identity.provider_header, ("identity", "provider_header"))
    subject_header = policy.tls.client_subject_header if policy.tls is not None else None
    if subject_header:
        found.setdefault(subject_header, ("tls", "client_subject_header"))
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
    if subject_header:
        global_headers.append((subject_header, ("tls", "client_subject_header")))
    problems.extend(_collisions(global_headers))
    for i, route in enumerate(policy.routes):
        if isinstance(route.auth, JwtAuth) and route.auth.forward_claims:
            own = route.auth.forward_claims
            effective = [
                (h, p) for h, p in global_headers if p[-1] not in own or p[1] == "provider_header" or p[0] == "tls"
            ]
            effective += [(h, ("routes", i, "auth", "forward_claims", c)) for c, h in own.items() if h is not None]
            problems.extend(p for p in _collisions(effective) if p.path[0] == "routes")
    return set(found)


def _compile_provider(
    name: str, provider: Provider, policy_file: str, base_dir: FsPath, reader: Reader, problems: list[Problem]
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
        # Where the policy file is now, not the snapshot's directory: the list is read
        # afresh at every start, and a ConfigMap version the kubelet has since deleted
        # would hold none (and so revoke nothing).
        file = FsPath(base_dir_of(policy_file)) / provider.revocation_file
        try:
            revocations = RevocationWatcher(name, file, must_exist=reader.revocation_must_exist(name, file))
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
            data = reader.read(file)
            keys = parse_key_file(data, file, kind)
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
        return FileKeys(file, kind, keys, data, read_now=not reader.replaying)
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
    i: int,
    route: Route,
    policy: Policy,
    verifiers: Mapping[str, ProviderVerifier],
    tls: Mapping[tuple[str, int], UpstreamTls],
    problems: list[Problem],
) -> CompiledRoute | None:
    upstream = _upstream(route.upstream)
    if isinstance(upstream, str):
        problems.append(Problem(("routes", i, "upstream"), upstream))
        return None
    if upstream.scheme == "https":
        upstream = dataclasses.replace(upstream, tls=tls.get((upstream.host, upstream.port)))
    auth: PublicAccess | TokenRequirement | None = PublicAccess()
    if isinstance(route.auth, JwtAuth):
        auth = _compile_requirement(i, route.auth, policy, verifiers, problems)
    if auth is None:
        return None
    cors = _compile_cors(i, route, route.cors, problems) if route.cors is not None else None
    if route.cors is not None and cors is None:
        return None
    subjects = _client_subjects(i, route, policy, problems)
    if route.client_cert is not None and subjects is None:
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
        cors=cors,
        client_subjects=subjects,
        websocket=route.websocket,
        websocket_close_on_expiry=route.websocket_close_on_expiry,
    )


# Without `allow_methods` and `match.methods`: the CORS-safelisted methods only (Fetch
# §2.2.1); anything else a browser may send cross-origin is for the policy to say.
_SAFELISTED_METHODS = ("GET", "HEAD", "POST")


def _compile_cors(i: int, route: Route, cors: Cors, problems: list[Problem]) -> CorsPolicy | None:
    where: Path = ("routes", i, "cors")
    ok = True
    if ANY in cors.allow_origins:
        if cors.allow_credentials:
            # Fetch §3.2.5: browsers refuse `*` with credentials; echoing every origin
            # instead would hand any site the user's cookies' authority.
            problems.append(
                Problem(
                    (*where, "allow_credentials"),
                    "credentials cannot be allowed for every origin ('*'): expected the exact origins to allow",
                )
            )
            ok = False
        if len(cors.allow_origins) > 1:
            problems.append(
                Problem((*where, "allow_origins"), "'*' allows every origin: expected it alone, or exact origins only")
            )
            ok = False
    seen: set[str] = set()
    for j, origin in enumerate(cors.allow_origins):
        if origin in seen:
            problems.append(Problem((*where, "allow_origins", j), f"{origin!r} is listed twice"))
            ok = False
        seen.add(origin)
    methods = cors.allow_methods or route.match.methods or _SAFELISTED_METHODS
    if cors.allow_methods is not None and route.match.methods is not None:
        for j, method in enumerate(cors.allow_methods):
            if method not in route.match.methods:
                # A preflight for it would be matched to another route (or none): what
                # this route allows could never be asked of it.
                problems.append(
                    Problem(
                        (*where, "allow_methods", j),
                        f"{method} is not one of this route's match.methods {list(route.match.methods)}",
                    )
                )
                ok = False
    max_age = None
    if cors.max_age is not None:
        if cors.max_age != int(cors.max_age) or cors.max_age > 86400:
            problems.append(
                Problem((*where, "max_age"), "expected whole seconds, at most 24h (browsers cap it lower still)")
            )
            ok = False
        max_age = int(cors.max_age)
    if not ok:
        return None
    return CorsPolicy(
        origins=frozenset(cors.allow_origins),
        methods=tuple(dict.fromkeys(methods)),
        headers=tuple(dict.fromkeys(cors.allow_headers)),
        expose=tuple(dict.fromkeys(cors.expose_headers)),
        credentials=cors.allow_credentials,
        max_age=max_age,
    )


def _client_subjects(i: int, route: Route, policy: Policy, problems: list[Problem]) -> frozenset[str] | None:
    """The route's accepted subjects in the form the handshake's certificate is written
    in (`x509.Name.rfc4514_string`), so that spacing or escaping in the policy cannot
    make a subject that should match miss."""
    if route.client_cert is None:
        return None
    where: Path = ("routes", i, "client_cert")
    if policy.tls is None or policy.tls.client_ca_file is None:
        problems.append(Problem(where, "needs tls.client_ca_file (client certificates are only asked for with it)"))
        return None
    out: set[str] = set()
    for j, subject in enumerate(route.client_cert.subjects):
        try:
            out.add(x509.Name.from_rfc4514_string(subject).rfc4514_string())
        except ValueError:
            problems.append(
                Problem((*where, "subjects", j), f"not an RFC 4514 name: {subject!r} (expected e.g. CN=billing,O=Acme)")
            )
            return None
    return frozenset(out)


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


def _upstream_tls(
    policy: Policy, base_dir: FsPath, reader: Reader, problems: list[Problem]
) -> dict[tuple[str, int], UpstreamTls]:
    """`upstream_tls`, by (host, port): an SSL context per origin, built here, once."""
    used = set()
    for route in policy.routes:
        up = _upstream(route.upstream)
        if not isinstance(up, str):
            used.add((up.scheme, up.host, up.port))
    out: dict[tuple[str, int], UpstreamTls] = {}
    for origin, spec in policy.upstream_tls.items():
        where: Path = ("upstream_tls", origin)
        try:
            up = _upstream(origin)
        except ValueError:
            up = "unparseable"
        if isinstance(up, str) or up.base or up.scheme != "https":
            problems.append(Problem(where, f"not an https origin: {origin!r} (expected https://host[:port])"))
            continue
        if (up.host, up.port) in out:
            problems.append(Problem(where, f"{origin!r} is the origin of another entry"))
            continue
        if ("https", up.host, up.port) not in used:
            # A typo in the origin would leave its routes' TLS at the defaults, silently.
            problems.append(Problem(where, f"no route forwards to {origin!r}"))
            continue
        files: dict[str, bytes | None] = {}
        failed = False
        for field in ("ca_file", "cert_file", "key_file"):
            name = getattr(spec, field)
            files[field] = None
            if name is None:
                continue
            path = str(base_dir / name)
            try:
                files[field] = reader.read(path)
            except OSError as exc:
                problems.append(Problem((*where, field), f"cannot read {path}: {exc.strerror}"))
                failed = True
        if failed:
            continue
        try:
            out[(up.host, up.port)] = build_upstream_tls(
                ca=files["ca_file"],
                cert=files["cert_file"],
                key=files["key_file"],
                server_name=spec.server_name,
                verify=not spec.insecure_skip_verify,
                min_version=spec.min_version,
            )
        except TlsSettingsError as exc:
            problems.append(Problem((*where, exc.field), exc.message))
    return out


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
