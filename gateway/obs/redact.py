"""Removing secrets from what gets logged. Pure functions; one list of names.

A query parameter whose name (percent-decoded, case-insensitive) is on the list keeps
its name and loses its value. Anything shaped like a JWT is removed wherever it appears.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote_plus

MARKER = "[REDACTED]"

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

# Three base64url segments, the first starting `eyJ` (`{"`); dots possibly escaped.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*(?:\.|%2[Ee])[A-Za-z0-9_-]+(?:\.|%2[Ee])[A-Za-z0-9_-]*")


class Redactor:
    """Built-in names plus the configured ones, folded once."""

    __slots__ = ("_names",)

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self._names = SECRET_PARAMS | frozenset(n.lower() for n in extra)

    def query(self, query: str) -> str:
        if not query:
            return query
        parts = query.split("&")
        for i, part in enumerate(parts):
            name, eq, _ = part.partition("=")
            if eq and unquote_plus(name).lower() in self._names:
                parts[i] = f"{name}={MARKER}"
        return _JWT.sub(MARKER, "&".join(parts))

    def target(self, target: str) -> str:
        """A request target (path and query) as it may be logged."""
        path, sep, query = target.partition("?")
        return _JWT.sub(MARKER, path) + (sep + self.query(query) if sep else "")

    def url(self, url: str) -> str:
        """An absolute URL (e.g. Referer): userinfo, query secrets and JWTs removed."""
        url = re.sub(r"(//)[^/@?#]*@", rf"\1{MARKER}@", url, count=1)
        head, sep, rest = url.partition("?")
        query, hsep, fragment = rest.partition("#")
        fragment = self.query(fragment) if hsep else ""  # OAuth implicit flow puts tokens here
        return _JWT.sub(MARKER, head) + (sep + self.query(query) if sep else "") + (hsep + fragment)
