"""Why a TLS handshake failed, as one of a closed set of metric label values.

The label never carries peer-chosen text: OpenSSL's reason codes are mapped through a
fixed table, and anything unlisted is `other`.
"""

from __future__ import annotations

import ssl

FAILURE_REASONS = (
    "protocol_version",  # the client offered only versions below min_version (TLS 1.0, 1.1)
    "not_tls",  # plaintext HTTP (or other bytes that are no TLS record) on the TLS port
    "no_shared_cipher",
    "certificate_refused",  # the client refused our certificate (unknown CA, expired, wrong name)
    "no_client_cert",  # client_auth: required, and the client sent none
    "bad_client_cert",  # the client's certificate does not verify against client_ca_file
    "timeout",  # no complete handshake within tls.handshake_timeout
    "closed",  # the client closed or reset the connection during the handshake
    "other",
)
VERSIONS = {"TLSv1.2": "1.2", "TLSv1.3": "1.3"}

_BY_OPENSSL_REASON = {
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "WRONG_SSL_VERSION": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "NO_PROTOCOLS_AVAILABLE": "protocol_version",
    "HTTP_REQUEST": "not_tls",
    "HTTPS_PROXY_REQUEST": "not_tls",
    "WRONG_VERSION_NUMBER": "not_tls",
    "UNKNOWN_PROTOCOL": "not_tls",
    "PACKET_LENGTH_TOO_LONG": "not_tls",
    "RECORD_LENGTH_MISMATCH": "not_tls",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "TLSV1_ALERT_UNKNOWN_CA": "certificate_refused",
    "SSLV3_ALERT_BAD_CERTIFICATE": "certificate_refused",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate_refused",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate_refused",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "certificate_refused",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_cert",
    "CERTIFICATE_VERIFY_FAILED": "bad_client_cert",
    "UNEXPECTED_EOF_WHILE_READING": "closed",
}


def failure_reason(exc: BaseException) -> str:
    """The label for a handshake that raised `exc`; always one of FAILURE_REASONS."""
    if isinstance(exc, ssl.SSLError):
        if isinstance(exc, ssl.SSLEOFError):
            return "closed"
        return _BY_OPENSSL_REASON.get(exc.reason or "", "other")
    # asyncio and uvloop abort a handshake that outlives ssl_handshake_timeout with
    # ConnectionAbortedError; a peer that leaves raises the other ConnectionErrors.
    if isinstance(exc, ConnectionAbortedError | TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionError | EOFError):
        return "closed"
    return "other"


def version_label(version: str | None) -> str:
    """`1.2` or `1.3` (the only versions a handshake can end with here), else `other`."""
    return VERSIONS.get(version or "", "other")
