"""What went wrong with a key fetch, in words an operator can act on.

aiohttp's exception classes alone ("ClientConnectorError") do not say whether the IdP
refused the connection, its name did not resolve or its certificate was refused. Only
facts from our side of the connection are used: never the response's content.
"""

from __future__ import annotations

import ssl

import aiohttp


def describe(exc: aiohttp.ClientError) -> str:
    """The cause of a failed request: refused, DNS, TLS, a cut or malformed response."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert = exc.certificate_error
        why = getattr(cert, "verify_message", None) or type(cert).__name__
        return f"TLS: the server's certificate was not accepted ({why})"
    if isinstance(exc, aiohttp.ClientConnectorSSLError | aiohttp.ClientSSLError):
        reason = exc.os_error.reason if isinstance(exc.os_error, ssl.SSLError) else None
        return f"TLS handshake failed ({reason or type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"DNS: the name {exc.host} did not resolve"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return f"connection refused by {exc.host}:{exc.port}"
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without a complete answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the response body was cut short or malformed"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "the response was not valid HTTP"
    if isinstance(exc, aiohttp.InvalidURL):
        return "not a valid URL"
    return type(exc).__name__
