"""The client certificate a TLS connection was made with, as the gateway reports it."""

from __future__ import annotations

import ssl

from cryptography import x509


def client_subject(ssl_object: ssl.SSLObject | None) -> str | None:
    """The subject (RFC 4514, e.g. `CN=billing,O=Acme`) of the client certificate the
    handshake verified, or None without one.

    Only a verified certificate is ever here: the context asks for one only with a
    `client_ca_file`, and OpenSSL fails the handshake on a certificate that does not
    chain to it, `client_auth: optional` included (only its absence is allowed)."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()
