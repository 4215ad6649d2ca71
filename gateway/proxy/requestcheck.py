"""Request-level checks made once, before routing: what no route may ever accept.

Each refuses something a backend could read differently from the gateway:
a tunnel or loop-back method, a Host that is not a host, header bytes that aiohttp's
writer would silently alter on the way out, or a transfer coding we would drop.
"""

from __future__ import annotations

import re

from multidict import CIMultiDictProxy

from gateway.errors import Reason
from gateway.routing import parse_host

# CONNECT would make aiohttp's client open a tunnel to host:port, never the matched
# path; TRACE reflects the request (headers, cookies) back to the caller.
REFUSED_METHODS = frozenset({"CONNECT", "TRACE", "TRACK"})
_SURROGATE = re.compile("[\ud800-\udfff]")


def request_problem(method: str, headers: CIMultiDictProxy[str]) -> tuple[Reason, str] | None:
    """Why the request is refused before routing, or None."""
    if method in REFUSED_METHODS:
        return Reason.BAD_METHOD, f"method {method} is never forwarded"
    host = headers.get("Host")
    if host is not None and parse_host(host) is None:
        # One spelling per host (see `parse_host`): a backend, a log or a cache keyed on
        # the raw value must not see `gw.test:99999` as a host the policy judged.
        return Reason.BAD_REQUEST, "Host is not host[:port] with a port in 1-65535"
    codings = headers.getall("Transfer-Encoding", ())
    if codings and [c.strip().lower() for c in codings] != ["chunked"]:
        # RFC 9112 §6.1: a coding we do not apply would reach the upstream as if it
        # were the content.
        return Reason.BAD_REQUEST, "transfer coding other than chunked"
    for value in headers.values():
        # aiohttp decodes bytes that are not UTF-8 into lone surrogates, and its C
        # writer then drops them: `ad\\xffmin` would leave as `admin`.
        if not value.isascii() and _SURROGATE.search(value):
            return Reason.BAD_REQUEST, "header value is not UTF-8"
    return None
