"""CORS for browser callers: a route's `cors` settings, compiled, and the answers they give.

Pure: the handler asks it two questions. For a preflight (`OPTIONS` with `Origin` and
`Access-Control-Request-Method`), which headers to answer with, or why not; for any
other request on the route, which headers to add to the response, whoever made it (the
upstream or the gateway's own 401). Origins match exactly; nothing here reads YAML or
compiles a pattern per request.

Fetch Standard §3.2 ("CORS protocol") is the reference; where it leaves a choice, the
choices follow Kong's cors plugin and Envoy's CORS filter (README, "Browser callers").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.errors import Reason

ANY = "*"
# Response headers that state a CORS policy. On a cors route the gateway's are the only
# ones the browser sees: an upstream's (a framework's default `*`, say) are dropped, in
# any spelling, so two policies can never disagree about one response.
POLICY_HEADERS = frozenset(
    {
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-expose-headers",
        "access-control-max-age",
    }
)
# A preflight's answer depends on all three; caches must key on them (Fetch §3.2.5).
_PREFLIGHT_VARY = ("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
_VARY_ORIGIN = ("Vary", "Origin")
_LIST_SPACE = " \t"

# scheme "://" host [":" port]: the serialisation browsers send (RFC 6454 §6.2), lower
# case, default port omitted. Host: DNS-style labels or a bracketed IPv6 literal.
_ORIGIN = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://"
    r"(?P<host>[a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\])"
    r"(?::(?P<port>[1-9][0-9]{0,4}))?"
)
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def origin_problem(value: str) -> str | None:
    """Why `value` cannot be an allowed origin (load time only), or None.

    `null` is refused: it is what sandboxed iframes, `file:` pages and cross-origin
    redirects send, so any site can make a request that carries it."""
    if value == ANY:
        return None
    if value == "null":
        return (
            "the 'null' origin cannot be allowed: any page can send it (a sandboxed iframe, "
            "a file: page); expected scheme://host[:port]"
        )
    m = _ORIGIN.fullmatch(value)
    if m is None:
        lowered = value.lower()
        if lowered != value and _ORIGIN.fullmatch(lowered):
            return f"not an origin: {value!r} (browsers send it lower-case: expected {lowered!r})"
        trimmed = value.rstrip("/")
        if trimmed != value and _ORIGIN.fullmatch(trimmed.lower()):
            return f"not an origin: {value!r} (no path or trailing slash: expected {trimmed.lower()!r})"
        return f"not an origin: {value!r} (expected scheme://host[:port], e.g. https://app.example.com, or '*')"
    port = m.group("port")
    if port is not None and int(port) > 65535:
        return f"not an origin: {value!r} (port out of range)"
    if port is not None and _DEFAULT_PORTS.get(m.group("scheme")) == port:
        short = value.removesuffix(":" + port)
        return f"not an origin: {value!r} (browsers omit the default port: expected {short!r})"
    return None


def header_list(values: Iterable[str]) -> list[str]:
    """A comma-separated header list (RFC 9110 §5.6.1), lower-cased, empty items dropped."""
    out = []
    for value in values:
        for item in value.split(","):
            item = item.strip(_LIST_SPACE)
            if item:
                out.append(item.lower())
    return out


def single(values: Sequence[str]) -> str | None:
    """The value of a header sent exactly once; None if absent or repeated."""
    return values[0] if len(values) == 1 else None


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """One route's compiled `cors`. Header tuples are built once, here."""

    origins: frozenset[str]  # exact, as browsers send them; {"*"} for any origin
    methods: tuple[str, ...]
    headers: tuple[str, ...] = ()  # as configured (case kept for the response)
    expose: tuple[str, ...] = ()
    credentials: bool = False
    max_age: int | None = None  # seconds; None: the header is not sent

    any_origin: bool = field(init=False)
    _methods: frozenset[str] = field(init=False)
    _headers: frozenset[str] = field(init=False)
    _preflight: tuple[tuple[str, str], ...] = field(init=False)
    _actual: tuple[tuple[str, str], ...] = field(init=False)

    def __post_init__(self) -> None:
        any_origin = ANY in self.origins
        # Refused at load too (policy/compile.py): this is the last line, not the message.
        if any_origin and (self.credentials or len(self.origins) > 1):
            raise ValueError("'*' is an origin list of its own, and never with credentials")
        set_ = object.__setattr__
        set_(self, "any_origin", any_origin)
        set_(self, "_methods", frozenset(self.methods))
        set_(self, "_headers", frozenset(h.lower() for h in self.headers))
        credentials = (("Access-Control-Allow-Credentials", "true"),) if self.credentials else ()
        preflight = [("Access-Control-Allow-Methods", ", ".join(self.methods))]
        if self.headers:
            preflight.append(("Access-Control-Allow-Headers", ", ".join(self.headers)))
        if self.max_age is not None:
            preflight.append(("Access-Control-Max-Age", str(self.max_age)))
        set_(self, "_preflight", (*preflight, *credentials, _PREFLIGHT_VARY))
        expose = (("Access-Control-Expose-Headers", ", ".join(self.expose)),) if self.expose else ()
        set_(self, "_actual", (*credentials, *expose))

    def describe(self) -> str:
        """For `gateway check`'s route table."""
        text = f"origins={','.join(sorted(self.origins))} methods={','.join(self.methods)}"
        return text + (" credentials" if self.credentials else "")

    def allows(self, origin: str | None) -> bool:
        return origin is not None and (self.any_origin or origin in self.origins)

    def preflight(self, origin: str, method: str, requested: Sequence[str]) -> list[tuple[str, str]] | Reason:
        """The headers of a 204 answering this preflight, or why it is refused.

        `requested` is every `Access-Control-Request-Headers` line; each listed name
        must be configured (compared case-insensitively: browsers send them lower-case)."""
        if not self.allows(origin):
            return Reason.CORS_ORIGIN_NOT_ALLOWED
        if method not in self._methods:
            return Reason.CORS_METHOD_NOT_ALLOWED
        if requested and not self._headers.issuperset(header_list(requested)):
            return Reason.CORS_HEADER_NOT_ALLOWED
        # `*` needs no echo (and is never with credentials); an exact origin is echoed.
        return [("Access-Control-Allow-Origin", ANY if self.any_origin else origin), *self._preflight]

    def actual(self, origin: str | None) -> list[tuple[str, str]]:
        """Headers for any other response on the route: the grant for an allowed origin,
        and `Vary: Origin` whenever the answer depends on the origin (Fetch §3.2.5:
        a cache must not give one origin's grant, or its absence, to another)."""
        if self.any_origin:
            # The same for every request, Origin or not: nothing for a cache to vary on.
            return [("Access-Control-Allow-Origin", ANY), *self._actual]
        if origin is None or origin not in self.origins:
            return [_VARY_ORIGIN]
        return [("Access-Control-Allow-Origin", origin), _VARY_ORIGIN, *self._actual]
