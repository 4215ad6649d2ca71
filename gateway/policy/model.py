"""The policy file's schema: frozen pydantic models, unknown keys refused.

These objects are the validated *input*. The request path never reads them: the
compile step turns them into `gateway.routing` and `gateway.proxy` runtime objects.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gateway.cors import origin_problem
from gateway.duration import DURATION_PATTERN, format_duration, parse_duration
from gateway.pathnorm import Rejected, normalize_target


def invalid(kind: str, message: str) -> PydanticCustomError:
    """A validation error whose text is final (values may contain braces)."""
    return PydanticCustomError(kind, "{m}", {"m": message})


def _duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, str):
        raise invalid("duration", f"not a duration: {value!r} (expected a string such as 500ms, 30s, 2m)")
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise invalid("duration", str(exc)) from None


Duration = Annotated[
    float,
    BeforeValidator(_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN}),
]


class Strict(BaseModel):
    """Base: frozen, and an unknown key names itself and lists the known ones."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=False)

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields)
            for key in data:
                if key not in known:
                    raise PydanticCustomError(
                        "unknown_field",
                        "{m}",
                        {"m": f"unknown field {key!r} (expected one of: {', '.join(sorted(known))})", "field": key},
                    )
        return data


_LISTEN = re.compile(r"(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9.\-]*)):(?P<port>\d{1,5})")


class Listen(BaseModel):
    """A `host:port` to bind. `[::1]:8080` for IPv6; port 0 picks a free port."""

    model_config = ConfigDict(frozen=True)
    host: str
    port: int

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, Listen | dict):
            return value
        m = _LISTEN.fullmatch(value) if isinstance(value, str) else None
        port = int(m.group("port")) if m else 0
        if m is None or not 0 <= port < 65536:
            raise invalid("listen", f"not a listen address: {value!r} (expected host:port, e.g. 0.0.0.0:8080)")
        return {"host": m.group("v6") or m.group("host") or "0.0.0.0", "port": port}

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


ListenAddress = Annotated[
    Listen,
    WithJsonSchema({"type": "string", "pattern": r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]*):\d{1,5}$"}),
]


class SecretRef(Strict):
    """A secret read from an environment variable or a file, never written inline."""

    env: StrictStr | None = None
    file: StrictStr | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise PydanticCustomError("secret", "expected exactly one of 'env' or 'file' (secrets are never inline)")
        return self


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise invalid(
            "network", f"not a network: {value!r} (expected a CIDR such as 10.0.0.0/8 or an address)"
        ) from None
    return value


Network = Annotated[StrictStr, AfterValidator(_network)]


MAX_WORKERS = 256
WorkerSetting = int | Literal["auto"]


def parse_workers(value: object) -> WorkerSetting:
    """`server.workers` and `gateway run --workers`: a whole number from 1 to MAX_WORKERS,
    or `auto`. ValueError says what was expected."""
    if value == "auto":
        return "auto"
    # bool is an int to Python, but `workers: true` is a mistake, not one worker.
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS:
        return value
    shown = str(value).lower() if isinstance(value, bool) else repr(value)  # as YAML spells it
    raise ValueError(f"not a worker count: {shown} (expected a whole number from 1 to {MAX_WORKERS}, or auto)")


def _workers(value: Any) -> WorkerSetting:
    try:
        return parse_workers(value)
    except ValueError as exc:
        raise invalid("workers", str(exc)) from None


Workers = Annotated[
    WorkerSetting,
    BeforeValidator(_workers),
    WithJsonSchema({"oneOf": [{"type": "integer", "minimum": 1, "maximum": MAX_WORKERS}, {"const": "auto"}]}),
]


class Admin(Strict):
    """The operators' listener: health and readiness (and metrics), never public."""

    listen: ListenAddress = Field(default_factory=lambda: Listen(host="127.0.0.1", port=9901))


HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
HeaderName = Annotated[StrictStr, Field(pattern=HEADER_NAME_PATTERN)]


class RequestIdSettings(Strict):
    """Every request's ID: taken from `header` when a trusted proxy sent a well-formed
    one, else made here; forwarded upstream, returned, and logged."""

    header: HeaderName = "X-Request-Id"


class Server(Strict):
    """Process-wide settings for the public listener."""

    # Also who may send the request ID (`request_id`).
    trusted_proxies: tuple[Network, ...] = ()
    request_id: RequestIdSettings = Field(default_factory=RequestIdSettings)
    shutdown_timeout: Duration = 30.0
    # How long a reload waits for the new policy's providers to have keys (in every
    # worker) before it is refused and the running policy stays.
    reload_timeout: Duration = 10.0
    # nginx's default. It also bounds how long a client may take to send a request's
    # head, so a connection trickling header bytes is closed.
    keepalive_timeout: Duration = 75.0
    # nginx's send_timeout: a client that takes none of its response for this long is cut off.
    send_timeout: Duration = 60.0
    # Budgets of a client connection (gateway/limits.py; SECURITY.md gives the worst case).
    # None: 10 000, or fewer where RLIMIT_NOFILE would run out first.
    max_connections: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    max_header_line: StrictInt = Field(default=8192, ge=1024, le=65536)
    # None: 64 KiB, or more when identity.max_token_bytes needs it.
    max_head_bytes: StrictInt | None = Field(default=None, ge=4096, le=1024 * 1024)
    max_headers: StrictInt = Field(default=100, ge=8, le=1000)
    max_pipelined_bytes: StrictInt = Field(default=64 * 1024, ge=0, le=16 * 1024 * 1024)
    # Upstream connections are kept alive per client connection, never shared. Off: one
    # upstream connection per request, for a front proxy that carries many users on
    # one connection to the gateway (see README "Upstream client").
    upstream_keepalive: StrictBool = True
    # WebSocket connections (routes with `websocket: true`): one idle this long, in both
    # directions, is closed (nginx's proxy_read_timeout is 60 s); at most this many open
    # per worker process, past it a handshake gets 503.
    websocket_idle_timeout: Duration = 60.0
    max_websockets: StrictInt = Field(default=1000, ge=1, le=1_000_000)
    # Frames a WebSocket client may send per second, each connection a token bucket of
    # one second's worth: the relay reads every frame header, so this bounds the CPU a
    # client costs (README "WebSockets"). Past it the client is not read until it refills.
    websocket_max_client_frames_per_second: StrictInt = Field(default=2000, ge=10, le=1_000_000)

    @field_validator("websocket_idle_timeout")
    @classmethod
    def _websocket_idle_bound(cls, value: float) -> float:
        # The idle timeout is what bounds a WebSocket peer that stops reading: never off.
        if not 1.0 <= value <= 86400.0:
            raise invalid("websocket_idle_timeout", f"{format_duration(value)} is out of range (expected 1s to 24h)")
        return value

    @field_validator("websocket_max_client_frames_per_second", mode="before")
    @classmethod
    def _client_frame_rate(cls, value: Any) -> int:
        # Never off: without it one client can keep a worker's CPU busy with empty frames.
        # bool is an int to Python, but `true` is a mistake, not one frame a second.
        if isinstance(value, int) and not isinstance(value, bool) and 10 <= value <= 1_000_000:
            return value
        shown = str(value).lower() if isinstance(value, bool) else repr(value)  # as YAML spells it
        raise invalid(
            "websocket_max_client_frames_per_second",
            f"not a frame rate: {shown} (expected a whole number from 10 to 1000000)",
        )

    # Worker processes; `auto`: the CPUs this process may use (gateway/runtime/cpus.py).
    workers: Workers = 1
    # Reload when the policy file or a file it names changes: a Kubernetes ConfigMap
    # update sends no SIGHUP.
    watch: StrictBool = True


_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA", "HS256", "HS384", "HS512",
)  # fmt: skip


class KeySource(Strict):
    """Where a provider's verification keys come from. Exactly one field is set."""

    pem_file: StrictStr | None = None
    jwks_file: StrictStr | None = None
    jwks_url: StrictStr | None = None
    oidc_discovery: StrictBool | None = None
    hmac_secret: SecretRef | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> KeySource:
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise invalid("key_source", f"expected exactly one of: {', '.join(type(self).model_fields)}")
        return self


class Remote(Strict):
    """How remote key sets (`jwks_url`, `oidc_discovery`) are fetched and kept fresh."""

    refresh_interval: Duration = 600.0
    min_refresh: Duration = 60.0
    max_refresh: Duration = 86400.0
    unknown_kid_cooldown: Duration = 30.0
    retry_interval: Duration = 5.0
    max_stale: Duration = 43200.0
    fetch_timeout: Duration = 5.0
    max_bytes: StrictInt = Field(default=1024 * 1024, gt=0)
    # Plain http:// is refused except to loopback; this is the explicit opt-in.
    allow_insecure_http: StrictBool = False

    @model_validator(mode="after")
    def _bounds(self) -> Remote:
        # Floors: a zero here would turn the gateway into a load generator against the
        # IdP (or, for fetch_timeout, mean "no timeout" to aiohttp).
        for name in ("refresh_interval", "min_refresh", "unknown_kid_cooldown", "retry_interval", "fetch_timeout"):
            if getattr(self, name) < 0.1:
                raise invalid("remote", f"{name} is below the 100ms floor")
        if not self.min_refresh <= self.refresh_interval <= self.max_refresh:
            raise PydanticCustomError("remote", "expected min_refresh <= refresh_interval <= max_refresh")
        return self


def _algorithm(value: str) -> str:
    if value not in _ALGORITHMS:
        # `none` (in any casing) lands here: it is never an option.
        raise invalid("algorithm", f"unsupported algorithm {value!r} (expected one of: {', '.join(_ALGORITHMS)})")
    return value


Algorithm = Annotated[StrictStr, AfterValidator(_algorithm)]
CLAIM_NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"
ClaimName = Annotated[StrictStr, Field(pattern=CLAIM_NAME_PATTERN)]


class ApiTokens(Strict):
    """This provider's tokens are minted here, by `gateway tokens issue`."""

    # Directory of `gateway keys generate`: private keys (CLI only) and jwks.json.
    signing_keys: StrictStr
    # Issuance ledger (JSON lines; never the tokens). Default: <signing_keys>/ledger.jsonl
    ledger: StrictStr | None = None
    default_ttl: Duration = 90 * 86400.0
    typ: StrictStr = "JWT"
    # Serve the public JWKS at this path on the public listener (None: don't).
    publish_jwks: StrictStr | None = None

    @field_validator("publish_jwks")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and (normalize_target(value) != (value, "") or value == "/"):
            raise invalid("path", f"not a canonical path: {value!r} (expected e.g. /.well-known/api-tokens/jwks.json)")
        return value


# The largest clock-skew allowance a provider may set (docs/config.md says so).
MAX_LEEWAY = 300.0


class Provider(Strict):
    """A named token issuer: how tokens from it are verified."""

    issuer: StrictStr = Field(min_length=1)
    audiences: tuple[StrictStr, ...] = Field(min_length=1)
    algorithms: tuple[Algorithm, ...] = Field(min_length=1)
    keys: tuple[KeySource, ...] = Field(min_length=1)
    leeway: Duration = 30.0
    max_lifetime: Duration | None = None
    # e.g. `at+jwt` (RFC 9068); compared case-insensitively, `application/` optional.
    typ: StrictStr | None = None
    required_claims: tuple[ClaimName, ...] = ()
    remote: Remote = Field(default_factory=Remote)
    # Revoked token ids (`gateway tokens revoke`); tokens must then carry a `jti`.
    revocation_file: StrictStr | None = None
    api_tokens: ApiTokens | None = None

    @model_validator(mode="after")
    def _api_token_rules(self) -> Provider:
        if self.api_tokens is not None:
            missing = [f for f in ("max_lifetime", "revocation_file") if getattr(self, f) is None]
            if missing:
                raise invalid("api_tokens", f"an API-token provider needs {' and '.join(missing)}")
            if self.api_tokens.default_ttl > (self.max_lifetime or 0):
                raise invalid("api_tokens", "api_tokens.default_ttl is longer than max_lifetime")
        return self

    @field_validator("leeway")
    @classmethod
    def _leeway_bound(cls, value: float) -> float:
        # Leeway stretches every token's validity at both ends: an hour of it quietly
        # means expired tokens still pass. Clock skew is seconds; MAX_LEEWAY is generous.
        if value > MAX_LEEWAY:
            raise invalid(
                "leeway",
                f"leeway {format_duration(value)} is too long (expected at most {format_duration(MAX_LEEWAY)})",
            )
        return value

    @field_validator("algorithms")
    @classmethod
    def _not_mixed(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len({alg.startswith("HS") for alg in value}) > 1:
            raise PydanticCustomError("algorithm", "HMAC and asymmetric algorithms cannot be mixed in one provider")
        return value


ROUTE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"
REALM_PATTERN = r'^[^"\\\x00-\x1f\x7f]*$'


def _tls_version(value: Any) -> Any:
    # YAML reads an unquoted 1.2 as a number.
    if isinstance(value, float):
        value = repr(value)
    if value not in ("1.2", "1.3"):
        raise invalid(
            "tls_version", f"unsupported TLS version {value!r} (expected 1.2 or 1.3; TLS 1.0 and 1.1 are never offered)"
        )
    return value


TlsVersion = Annotated[
    Literal["1.2", "1.3"], BeforeValidator(_tls_version), WithJsonSchema({"enum": ["1.2", "1.3", 1.2, 1.3]})
]
MAX_HANDSHAKE_TIMEOUT = 60.0


class Tls(Strict):
    """TLS on the proxy listener: a PEM certificate chain and its key, re-read when they
    change. Optionally, client certificates verified against `client_ca_file`."""

    cert_file: StrictStr = Field(min_length=1)
    key_file: StrictStr = Field(min_length=1)
    min_version: TlsVersion = "1.2"
    # A connection that has not completed its handshake by then is closed (asyncio's
    # default is 60 s, long enough for a slow-loris of handshakes).
    handshake_timeout: Duration = 10.0
    client_ca_file: StrictStr | None = Field(default=None, min_length=1)
    # With client_ca_file: `required` (the default) or `optional`.
    client_auth: Literal["required", "optional"] | None = None
    # The verified client certificate's subject (RFC 4514) is sent upstream in this header.
    client_subject_header: HeaderName | None = None

    @field_validator("handshake_timeout")
    @classmethod
    def _handshake_bound(cls, value: float) -> float:
        if not 0.1 <= value <= MAX_HANDSHAKE_TIMEOUT:
            raise invalid(
                "handshake_timeout",
                f"{format_duration(value)} is out of range"
                f" (expected 100ms to {format_duration(MAX_HANDSHAKE_TIMEOUT)})",
            )
        return value

    @model_validator(mode="after")
    def _client_settings_need_ca(self) -> Tls:
        if self.client_ca_file is None:
            given = [f for f in ("client_auth", "client_subject_header") if getattr(self, f) is not None]
            if given:
                raise invalid(
                    "tls", f"{' and '.join(given)} need client_ca_file (the CAs client certificates must chain to)"
                )
        return self


class AccessLogSettings(Strict):
    """The access log (one line per request on stdout)."""

    enabled: StrictBool = True
    format: Literal["json", "text"] = "json"
    # The verified `sub` claim; turn off where subjects are personal data you may not log.
    subject: StrictBool = True
    # Parameter names to redact on top of the built-in list (folded: obs/redact.py).
    redact_params: tuple[StrictStr, ...] = ()


class TokenCacheSettings(Strict):
    """Verified tokens remembered across requests (route checks still run every time)."""

    max_entries: StrictInt = Field(default=10_000, ge=0, le=1_000_000)  # 0 disables the cache
    max_ttl: Duration = 300.0


class Identity(Strict):
    """How verified identity reaches the upstream, and how tokens are taken from requests."""

    realm: StrictStr = Field(default="gateway", pattern=REALM_PATTERN)
    # Any inbound header with this prefix (in any spelling) is dropped on every route.
    reserved_prefix: HeaderName = "X-Auth-"
    # claim (dot path for nested claims) -> header name.
    claims: dict[ClaimName, HeaderName] = Field(
        default_factory=lambda: {"sub": "X-Auth-Subject", "iss": "X-Auth-Issuer"}
    )
    # Also send the name of the provider that verified the token (None: don't).
    provider_header: HeaderName | None = "X-Auth-Provider"
    max_token_bytes: StrictInt = Field(default=8192, ge=256, le=65536)


_METHOD = re.compile(r"[A-Z]+")


def _method(value: str) -> str:
    if _METHOD.fullmatch(value) is None:
        raise invalid("method", f"not an HTTP method: {value!r} (expected upper case, e.g. GET, POST)")
    if value in ("CONNECT", "TRACE", "TRACK"):
        raise invalid("method", f"{value} is never forwarded (expected e.g. GET, POST)")
    return value


Method = Annotated[StrictStr, AfterValidator(_method)]


class Match(Strict):
    """Which requests a route takes: one of `path` (exact) or `prefix` (segment-aware)."""

    path: StrictStr | None = None
    prefix: StrictStr | None = None
    methods: tuple[Method, ...] | None = Field(default=None, min_length=1)
    host: StrictStr | None = None

    @field_validator("path", "prefix")
    @classmethod
    def _canonical(cls, value: str | None) -> str | None:
        if value is None:
            return None
        result = normalize_target(value) if "?" not in value else Rejected("has a query")
        if isinstance(result, Rejected) or result[0] != value:
            hint = "" if isinstance(result, Rejected) else f"; did you mean {result[0]!r}?"
            raise invalid(
                "path",
                f"not a canonical path: {value!r} (expected an absolute path such as /orders, "
                "without dot segments, empty segments, a query or escaped unreserved "
                f"characters{hint})",
            )
        if value != "/" and value.endswith("/"):
            trimmed = value.rstrip("/")
            raise invalid(
                "path",
                f"trailing slash in {value!r} (expected {trimmed!r}: a prefix already matches "
                f"whole segments, so it covers {trimmed!r} and everything below it)",
            )
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and re.fullmatch(r"[A-Za-z0-9.\-]+|\[[0-9a-fA-F:.]+\]", value) is None:
            raise invalid("host", f"not a host name: {value!r} (expected e.g. api.example.com, without a port)")
        return value.lower() if value is not None else None

    @model_validator(mode="after")
    def _one_of_path_prefix(self) -> Match:
        if (self.path is None) == (self.prefix is None):
            raise PydanticCustomError("match", "expected exactly one of 'path' or 'prefix'")
        return self


_UPSTREAM = re.compile(
    r"(?P<scheme>https?)://(?P<host>[A-Za-z0-9.\-]+|\[[0-9a-fA-F:.]+\])"
    r"(?::(?P<port>\d{1,5}))?(?P<base>(?:/[A-Za-z0-9\-._~!$&'()*+,;=:@%]*)*)"
)


class UpstreamTls(Strict):
    """How the gateway speaks TLS to one `https` upstream (an origin, `https://host[:port]`).
    Verification is on unless `insecure_skip_verify` says otherwise, in so many words."""

    # PEM CA bundle to verify the upstream's certificate with, instead of the system's.
    ca_file: StrictStr | None = None
    # A client certificate (mTLS): both or neither.
    cert_file: StrictStr | None = None
    key_file: StrictStr | None = None
    # The name sent in SNI and checked against the certificate, when the URL's host is
    # not it (an IP address, a Service name the certificate does not carry).
    server_name: StrictStr | None = None
    insecure_skip_verify: StrictBool = False
    min_version: Literal["1.2", "1.3"] = "1.2"

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str | None) -> str | None:
        if value is not None and re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?", value) is None:
            raise invalid("server_name", f"not a host name: {value!r} (expected e.g. orders.internal)")
        return value.lower() if value is not None else None

    @model_validator(mode="after")
    def _consistent(self) -> UpstreamTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise PydanticCustomError(
                "tls", "expected both 'cert_file' and 'key_file' (a client certificate and its key)"
            )
        if self.insecure_skip_verify and self.ca_file is not None:
            raise PydanticCustomError(
                "tls", "'ca_file' verifies the upstream, 'insecure_skip_verify: true' turns that off: keep one"
            )
        return self


class Timeouts(Strict):
    """Upstream timeouts: `connect` to open a connection, `read` for each wait on data."""

    connect: Duration = 5.0
    read: Duration = 30.0


ClaimValue = StrictStr | StrictBool | int | float


class JwtAuth(Strict):
    """A bearer JWT from any of the named providers. `optional` lets a missing token pass."""

    any_of: tuple[StrictStr, ...] = Field(min_length=1)
    optional: StrictBool = False
    # All required; read from `scope` (space-delimited) and `scp` (array).
    scopes: tuple[StrictStr, ...] = ()
    # claim (dot path) -> value it must equal, or list of accepted values. For an array
    # claim: it must contain the value (or one of them).
    claims: dict[ClaimName, ClaimValue | tuple[ClaimValue, ...]] = Field(default_factory=dict)
    # Narrower than the providers' audiences: the token must name one of these.
    audiences: tuple[StrictStr, ...] | None = Field(default=None, min_length=1)
    # Per-route additions to identity.claims; a null value drops a global mapping.
    forward_claims: dict[ClaimName, HeaderName | None] = Field(default_factory=dict)
    # RFC 6750 §2.3 query tokens end up in logs and caches: refused unless opted in.
    allow_query_token: StrictBool = False

    @field_validator("scopes")
    @classmethod
    def _scope_tokens(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for scope in value:
            # RFC 6749 §3.3 scope-token: printable ASCII except space, " and \.
            if not scope or any(c in ' "\\' or not "\x21" <= c <= "\x7e" for c in scope):
                raise invalid("scope", f"not a scope token: {scope!r} (expected e.g. orders:read, no spaces)")
        return value


def _auth_kind(value: Any) -> str | None:
    if value == "public":
        return "public"
    if isinstance(value, dict | JwtAuth):
        return "jwt"
    return None


Auth = Annotated[
    Annotated[Literal["public"], Tag("public")] | Annotated[JwtAuth, Tag("jwt")],
    Discriminator(
        _auth_kind,
        custom_error_type="auth",
        custom_error_message="expected 'public' or a mapping with 'any_of: [provider, ...]'",
    ),
]


def _origin(value: str) -> str:
    problem = origin_problem(value)
    if problem is not None:
        raise invalid("origin", problem)
    return value


Origin = Annotated[StrictStr, AfterValidator(_origin)]


def _cors_header(value: str) -> str:
    if value == "*":
        # With credentials `*` is a header literally named `*` (Fetch §3.2.3); without,
        # it is every header. Either way a list says what is meant.
        raise invalid("header", "'*' is not accepted here (expected the header names, e.g. Content-Type)")
    return value


CorsHeader = Annotated[HeaderName, AfterValidator(_cors_header)]


class Cors(Strict):
    """Browser callers from other origins (README, "Browser callers")."""

    allow_origins: tuple[Origin, ...] = Field(min_length=1)
    # None: the route's match.methods, or GET, HEAD, POST (CORS-safelisted) without them.
    allow_methods: tuple[Method, ...] | None = Field(default=None, min_length=1)
    allow_headers: tuple[CorsHeader, ...] = ()
    expose_headers: tuple[CorsHeader, ...] = ()
    allow_credentials: StrictBool = False
    # None: no Access-Control-Max-Age (browsers then cache a preflight for 5 s).
    max_age: Duration | None = None


class ClientCert(Strict):
    """What a route requires of the client certificate (TLS with client_ca_file)."""

    # RFC 4514 subjects, e.g. `CN=billing,O=Acme` (the last RDN first, as
    # `openssl x509 -noout -subject -nameopt RFC2253` prints it): one must match.
    subjects: tuple[StrictStr, ...] = Field(min_length=1)


class Route(Strict):
    """One entry of the ordered route table."""

    # Used as a log field and metric label: a letter or digit first, then [A-Za-z0-9_.:-].
    name: StrictStr = Field(pattern=ROUTE_NAME_PATTERN)
    match: Match
    upstream: StrictStr
    strip_prefix: StrictBool = False
    timeouts: Timeouts = Field(default_factory=Timeouts)
    # The client's Authorization header is consumed by the gateway, not passed on.
    forward_authorization: StrictBool = False
    # No default: every route states its auth, so forgetting it cannot open a route.
    auth: Auth
    # None: no CORS handling; an OPTIONS request is routed and authenticated as any other.
    cors: Cors | None = None
    # Checked before `auth`: a verified client certificate with one of these subjects.
    client_cert: ClientCert | None = None
    # WebSocket handshakes (Upgrade: websocket) are relayed; off, an Upgrade is dropped.
    websocket: StrictBool = False
    # An authenticated WebSocket is closed (1008) when its token expires or is revoked.
    websocket_close_on_expiry: StrictBool = True

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, value: str) -> str:
        m = _UPSTREAM.fullmatch(value)
        if m is None or not 0 < int(m.group("port") or 80) < 65536:
            # Credentials in a URL are refused and not echoed.
            shown = re.sub(r"//[^/@]*@", "//***@", value)
            raise invalid("upstream", f"not a URL: {shown!r} (expected http(s)://host[:port][/base])")
        return value

    @model_validator(mode="after")
    def _strip_needs_prefix(self) -> Route:
        if self.strip_prefix and self.match.prefix is None:
            raise PydanticCustomError(
                "strip_prefix", "strip_prefix needs a 'match.prefix' (this route matches an exact path)"
            )
        return self


ProviderName = Annotated[StrictStr, Field(pattern=ROUTE_NAME_PATTERN)]


class Policy(Strict):
    """The whole policy file."""

    SCHEMA_ID: ClassVar[str] = "https://gateway.dev/schema/policy.json"

    listen: ListenAddress = Field(default_factory=lambda: Listen(host="0.0.0.0", port=8080))
    tls: Tls | None = None
    admin: Admin = Field(default_factory=Admin)
    server: Server = Field(default_factory=Server)
    access_log: AccessLogSettings = Field(default_factory=AccessLogSettings)
    token_cache: TokenCacheSettings = Field(default_factory=TokenCacheSettings)
    identity: Identity = Field(default_factory=Identity)
    providers: dict[ProviderName, Provider] = Field(default_factory=dict)
    # TLS to upstreams, by origin (`https://host[:port]`): every route to that origin.
    upstream_tls: dict[StrictStr, UpstreamTls] = Field(default_factory=dict)
    routes: tuple[Route, ...] = Field(min_length=1)
