"""Taking the bearer token from a request (RFC 6750 §2), strictly.

Only `Authorization: Bearer <token>` is read by default. A token in the query string is
refused with a pointer to the header, because URLs end up in logs, caches and Referer
headers; a route may opt in, and then the parameter is removed before forwarding.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import unquote_plus

from multidict import CIMultiDictProxy

from gateway.errors import Reason

# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token, where
# b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"


def bearer_token(value: str) -> str | None:
    """The b64token of an `Authorization: Bearer` value, or None if it is not exactly
    that grammar. (A regular expression did the same at ~4 ns a character; tokens run
    to kilobytes and this runs on every request: bytes.translate scans in C.)"""
    scheme = value[:6]
    if not scheme.isascii() or scheme.lower() != "bearer":
        return None  # (isascii: some non-ASCII letters lower-case to ASCII ones)
    token = value[6:].lstrip(" ")
    if len(token) == len(value) - 6:
        return None  # no space after the scheme
    body = token.rstrip("=")
    if not body or not body.isascii() or body.encode("ascii").translate(None, _B64TOKEN_CHARS):
        return None
    return token


QUERY_PARAM = "access_token"


class Extracted(NamedTuple):
    """The token (None when the request carries none) and the query to forward."""

    token: str | None
    query: str


def _split_query_token(query: str) -> tuple[list[str], str]:
    """Values of `access_token` in the query, and the query without them (else unchanged)."""
    if not query:
        return [], query
    kept: list[str] = []
    found: list[str] = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if unquote_plus(name) == QUERY_PARAM:
            found.append(unquote_plus(value))
        else:
            kept.append(part)
    return found, ("&".join(kept) if found else query)


def extract_token(
    headers: CIMultiDictProxy[str], query: str, *, allow_query: bool, max_bytes: int
) -> Extracted | Reason:
    """Find the one bearer token of a request, or the reason the request is malformed."""
    values = headers.getall("Authorization", ())
    if len(values) > 1:
        # aiohttp does not refuse repeated Authorization headers; a backend might read
        # the other one.
        return Reason.MULTIPLE_AUTHORIZATION
    in_query, rest = _split_query_token(query)
    if in_query and not allow_query:
        return Reason.QUERY_TOKEN
    token: str | None = None
    if values:
        value = values[0]
        token = bearer_token(value)
        if token is None:
            words = value.split(maxsplit=1)
            if not words or words[0].lower() == "bearer":
                return Reason.MALFORMED_AUTHORIZATION
            # Another scheme (Basic, …) carries no bearer token: the request is treated
            # as unauthenticated for this route, as Envoy and RFC 6750 §3 do.
    if in_query:
        if token is not None or len(in_query) > 1:
            # RFC 6750 §2: a client MUST NOT use more than one method.
            return Reason.MULTIPLE_AUTHORIZATION
        token = in_query[0]
    if token is not None and len(token) > max_bytes:
        return Reason.TOKEN_TOO_LARGE
    return Extracted(token, rest)
