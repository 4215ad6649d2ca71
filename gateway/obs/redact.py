"""Removing secrets from what gets logged: one list of names, a few rules on words.

A query or path parameter whose *folded* name is secret keeps its name and loses its
value; a fragment is dropped whole; anything shaped like a JWT is removed wherever it
appears.

Every function here runs on request data, so each is linear in its input, reads at
most `MAX_INPUT` characters of it and returns at most `MAX_OUTPUT` (plus the
truncation marker): a log line is bounded whatever a client sends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote_plus

from gateway.obs.jwtshape import without_jwts

MARKER = "[REDACTED]"
TRUNCATED = "...[truncated]"
# A logged field holds at most this many characters of (redacted) request data.
MAX_OUTPUT = 512
# Redaction reads at most this much: four times the output, so that a redacted JWT or
# value (which shrinks to the marker) still leaves a full field to log.
MAX_INPUT = 4 * MAX_OUTPUT

# Names, as folded by `fold_name`, whose value is a credential. Chosen from what
# OAuth 2.0 / OIDC (RFC 6749, 6750, 7636, 9126), API gateways (AWS API Gateway, Azure
# APIM, Google), presigned URLs (AWS SigV4, GCS, Azure SAS), CAS/SAML and common web
# frameworks put in URLs. `code` and the session names are bearer values too.
SECRET_PARAMS = frozenset(
    {
        "access_token",
        "id_token",
        "refresh_token",
        "token",
        "code",
        "code_verifier",
        "client_secret",
        "client_assertion",
        "assertion",
        "api_key",
        "apikey",
        "key",
        "access_key",
        "secret",
        "password",
        "passwd",
        "pwd",
        "pass",
        "signature",
        "sig",
        "jwt",
        "auth",
        "authorization",
        "bearer",
        "session",
        "session_id",
        "sessionid",
        "jsessionid",
        "phpsessid",
        "sid",
        "ticket",
        "samlresponse",
        "otp",
        "x_amz_signature",
        "x_amz_credential",
        "x_amz_security_token",
        "x_goog_signature",
        "x_goog_credential",
    }
)
# A folded name whose last `_`-word is one of these is secret too (`x_api_key`,
# `private_token`, `aws_secret`, `user_password`, `url_sig`, `basic_auth`): redacting
# a harmless `sort_key` costs an operator little, logging a key costs much more...
_SECRET_WORDS = frozenset({"token", "secret", "password", "passwd", "pwd", "pass", "key", "sig", "jwt", "auth"})
# ...and so is one that ends in one of these, words run together (`accesstoken`,
# `clientsecret`, `xapikey`); not a bare `key` tail, which `monkey` and `hockey` have.
_SECRET_ENDINGS = (
    "token",
    "secret",
    "password",
    "passwd",
    "apikey",
    "signature",
    "credential",
    "credentials",
    "assertion",
    "sessionid",
)

# How header names are folded (RFC 9110 case-insensitivity, plus the `_` and `.`
# aliases CGI/PHP/WSGI read as `-`): here all three become `_`; a space too (PHP turns
# ` ` and `.` in parameter names into `_`). NUL and other controls are dropped; a name
# with a NUL is also judged as cut there, since several frameworks cut it so
# (`access_token%00x` is `access_token` to them, `access_tokenx` to others).
_FOLD = {ord("-"): "_", ord("."): "_", ord(" "): "_", **{c: None for c in (*range(0x20), 0x7F)}}
_PARAM_SEPARATORS = re.compile(r"([&;])")
_CACHE_LIMIT = 4096  # distinct parameter names remembered (they repeat: page, q, id)
_CACHED_NAME = 64  # longer names are decided every time, never kept


def fold_name(name: str) -> str:
    """A parameter name as a framework would read it: percent-decoded once, lower-case,
    `-`, `.` and ` ` as `_`, controls removed, outer `_` stripped."""
    if "%" in name or "+" in name:
        name = unquote_plus(name)
    return name.lower().translate(_FOLD).strip("_")


class Redactor:
    """Built-in names plus the configured ones, folded once."""

    __slots__ = ("_decided", "_names")

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self._names = SECRET_PARAMS | frozenset(fold_name(n) for n in extra)
        self._decided: dict[str, bool] = {}

    def is_secret(self, name: str) -> bool:
        """Whether a raw (still percent-encoded) parameter name names a secret."""
        decided = self._decided.get(name)
        if decided is None:
            decided = self._decide(name)
            if len(name) <= _CACHED_NAME:
                if len(self._decided) >= _CACHE_LIMIT:
                    self._decided.clear()
                self._decided[name] = decided
        return decided

    def _decide(self, name: str) -> bool:
        if "%00" in name or "\x00" in name:
            decoded = unquote_plus(name) if "%" in name or "+" in name else name
            if self._decide_folded(fold_name(decoded.partition("\x00")[0])):
                return True
        return self._decide_folded(fold_name(name))

    def _decide_folded(self, folded: str) -> bool:
        if "[" not in folded and "]" not in folded:
            return self._secret_word(folded)
        # PHP and Rails arrays and hashes: `access_token[]`, `user[password]`: the
        # base name and every key in brackets are names a framework will read.
        return any(self._secret_word(part.strip("_")) for part in folded.replace("]", "[").split("["))

    def _secret_word(self, folded: str) -> bool:
        if not folded:
            return False
        return folded in self._names or folded.rpartition("_")[2] in _SECRET_WORDS or folded.endswith(_SECRET_ENDINGS)

    # -- what the access log calls ------------------------------------------------------

    def target(self, target: str) -> str:
        """A request target (path, query, and a fragment a client should not send)."""
        if not target.startswith("/"):
            # Absolute- or authority-form (refused, but logged): `http://u:pw@h/x`.
            return self.url(target)
        if len(target) <= MAX_OUTPUT and "?" not in target and ";" not in target and "#" not in target:
            return without_jwts(target, MARKER)  # the common case: a plain path
        target, cut = _head(target)
        return clip(self._uri(target, cut), cut)

    def url(self, url: str) -> str:
        """An absolute URL (e.g. Referer): userinfo, fragment, secrets and JWTs removed."""
        url, cut = _head(url)
        return clip(self._uri(_without_userinfo(url), cut), cut)

    def text(self, value: str) -> str:
        """Free text from a request (User-Agent, an unknown method): JWTs removed."""
        if len(value) <= MAX_OUTPUT and "eyJ" not in value:
            return value  # the common case, at the cost of one scan in C
        cut = len(value) > MAX_INPUT
        return clip(without_jwts(value[:MAX_INPUT], MARKER, cut), cut)

    def query(self, query: str, cut: bool = False) -> str:
        """A query string with secret parameters' values replaced. `&` and `;` both
        separate parameters (`;` does for Tomcat, Jetty, Rails, Perl CGI, Go < 1.17)."""
        if not query:
            return query
        if ";" in query:
            parts = _PARAM_SEPARATORS.split(query)  # parameter, separator, parameter, ...
            _through_ampersand(parts, self._redact_values(parts, 0, 2))
            query = "".join(parts)
        else:
            parts = query.split("&")
            self._redact_values(parts, 0, 1)
            query = "&".join(parts)
        return without_jwts(query, MARKER, cut)

    def _uri(self, uri: str, cut: bool) -> str:
        # Nothing after `#` is logged: a fragment is where OAuth's implicit flow puts
        # tokens, and a client never sends one (RFC 9110 §7.1; the target is refused).
        uri, hashed, _ = uri.partition("#")
        path, quest, query = uri.partition("?")
        path = self._path(path, cut and not quest)
        if quest:
            path += "?" + self.query(query, cut)
        return path + "#" + MARKER if hashed else path

    def _path(self, path: str, cut: bool) -> str:
        if ";" in path:
            # Path parameters: `/app;jsessionid=S/x` (Servlet containers put session
            # ids there), `/x;token=S`.
            segments = path.split("/")
            for i, segment in enumerate(segments):
                if ";" in segment:
                    params = segment.split(";")
                    self._redact_values(params, 1, 1)  # params[0] is the segment itself
                    segments[i] = ";".join(params)
            path = "/".join(segments)
        return without_jwts(path, MARKER, cut)

    def _redact_values(self, params: list[str], first: int, step: int) -> list[int]:
        """`name=value` items of `params` (from `first`, every `step`) keep `name=`
        and lose the value when the name is secret. Returns the indexes redacted."""
        redacted: list[int] = []
        for i in range(first, len(params), step):
            param = params[i]
            eq = param.find("=")
            if eq >= 0 and self.is_secret(param[:eq]):
                params[i] = param[: eq + 1] + MARKER
                redacted.append(i)
        return redacted


def _through_ampersand(parts: list[str], redacted: list[int]) -> None:
    """After a redacted value, drop the `;`-separated parts up to the next `&`: to the
    frameworks that split on `&` alone (most), `token=a;b` is one value, `a;b`, and
    redacting just `a` logged the rest of the secret. (A parameter of its own to the
    `;` readers is lost from the log with it: over-redaction costs little.)"""
    marked = frozenset(redacted)
    redacting = False
    for i in range(0, len(parts), 2):
        if i in marked:
            redacting = True
        elif i and parts[i - 1] == "&":
            redacting = False
        elif redacting:
            parts[i - 1] = parts[i] = ""


def _without_userinfo(url: str) -> str:
    """`scheme://user:pw@host/…` (or `user:pw@host:443`) with the userinfo redacted."""
    start = url.find("//")
    if start >= 0:
        begin = start + 2
    elif url.startswith("/"):
        return url
    else:
        begin = 0
    stop = len(url)
    for sep in "/?#":
        found = url.find(sep, begin, stop)
        if found >= 0:
            stop = found
    at = url.rfind("@", begin, stop)
    return url if at < 0 else url[:begin] + MARKER + url[at:]


def _head(uri: str) -> tuple[str, bool]:
    """The part of `uri` redaction reads, and whether anything loggable was cut off
    (after a `#` nothing is: the fragment is dropped whole)."""
    if len(uri) <= MAX_INPUT:
        return uri, False
    head = uri[:MAX_INPUT]
    return head, "#" not in head


def clip(value: str, cut: bool = False) -> str:
    """At most `MAX_OUTPUT` characters of `value`; marked when anything was left out."""
    if cut or len(value) > MAX_OUTPUT:
        return value[:MAX_OUTPUT] + TRUNCATED
    return value
