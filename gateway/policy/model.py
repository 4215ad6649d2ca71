"""The policy file's schema: frozen pydantic models, unknown keys refused.

These objects are the validated *input*. The request path never reads them: the
compile step turns them into `gateway.routing` and `gateway.proxy` runtime objects.

Each field's `description` (and each model's docstring) is the operator's reference:
`gateway schema` carries it to editors, and docs/config.md's key tables are rendered
from it (`make docs`; a test fails when the committed tables differ).
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
    PlainSerializer,
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


# Written back as the policy spells it (`30s`), not as seconds: the schema's defaults
# are taken from this serializer and must pass the schema's own pattern.
Duration = Annotated[
    float,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
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


LISTEN_PATTERN = r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]*):\d{1,5}$"
# Written back as `host:port`, the one spelling the schema's pattern (and the loader) accept.
ListenAddress = Annotated[
    Listen,
    PlainSerializer(str, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": LISTEN_PATTERN}),
]


class SecretRef(Strict):
    """A secret read from an environment variable or a file, never written inline."""

    env: StrictStr | None = Field(default=None, description="Name of the environment variable that holds the secret.")
    file: StrictStr | None = Field(
        default=None,
        description=(
            "Path of a file that holds the secret (relative to the policy file; one trailing newline is ignored)."
        ),
    )

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

    listen: ListenAddress = Field(
        default_factory=lambda: Listen(host="127.0.0.1", port=9901),
        description=(
            "Listen address of the operators' listener. Serves `GET /healthz` (the process is alive), `GET /readyz` "
            "(200 once the listeners are up and every provider has keys; 503 with `waiting_for` otherwise, and while "
            "draining) and `GET /metrics`. Keep it off the public network."
        ),
    )


HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
HeaderName = Annotated[StrictStr, Field(pattern=HEADER_NAME_PATTERN)]


class RequestIdSettings(Strict):
    """Every request's ID: taken from `header` when a trusted proxy sent a well-formed
    one, else made here; forwarded upstream, returned, and logged."""

    header: HeaderName = Field(
        default="X-Request-Id",
        description=(
            "The header that carries every request's ID to the upstream and back to the client (README, \"Request "
            'IDs"). Kept from a `trusted_proxies` peer when sent once and 1-128 characters of `A-Z a-z 0-9 . _ : -`; '
            "otherwise replaced by 128 random bits in hex. Inbound copies in other spellings, and the upstream's own "
            "in its response, are dropped. Not a header with another meaning: `Authorization`, `Host`, framing, "
            "forwarding, override, identity, `Access-Control-*`, `Set-Cookie`, `Vary`, … are refused at load. Example: "
            "`request_id: {header: X-Correlation-Id}`"
        ),
    )


class Server(Strict):
    """Process-wide settings for the public listener."""

    trusted_proxies: tuple[Network, ...] = Field(
        default=(),
        description=(
            "CIDRs or addresses of the peers allowed to set `X-Forwarded-For`, `X-Forwarded-Proto`, "
            "`X-Forwarded-Host`, `Forwarded`, `X-Real-IP` and the client-address headers (`Client-IP`, "
            '`True-Client-IP`, `CF-Connecting-IP`, …; README "Headers"), and the request ID (`request_id`). From any '
            "other peer those headers are dropped and the gateway writes its own."
        ),
    )
    request_id: RequestIdSettings = Field(
        default_factory=RequestIdSettings,
        description="How every request's ID is taken or made, forwarded, returned and logged.",
    )
    shutdown_timeout: Duration = Field(
        default=30.0,
        description=(
            "How long in-flight requests may run after SIGTERM; then their connections are cut and the process exits. "
            "An idle keep-alive connection is closed once idle 1 s; until then its next request is answered, with "
            "`Connection: close`."
        ),
    )
    reload_timeout: Duration = Field(
        default=10.0,
        description=(
            "How long a reload waits for the new policy's providers to have keys in every worker; past it the reload "
            'is refused and the running policy stays (logged, `gateway_config_reloads_total{result="failure"}`).'
        ),
    )
    keepalive_timeout: Duration = Field(
        default=75.0,
        description=(
            "How long a client connection may stay idle between requests; also the time a new connection has to send "
            "its first complete request head (a client trickling header bytes is cut off). nginx's default."
        ),
    )
    send_timeout: Duration = Field(
        default=60.0,
        description=(
            "How long a client may take none of its response (its receive window stays full) before the gateway cuts "
            "the connection; as nginx's `send_timeout`."
        ),
    )
    # Budgets of a client connection (gateway/limits.py; SECURITY.md gives the worst case).
    max_connections: StrictInt | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description=(
            "Open client connections in each worker process (the gateway's bound is `workers` x this). Unset: 10 000, "
            "or `(RLIMIT_NOFILE - 64) / 2` if lower. Past it a new connection is answered `503` (`Retry-After: 1`) and "
            "closed at once, without reading it: a balancer retries elsewhere rather than wait, and the descriptors "
            "never run out (each client connection may hold an upstream one). Logged at most every 10 s, counted in "
            '`gateway_connections_refused_total`. Size it to memory: see SECURITY.md, "Bounded memory".'
        ),
    )
    max_header_line: StrictInt = Field(
        default=8192,
        ge=1024,
        le=65536,
        description=(
            "The longest header line in bytes (name, colon, value), except `Authorization`, whose limit is `2 x "
            "identity.max_token_bytes + 1024` so that an oversized token gets `401 token_too_large`. Past it: `431`."
        ),
    )
    max_head_bytes: StrictInt | None = Field(
        default=None,
        ge=4096,
        le=1024 * 1024,
        description=(
            "A whole request head in bytes, request line to blank line (Envoy: 60 KiB). Unset: 64 KiB, more if "
            "`identity.max_token_bytes` needs it. Past it: `431`, as soon as the bytes arrive. Must hold a request "
            "line (8 190), the `Authorization` line and 4 KiB: checked at load."
        ),
    )
    max_headers: StrictInt = Field(
        default=100, ge=8, le=1000, description="Header fields in one request head. Past it: `431`."
    )
    max_pipelined_bytes: StrictInt = Field(
        default=64 * 1024,
        ge=0,
        le=16 * 1024 * 1024,
        description=(
            "Requests (heads and bodies) read ahead of the one being answered (pipelining), in bytes, besides the "
            "limit of 32 requests. Past it the gateway stops reading the connection until the queue drains; with `0`, "
            "one head at most is read ahead."
        ),
    )
    upstream_keepalive: StrictBool = Field(
        default=True,
        description=(
            "Keep upstream connections alive for the client connection that opened them (never shared between client "
            "connections; closed after 3-4 s idle, at most 256 idle per origin). `false`: one upstream connection per "
            "request. Set it to `false` behind a front proxy that carries many users' requests on one connection to "
            "the gateway, so that an upstream that sends bytes after a response ended can never answer another user."
        ),
    )
    websocket_idle_timeout: Duration = Field(
        default=60.0,
        description=(
            "A WebSocket connection (routes with `websocket: true`) with no byte in either direction for this long is "
            "closed: a Close frame `1001` to each side, then TCP. 1s to 24h, never off. nginx's `proxy_read_timeout` "
            "default. Clients that stay quiet longer should ping. A reload's new value applies to open connections too."
        ),
    )
    max_websockets: StrictInt = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description=(
            "WebSocket connections open in each worker process, handshakes in progress included (the gateway's bound "
            "is `workers` x this). Past it a handshake is answered `503` (`reason` `websocket_limit`) and the upstream "
            "is not contacted. Each one holds two descriptors (client and upstream) and counts against "
            "`max_connections` as one client connection."
        ),
    )
    websocket_max_client_frames_per_second: StrictInt = Field(
        default=2000,
        ge=10,
        le=1_000_000,
        description=(
            "Frames each WebSocket client connection may send per second, with a burst of as many at once (a token "
            "bucket per connection). The relay reads every frame header, so this bounds the CPU a client costs: about "
            "this rate times the cost of a frame per connection, `max_websockets` times that per worker (README "
            '"WebSockets": about 0.6 ms of CPU a second per flooding connection at the default, so about 60 % of a '
            "core for 1 000 of them). Past it the client is not read until its budget refills: nothing is dropped and "
            "the connection stays open, its frames are relayed in order as the budget allows. The upstream's frames "
            "are not metered. Never off; set it high to loosen it. A reload applies it to connections opened after it; "
            "open ones keep the rate they started with."
        ),
    )

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

    workers: Workers = Field(
        default=1,
        description=(
            "Worker processes, each serving the listeners on its own event loop: a whole number from 1 to 256, or "
            "`auto`. `auto`: the CPUs this process may really use, the smaller of its affinity mask (`taskset`, a "
            "cpuset) and the cgroup v2 CPU quota (`cpu.max` of its cgroup and of every parent, which is how a "
            "container's CPU limit reaches it) rounded up: a limit of `1500m` gives 2. Not the host's core count, "
            "which in a container is usually far more than it may use. Counted at each load. `gateway run --workers "
            "N|auto` overrides it; `gateway check [--workers N|auto]` prints the number it would start and why."
        ),
    )
    watch: StrictBool = Field(
        default=True,
        description=(
            "Reload, as on SIGHUP, when the policy file or a file it names changes (`pem_file`, `jwks_file`, "
            "`hmac_secret.file`, `upstream_tls` files). The policy file is watched at the path given to `--config`, "
            "through its symlinks, so a Kubernetes ConfigMap update (a swapped `..data` symlink) is seen. Revocation "
            "files are not among them: they are re-read on their own without a reload."
        ),
    )


_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA", "HS256", "HS384", "HS512",
)  # fmt: skip


class KeySource(Strict):
    """Where a provider's verification keys come from. Exactly one field is set."""

    pem_file: StrictStr | None = Field(
        default=None,
        description=(
            "A PEM public key or X.509 certificate (path relative to the policy file). Private keys are refused. "
            "Re-read when the file changes."
        ),
    )
    jwks_file: StrictStr | None = Field(
        default=None,
        description=(
            "A JWK or JWKS file (path relative to the policy file). Keys not meant for verifying signatures (`use: "
            "enc`, or `key_ops` without `verify`) are skipped and logged; a key whose `use` and `key_ops` disagree, or "
            "with private members, is refused. Re-read within about 2 s when the file changes; an unreadable or "
            "corrupt file is logged and the last good keys stay in force."
        ),
    )
    jwks_url: StrictStr | None = Field(
        default=None,
        description=(
            "URL of a JWKS, fetched with the shared client session (never blocking) and refreshed as `remote` says."
        ),
    )
    oidc_discovery: StrictBool | None = Field(
        default=None,
        description=(
            "`true`: fetch `{issuer}/.well-known/openid-configuration`, require its `issuer` to equal ours exactly, "
            "then use its `jwks_uri` (refreshed as `remote` says)."
        ),
    )
    hmac_secret: SecretRef | None = Field(
        default=None,
        description=(
            "An HMAC secret, `{env: VAR}` or `{file: path}`, at least as long as the longest listed algorithm's hash "
            "(RFC 7518 §3.2): 32 bytes for HS256, 48 for HS384, 64 for HS512."
        ),
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> KeySource:
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise invalid("key_source", f"expected exactly one of: {', '.join(type(self).model_fields)}")
        return self


class Remote(Strict):
    """How remote key sets (`jwks_url`, `oidc_discovery`) are fetched and kept fresh."""

    refresh_interval: Duration = Field(
        default=600.0, description="Refresh period when the response has no `Cache-Control: max-age`. At least 100ms."
    )
    min_refresh: Duration = Field(
        default=60.0,
        description=(
            "Lower bound applied to `max-age` (`no-cache`/`no-store` count as 0). At least 100ms, and at most "
            "`refresh_interval`."
        ),
    )
    max_refresh: Duration = Field(
        default=86400.0, description="Upper bound applied to `max-age`; at least `refresh_interval`."
    )
    unknown_kid_cooldown: Duration = Field(
        default=30.0,
        description=(
            "At most one refetch per this period because of an unknown `kid`; concurrent misses share it. At least "
            "100ms."
        ),
    )
    retry_interval: Duration = Field(
        default=5.0, description="First retry after a failed fetch, doubling up to `refresh_interval`. At least 100ms."
    )
    max_stale: Duration = Field(
        default=43200.0,
        description=(
            "How long the last good keys outlive failing refreshes; after that the provider answers 503 until a fetch "
            "succeeds."
        ),
    )
    fetch_timeout: Duration = Field(
        default=5.0,
        description=(
            "Per fetch, in all: with `oidc_discovery` the discovery document and the key set share it (a request "
            "waiting on a refetch for an unknown `kid` waits at most this long). At least 100ms."
        ),
    )
    max_bytes: StrictInt = Field(
        default=1024 * 1024, gt=0, description="Responses larger than this many bytes are refused."
    )
    allow_insecure_http: StrictBool = Field(
        default=False, description="Allow plain `http://` to non-loopback hosts (refused otherwise)."
    )

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

    signing_keys: StrictStr = Field(
        description=(
            "Directory written by `gateway keys generate` (relative to the policy file): the private keys, read by the "
            "token CLI only, never by `gateway run`, and `jwks.json`, the public keys. The provider's `keys` must list "
            "`{jwks_file: <signing_keys>/jwks.json}`."
        )
    )
    ledger: StrictStr | None = Field(
        default=None,
        description=(
            "The issuance ledger: one JSON line per token issued (its `jti`, client, scopes, audience, times and "
            "`kid`; never the token itself), which `gateway tokens list` and `revoke` read. Unset: "
            "`<signing_keys>/ledger.jsonl`."
        ),
    )
    default_ttl: Duration = Field(
        default=90 * 86400.0,
        description=(
            "Lifetime of a token `gateway tokens issue` mints without `--ttl`. At most the provider's `max_lifetime`."
        ),
    )
    typ: StrictStr = Field(
        default="JWT",
        description=(
            "The `typ` header minted tokens carry, e.g. `at+jwt` (RFC 9068). When the provider sets `typ` too, they "
            "must agree for the tokens to verify."
        ),
    )
    publish_jwks: StrictStr | None = Field(
        default=None,
        description=(
            "Serve the public key set (`jwks.json`) at this canonical path on the public listener, e.g. "
            "`/.well-known/api-tokens/jwks.json`, for other services to verify these tokens. Unset: not served."
        ),
    )

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

    issuer: StrictStr = Field(
        min_length=1, description="Compared exactly with the token's `iss` (no trailing-slash or case folding)."
    )
    audiences: tuple[StrictStr, ...] = Field(
        min_length=1, description="The token's `aud` (string or array) must contain one of these."
    )
    algorithms: tuple[Algorithm, ...] = Field(
        min_length=1,
        description=(
            "Explicit allow-list of `RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512 EdDSA HS256 HS384 HS512`. "
            "`none` is refused; HMAC (`HS*`) and asymmetric algorithms cannot be mixed. Each key is only tried with "
            "algorithms that fit its type."
        ),
    )
    keys: tuple[KeySource, ...] = Field(
        min_length=1, description="Where the verification keys come from: each entry exactly one key source (below)."
    )
    leeway: Duration = Field(
        default=30.0,
        description=(
            "Clock skew allowed on `exp`, `nbf`, `iat`; at most `5m` (a longer one is a load error: it would keep "
            "expired tokens alive)."
        ),
    )
    max_lifetime: Duration | None = Field(
        default=None,
        description=(
            "Refuse tokens whose `exp - iat` (or `exp - now` without `iat`) is longer. Unset: no limit. Required with "
            "`api_tokens`; `gateway check` warns when it is very long."
        ),
    )
    typ: StrictStr | None = Field(
        default=None,
        description=(
            "Required `typ` header, e.g. `at+jwt` (RFC 9068); compared case-insensitively, `application/` optional. "
            "Unset: any `typ`, or none."
        ),
    )
    required_claims: tuple[ClaimName, ...] = Field(
        default=(), description="Claims that must be present (`exp`, `iss` and `aud` always are)."
    )
    remote: Remote = Field(
        default_factory=Remote,
        description="Fetching and refreshing the key sets of `jwks_url` and `oidc_discovery` sources.",
    )
    revocation_file: StrictStr | None = Field(
        default=None,
        description=(
            "Revoked token ids, a JSON file that `gateway tokens revoke` writes (relative to the policy file). With it "
            "every token of this provider must carry a `jti`, and a listed one is refused, open WebSockets included. "
            "Re-read within a few seconds of a change, without a policy reload; a file that cannot be parsed is logged "
            "and the last good list stays in force. Required with `api_tokens`."
        ),
    )
    api_tokens: ApiTokens | None = Field(
        default=None,
        description=(
            "This provider's tokens are minted here, by `gateway tokens issue`: needs `max_lifetime` and "
            "`revocation_file`. Unset: tokens come from an outside issuer."
        ),
    )

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

    cert_file: StrictStr = Field(
        min_length=1,
        description=(
            "The server certificate chain, PEM, leaf first (path relative to the policy file). Refused at load "
            "(file:line) when unreadable, without a certificate, or expired; a key too weak for OpenSSL's security "
            "level 2 (RSA under 2048 bits) is refused too."
        ),
    )
    key_file: StrictStr = Field(
        min_length=1,
        description=(
            "Its private key, PEM. Refused at load when unreadable, not a key, encrypted (there is no passphrase "
            "option: OpenSSL would prompt on the terminal), or not the certificate's key. Its content is never logged."
        ),
    )
    min_version: TlsVersion = Field(
        default="1.2",
        description=(
            "The oldest TLS version accepted, `1.2` or `1.3` (quoted or not). TLS 1.0 and 1.1 are never offered; `1.3` "
            "refuses TLS 1.2 clients too."
        ),
    )
    # A connection that has not completed its handshake by then is closed (asyncio's
    # default is 60 s, long enough for a slow-loris of handshakes).
    handshake_timeout: Duration = Field(
        default=10.0,
        description=(
            'A connection that has not completed its handshake by then is closed (counted `reason="timeout"`); 100ms '
            "to 1m. After the handshake, `server.keepalive_timeout` bounds the wait for the first request head. A stop "
            "(SIGTERM) lets handshakes in progress finish, for at most this long, and drains them like the other "
            "connections."
        ),
    )
    client_ca_file: StrictStr | None = Field(
        default=None,
        min_length=1,
        description=(
            "PEM CA certificates that client certificates must chain to. With it the handshake asks for a client "
            "certificate, and a certificate that does not verify fails the handshake. Unset: no client certificates."
        ),
    )
    client_auth: Literal["required", "optional"] | None = Field(
        default=None,
        description=(
            "`required` or `optional` (unset means `required` when `client_ca_file` is set). `optional`: a client "
            "without a certificate is served too (a certificate that is presented must still verify). Needs "
            "`client_ca_file`."
        ),
    )
    client_subject_header: HeaderName | None = Field(
        default=None,
        description=(
            "The verified client certificate's subject (RFC 4514, e.g. `CN=billing,O=Acme`, the last RDN first) is "
            'sent upstream in this header, rendered as a claim value is (README "Forwarded identity headers": `,` is '
            "`%2C`). The header is removed from every inbound request on every route, in any spelling, whether or not "
            "the connection has a certificate; it cannot be a framing, forwarding or override header, nor collide with "
            "a claim header. Needs `client_ca_file`."
        ),
    )

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

    enabled: StrictBool = Field(default=True, description="Write one line per request on stdout.")
    format: Literal["json", "text"] = Field(
        default="json", description='`json` or `text`; README, "Access log", lists the fields.'
    )
    subject: StrictBool = Field(
        default=True,
        description=(
            "Log the verified `sub` claim (also on a 403). Turn it off where subjects are personal data you may not "
            "log."
        ),
    )
    redact_params: tuple[StrictStr, ...] = Field(
        default=(),
        description=(
            'Query and path parameter names to redact on top of the built-in list and rules (README, "Redaction"); '
            "compared folded (case, `-` `.` `_`, `[]`)."
        ),
    )


class TokenCacheSettings(Strict):
    """Verified tokens remembered across requests (route checks still run every time)."""

    max_entries: StrictInt = Field(
        default=10_000, ge=0, le=1_000_000, description="LRU bound on remembered tokens; `0` disables the cache."
    )
    max_ttl: Duration = Field(
        default=300.0, description="The longest an entry is trusted after the token was verified."
    )


class Identity(Strict):
    """How verified identity reaches the upstream, and how tokens are taken from requests."""

    realm: StrictStr = Field(
        default="gateway",
        pattern=REALM_PATTERN,
        description='The `realm` of `WWW-Authenticate` challenges (no `"`, `\\` or control characters).',
    )
    reserved_prefix: HeaderName = Field(
        default="X-Auth-",
        description="Every inbound header with this prefix, in any spelling, is removed on every route.",
    )
    claims: dict[ClaimName, HeaderName] = Field(
        default_factory=lambda: {"sub": "X-Auth-Subject", "iss": "X-Auth-Issuer"},
        description=(
            "Claim (dot path for nested claims) → header: claims forwarded on every token route. Every header named "
            "here (or in any route's `forward_claims`) is also stripped from inbound requests on every route. `Host`, "
            '`Authorization`, framing, forwarding and override headers (README "Headers") cannot carry claims.'
        ),
    )
    provider_header: HeaderName | None = Field(
        default="X-Auth-Provider",
        description="Carries the name of the provider that verified the token; `null`: not sent.",
    )
    max_token_bytes: StrictInt = Field(
        default=8192, ge=256, le=65536, description="Longer tokens are refused (`401 token_too_large`)."
    )


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

    path: StrictStr | None = Field(
        default=None, description="Exact match on the canonical path. One of `path` or `prefix`."
    )
    prefix: StrictStr | None = Field(
        default=None,
        description=(
            "Segment-aware: `/orders` matches `/orders`, `/orders/7`, not `/ordersX`. `/` matches everything. No "
            "trailing slash. One of `path` or `prefix`."
        ),
    )
    methods: tuple[Method, ...] | None = Field(
        default=None,
        min_length=1,
        description=(
            "Upper-case methods this route takes, e.g. `[GET, HEAD]`. Unset: any. `CONNECT`, `TRACE` and `TRACK` are "
            "never forwarded."
        ),
    )
    host: StrictStr | None = Field(
        default=None,
        description=(
            "Compared case-insensitively with the `Host` header, port and one trailing dot ignored (a `Host` that is "
            "not `name[:port]` with a port in 1-65535 is refused with 400 before routing). Unset: any host."
        ),
    )

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

    ca_file: StrictStr | None = Field(
        default=None,
        description=(
            "PEM bundle of the CAs that may sign the upstream's certificate; replaces the system's. Unset: the system "
            "CAs."
        ),
    )
    cert_file: StrictStr | None = Field(
        default=None,
        description=(
            "A client certificate (mTLS), PEM; with `key_file`, both or neither. A pair that does not match, an "
            "encrypted key or an expired certificate is a load error."
        ),
    )
    key_file: StrictStr | None = Field(
        default=None, description="The client certificate's unencrypted PEM key; with `cert_file`, both or neither."
    )
    server_name: StrictStr | None = Field(
        default=None,
        description=(
            "Sent in SNI and checked against the certificate (for an upstream reached by IP or by a name its "
            "certificate does not carry). Unset: the URL's host."
        ),
    )
    insecure_skip_verify: StrictBool = Field(
        default=False,
        description=(
            "`true` accepts any certificate from this origin. `gateway check` and `gateway run` warn about it. Not "
            "allowed with `ca_file`."
        ),
    )
    min_version: Literal["1.2", "1.3"] = Field(
        default="1.2", description='The lowest TLS version offered, `"1.2"` or `"1.3"`.'
    )

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

    connect: Duration = Field(default=5.0, description="To obtain a connection to the upstream; past it: `502`.")
    read: Duration = Field(
        default=30.0,
        description=(
            "The longest wait for the next bytes from the upstream (response headers or body); past it before the "
            "headers: `504`; during the body: the client connection is cut. No total limit, so long streams are fine."
        ),
    )


ClaimValue = StrictStr | StrictBool | int | float


class JwtAuth(Strict):
    """A bearer JWT from any of the named providers. `optional` lets a missing token pass."""

    any_of: tuple[StrictStr, ...] = Field(
        min_length=1,
        description=(
            "Provider names: a token from any one of them is accepted; unknown names are refused at load, listing the "
            "known ones. The token's (unverified) `iss` picks the provider, which then verifies it fully."
        ),
    )
    optional: StrictBool = Field(
        default=False,
        description="A request without a token passes with no identity; a token that is present must still be valid.",
    )
    scopes: tuple[StrictStr, ...] = Field(
        default=(),
        description="All required, read from the `scope` claim (space-delimited) and `scp` (array or string).",
    )
    claims: dict[ClaimName, ClaimValue | tuple[ClaimValue, ...]] = Field(
        default_factory=dict,
        description=(
            "Claim (dot path) → value or list: the claim must equal the value, or one of the list; an array claim must "
            "contain one. Types must match (`true` is not `1`)."
        ),
    )
    audiences: tuple[StrictStr, ...] | None = Field(
        default=None,
        min_length=1,
        description=(
            "Narrows the accepted audiences, per provider: a token from provider P must name one of P's audiences that "
            "is also in this list. Every listed provider must keep at least one. Unset: the providers' audiences."
        ),
    )
    forward_claims: dict[ClaimName, HeaderName | None] = Field(
        default_factory=dict,
        description="Claim → header, added to `identity.claims` for this route; `null` removes a global mapping.",
    )
    allow_query_token: StrictBool = Field(
        default=False,
        description=(
            "Accept `?access_token=` (RFC 6750 §2.3) and remove it before forwarding. Off by default: URLs are logged "
            "and cached."
        ),
    )

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

    allow_origins: tuple[Origin, ...] = Field(
        min_length=1,
        description=(
            "Exact `scheme://host[:port]`, as browsers send it: lower case, no path or trailing slash, no default port "
            "(`:443` for https). `'*'`: every origin, alone in the list and never with `allow_credentials`. `null` and "
            "wildcard subdomains are refused."
        ),
    )
    allow_methods: tuple[Method, ...] | None = Field(
        default=None,
        min_length=1,
        description=(
            "Methods a preflight may ask for; each must be one the route matches. Unset: the route's `match.methods`, "
            "else `[GET, HEAD, POST]`."
        ),
    )
    allow_headers: tuple[CorsHeader, ...] = Field(
        default=(),
        description=(
            "Request headers a preflight may ask for (`Access-Control-Request-Headers`, compared case-insensitively); "
            "list `Authorization` for bearer tokens and `Content-Type` for JSON bodies. `'*'` is refused: name them."
        ),
    )
    expose_headers: tuple[CorsHeader, ...] = Field(
        default=(),
        description="Response headers the app's code may read beyond the safelisted ones, e.g. `X-Request-Id`.",
    )
    allow_credentials: StrictBool = Field(
        default=False,
        description="`Access-Control-Allow-Credentials: true`: the browser may send cookies and read the answer.",
    )
    max_age: Duration | None = Field(
        default=None,
        description=(
            "`Access-Control-Max-Age` on granted preflights, whole seconds, at most `24h` (Chromium caps it at 2 h, "
            "Firefox at 24 h). Unset: not sent (browsers then cache a preflight for 5 s)."
        ),
    )


class ClientCert(Strict):
    """What a route requires of the client certificate (TLS with client_ca_file)."""

    subjects: tuple[StrictStr, ...] = Field(
        min_length=1,
        description=(
            "RFC 4514 names, written as `openssl x509 -noout -subject -nameopt RFC2253` prints them (the last RDN "
            "first, no space after `,`: `CN=billing,O=Acme`); the certificate's subject must be one of them. A name "
            "that does not parse is refused at load."
        ),
    )


class Route(Strict):
    """One entry of the ordered route table."""

    name: StrictStr = Field(
        pattern=ROUTE_NAME_PATTERN,
        description=(
            "Unique; a letter or digit, then letters, digits and `_.:-` (up to 100); used in logs and as a metric "
            "label."
        ),
    )
    match: Match = Field(description="Which requests this route takes.")
    upstream: StrictStr = Field(
        description=(
            "`http(s)://host[:port][/base]`: where to forward. The base path is prepended to the forwarded path. No "
            "query, fragment or credentials."
        )
    )
    strip_prefix: StrictBool = Field(
        default=False,
        description="Remove `match.prefix` from the path before prepending the base. Needs `match.prefix`.",
    )
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Upstream timeouts.")
    forward_authorization: StrictBool = Field(
        default=False,
        description="Pass the client's `Authorization` header to the upstream (otherwise the gateway consumes it).",
    )
    # No default: every route states its auth, so forgetting it cannot open a route.
    auth: Auth = Field(
        description=(
            "`public`: no token needed. A mapping: a bearer JWT (`routes[].auth`). There is no default, so a forgotten "
            "`auth` cannot open a route."
        )
    )
    cors: Cors | None = Field(
        default=None,
        description=(
            'Browser callers from other origins (`routes[].cors`; README, "Browser callers (CORS)"). Unset: '
            "`OPTIONS` requests are routed and authenticated as any other and the upstream's CORS headers pass through."
        ),
    )
    client_cert: ClientCert | None = Field(
        default=None,
        description=(
            "The request must come on a TLS connection whose verified client certificate has one of `subjects`; "
            "checked before `auth`, and both must pass. Otherwise `403` `client_cert_mismatch` (counted in "
            "`gateway_auth_failures_total`). Needs `tls.client_ca_file`; with `client_auth: optional`, the other "
            "routes still serve clients without a certificate."
        ),
    )
    websocket: StrictBool = Field(
        default=False,
        description=(
            "Relay WebSocket handshakes (`Upgrade: websocket`) on this route: authorized like any request, forwarded "
            "with the `Sec-WebSocket-*` headers, and after the upstream's `101` a byte relay both ways (README "
            '"WebSockets"). Off, and for any other upgrade (`h2c`), the `Upgrade` is dropped, the request answered '
            "as plain HTTP and the connection closed. On reload, each open connection is authorized again by the new "
            "policy as if its handshake arrived now: refused (route gone or no longer `websocket`, token or client "
            "certificate no longer accepted), it is closed with `1008` (`reason` `policy_changed`); its route's "
            "upstream changed, `1001` (`upstream_changed`); admitted, it goes on under the new route's settings."
        ),
    )
    websocket_close_on_expiry: StrictBool = Field(
        default=True,
        description=(
            "Close an authenticated WebSocket (Close frame `1008`) when its token's `exp` passes or its `jti` is "
            "revoked. `false` lets a connection outlive its token (a reload still re-checks it, with the token's times "
            "as of its handshake)."
        ),
    )

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
    """The gateway's policy file: listeners, token providers and the ordered route table."""

    SCHEMA_ID: ClassVar[str] = "https://gateway.dev/schema/policy.json"

    listen: ListenAddress = Field(
        default_factory=lambda: Listen(host="0.0.0.0", port=8080),
        description=(
            "Listen address of the public (proxy) listener: `host:port`, `[::1]:8080` for IPv6, port `0` picks a free "
            "port."
        ),
    )
    tls: Tls | None = Field(default=None, description="TLS on the public listener (`tls`). Unset: plain HTTP.")
    admin: Admin = Field(default_factory=Admin, description="The operators' listener (`admin`).")
    server: Server = Field(default_factory=Server, description="Process-wide settings (`server`).")
    access_log: AccessLogSettings = Field(
        default_factory=AccessLogSettings, description="The per-request log on stdout (`access_log`)."
    )
    token_cache: TokenCacheSettings = Field(
        default_factory=TokenCacheSettings, description="Verified tokens remembered across requests (`token_cache`)."
    )
    identity: Identity = Field(
        default_factory=Identity, description="How tokens are read and verified identity is forwarded (`identity`)."
    )
    providers: dict[ProviderName, Provider] = Field(
        default_factory=dict,
        description="Named token issuers (`providers.<name>`), referenced from `routes[].auth.any_of`.",
    )
    upstream_tls: dict[StrictStr, UpstreamTls] = Field(
        default_factory=dict,
        description=("How the gateway speaks TLS to upstream origins: `https://host[:port]` to its settings (below)."),
    )
    routes: tuple[Route, ...] = Field(
        min_length=1,
        description=(
            "The ordered route table (`routes[]`), at least one route; the first that matches takes the request."
        ),
    )
