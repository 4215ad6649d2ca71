"""TLS to one upstream origin: an SSL context built once, at load, from the policy.

Verification is on by default (the system's CAs, or `ca_file`), with the URL's host or
`server_name` checked against the certificate. The context is built from the bytes
the policy load read (so a worker builds it from the supervisor's snapshot):
the client certificate and key reach OpenSSL through in-memory files (tls/memfile.py),
never written to disk.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass

from cryptography import x509

from gateway.tls.memfile import load_chain

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True, eq=False)
class UpstreamTls:
    """Compared by identity: connections made under one policy's settings are never
    reused under another's (a reload that changes them gets new connections)."""

    context: ssl.SSLContext
    # Sent in SNI and verified; None: the URL's host.
    server_name: str | None
    verify: bool

    def hostname(self, host: str) -> str:
        return self.server_name or host


class TlsSettingsError(ValueError):
    """What is wrong with a CA, certificate or key (never their contents), and which
    setting named it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def build(
    *,
    ca: bytes | None,
    cert: bytes | None,
    key: bytes | None,
    server_name: str | None,
    verify: bool,
    min_version: str,
) -> UpstreamTls:
    """(TlsSettingsError naming which part is wrong.)"""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = _VERSIONS[min_version]
    context.set_alpn_protocols(["http/1.1"])
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if ca is not None:
        context = _with_ca(context, ca)
    if cert is not None and key is not None:
        _expiry_check(cert)
        _load_chain(context, cert, key)
    return UpstreamTls(context, server_name, verify)


def _with_ca(context: ssl.SSLContext, ca: bytes) -> ssl.SSLContext:
    # A fresh context without the system's CAs: `ca_file` replaces them.
    only = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    only.minimum_version = context.minimum_version
    only.set_alpn_protocols(["http/1.1"])
    try:
        only.load_verify_locations(cadata=ca.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError):
        raise TlsSettingsError("ca_file", "not a PEM CA certificate bundle") from None
    if not only.get_ca_certs():
        raise TlsSettingsError("ca_file", "holds no CA certificate")
    return only


def _expiry_check(cert: bytes) -> None:
    try:
        parsed = x509.load_pem_x509_certificate(cert)
    except ValueError:
        raise TlsSettingsError("cert_file", "not a PEM certificate") from None
    now = datetime.datetime.now(datetime.UTC)
    after, before = parsed.not_valid_after_utc, parsed.not_valid_before_utc
    if after < now:
        raise TlsSettingsError("cert_file", f"the certificate expired on {after:%Y-%m-%d %H:%M} UTC")
    if before > now:
        raise TlsSettingsError("cert_file", f"the certificate is not valid before {before:%Y-%m-%d %H:%M} UTC")


def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    asked: list[bool] = []

    def password() -> bytes:
        asked.append(True)
        return b""

    try:
        load_chain(context, cert, key, password)
    except ssl.SSLError:  # before OSError, whose subclass it is
        if asked:
            raise TlsSettingsError("key_file", "encrypted (expected an unencrypted PEM private key)") from None
        raise TlsSettingsError("key_file", "not the private key of cert_file (or not a PEM private key)") from None
    except OSError as exc:  # no memfd (not Linux), or no /proc
        raise TlsSettingsError("cert_file", f"cannot load a client certificate here ({exc.strerror})") from None
