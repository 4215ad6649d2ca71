"""Removing secrets from what gets logged. Pure functions; one list of names.

A query parameter whose name (percent-decoded, case-insensitive) is on the list keeps
its name and loses its value; a fragment is dropped whole; anything shaped like a JWT
is removed wherever it appears.
Every function here runs on request data, so each is linear in its input and reads at
most `MAX_INPUT` characters of it, and returns at most `MAX_OUTPUT` (plus the
truncation marker): a log line is bounded whatever a client sends.
"""

from __future__ import annotations

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

# The built-in list: credentials, tokens, signatures and session ids that commonly ride
# in URLs (OAuth 2.0, OIDC, API keys, AWS and GCS presigned URLs).
SECRET_PARAMS = frozenset(
    {
        "access_token",
        "id_token",
        "refresh_token",
        "token",
        "code",
        "client_secret",
        "api_key",
        "apikey",
        "key",
        "secret",
        "password",
        "passwd",
        "pwd",
        "signature",
        "sig",
        "jwt",
        "session",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
    }
)


class Redactor:
    """Built-in names plus the configured ones, folded once."""

    __slots__ = ("_names",)

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self._names = SECRET_PARAMS | frozenset(n.lower() for n in extra)

    # -- what the access log calls ------------------------------------------------------

    def target(self, target: str) -> str:
        """A request target (path, query, and a fragment a client should not send)."""
        target, cut = _head(target)
        return clip(self._uri(target, cut), cut)

    def url(self, url: str) -> str:
        """An absolute URL (e.g. Referer): userinfo, fragment, secrets and JWTs removed."""
        url, cut = _head(url)
        start = url.find("//")
        if start >= 0:
            end = start + 2
            stop = len(url)
            for sep in "/?#":
                found = url.find(sep, end, stop)
                if found >= 0:
                    stop = found
            at = url.rfind("@", end, stop)
            if at >= 0:
                url = url[:end] + MARKER + url[at:]
        return clip(self._uri(url, cut), cut)

    def text(self, value: str) -> str:
        """Free text from a request (User-Agent, an unknown method): JWTs removed."""
        cut = len(value) > MAX_INPUT
        return clip(without_jwts(value[:MAX_INPUT], MARKER, cut), cut)

    def query(self, query: str, cut: bool = False) -> str:
        if not query:
            return query
        parts = query.split("&")
        for i, part in enumerate(parts):
            name, eq, _ = part.partition("=")
            if eq and unquote_plus(name).lower() in self._names:
                parts[i] = f"{name}={MARKER}"
        return without_jwts("&".join(parts), MARKER, cut)

    def _uri(self, uri: str, cut: bool) -> str:
        # Nothing after `#` is logged: a fragment is where OAuth's implicit flow puts
        # tokens, and a client never sends one (RFC 9110 §7.1; the target is refused).
        uri, hashed, _ = uri.partition("#")
        path, quest, query = uri.partition("?")
        path = without_jwts(path, MARKER, cut and not quest)
        if quest:
            path += "?" + self.query(query, cut)
        return path + "#" + MARKER if hashed else path


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
