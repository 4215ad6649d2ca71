"""A listener's TLS settings, and the server `SSLContext` built and checked from its files.

Everything that can be wrong with the files is found here, at load and at each
rotation, with a message that names the file and never quotes its content (a key file
is never echoed, not even in part):

- a file that cannot be read, or holds no PEM certificate (or key);
- a certificate that has expired;
- a key that does not belong to the certificate, or that is encrypted (the gateway
  takes no passphrase: OpenSSL would otherwise prompt for one on the terminal);
- a client CA file without a certificate.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.limits import MAX_KEY_FILE_BYTES, read_bounded
from gateway.tls.memfile import load_chain

ClientAuth = Literal["required", "optional"]
VERSIONS: dict[str, ssl.TLSVersion] = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# RFC 7301 ALPN: the proxy listener speaks HTTP/1.1 only. A client that offers only h2
# gets no ALPN answer (OpenSSL's "no overlap" is not fatal) and may go on in HTTP/1.1.
ALPN = ("http/1.1",)

FileField = Literal["cert_file", "key_file", "client_ca_file"]


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """A listener's TLS, as compiled from the policy (paths already absolute)."""

    cert_file: str
    key_file: str
    min_version: str = "1.2"
    handshake_timeout: float = 10.0
    client_ca_file: str | None = None
    client_auth: ClientAuth | None = None  # None: no client certificate is asked for
    client_subject_header: str | None = None

    @property
    def files(self) -> tuple[str, ...]:
        """What the context is built from: a change to any of them is a rotation."""
        return (self.cert_file, self.key_file) + ((self.client_ca_file,) if self.client_ca_file else ())


class TlsFileError(ValueError):
    """A TLS file is unusable. `field` names the setting; the message names the file and
    never holds key material."""

    def __init__(self, field: FileField, message: str) -> None:
        super().__init__(message)
        self.field = field


class ChangedWhileReadingError(TlsFileError):
    """A file changed between the checks and the load: try again once it settles."""


@dataclass(frozen=True, slots=True)
class LoadedTls:
    """A server context ready for handshakes, and what was checked to build it."""

    context: ssl.SSLContext
    not_after: float  # the leaf certificate's expiry, Unix time
    subject: str  # the leaf's subject (RFC 4514), for logs
    fingerprint: str  # SHA-256 of the leaf certificate, hex, for logs


class _EncryptedKeyError(Exception):
    """OpenSSL asked for a passphrase."""


def _no_passphrase() -> bytes:
    # Called by OpenSSL only for an encrypted key; raising stops the load (and keeps
    # OpenSSL from prompting on the controlling terminal).
    raise _EncryptedKeyError


def _read(path: str, field: FileField) -> bytes:
    try:
        return read_bounded(path, MAX_KEY_FILE_BYTES)
    except OSError as exc:
        raise TlsFileError(field, f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def _certificates(data: bytes, path: str, field: FileField) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        found = []
    if not found:
        raise TlsFileError(field, f"{path}: no PEM certificate in the file (expected -----BEGIN CERTIFICATE-----)")
    return found


def _utc(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """What the files held when they were read: a context is built from these bytes,
    so the pair checked is the pair served."""

    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    ca: bytes | None = field(default=None, repr=False)


def read_files(settings: TlsSettings, read: Callable[[str, FileField], bytes] | None = None) -> TlsFiles:
    """Each file once (TlsFileError naming the setting). `read` lets the policy load
    keep a copy of what it read, for the snapshot its workers build from."""
    read = read or _read
    return TlsFiles(
        cert=read(settings.cert_file, "cert_file"),
        key=read(settings.key_file, "key_file"),
        ca=read(settings.client_ca_file, "client_ca_file") if settings.client_ca_file else None,
    )


def load_tls(settings: TlsSettings, now: float) -> LoadedTls:
    """Read and check the files, and build the server context; raise TlsFileError
    (ChangedWhileReadingError for a pair torn by a rotation writing between the reads).

    Blocking (file reads, key parsing): call it at load or through `asyncio.to_thread`."""
    files = read_files(settings)
    try:
        return build_tls(settings, files, now)
    except TlsFileError:
        # A certificate read before a rotation and a key read after it do not match: not
        # a bad pair, only a torn read. Seen by reading again; the caller retries once the
        # files settle.
        if read_files(settings) != files:
            raise ChangedWhileReadingError("cert_file", f"{settings.cert_file} changed while it was read") from None
        raise


def build_tls(settings: TlsSettings, files: TlsFiles, now: float, *, expired_ok: bool = False) -> LoadedTls:
    """Check the bytes and build the server context from them (TlsFileError).
    `expired_ok`: only for a context the running workers already serve (a restarted
    worker must not stop the gateway over what the others go on with)."""
    chain = _certificates(files.cert, settings.cert_file, "cert_file")
    leaf = chain[0]
    not_after = leaf.not_valid_after_utc
    if not_after.timestamp() <= now and not expired_ok:
        raise TlsFileError("cert_file", f"{settings.cert_file}: the certificate expired at {_utc(not_after)}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # PROTOCOL_TLS_SERVER's defaults stay: the ssl module's cipher list for TLS 1.2
    # (ECDHE and DHE with AES-GCM, ChaCha20 and AES-CBC-SHA2; no RSA key exchange, SHA-1,
    # 3DES, RC4 or NULL), OpenSSL's TLS 1.3 suites, server cipher preference, no
    # compression.
    context.minimum_version = VERSIONS[settings.min_version]
    # No stateless session tickets: their key would live as long as the process, and
    # whoever obtains it can decrypt every TLS 1.2 session resumed with it (RFC 8446
    # §2.2 on forward secrecy; Mozilla's server guidance). Resumption still works from
    # each worker's own session cache.
    context.options |= ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(list(ALPN))
    try:
        load_chain(context, files.cert, files.key, _no_passphrase)
    except _EncryptedKeyError:
        raise TlsFileError(
            "key_file", f"{settings.key_file}: the key is encrypted (expected an unencrypted PEM key)"
        ) from None
    except ssl.SSLError as exc:  # before OSError, whose subclass it is
        raise _key_problem(settings, exc) from None
    except OSError as exc:  # no memfd (not Linux), or no /proc
        raise TlsFileError("cert_file", f"cannot load a certificate here ({exc.strerror})") from None
    if files.ca is not None:
        assert settings.client_ca_file is not None
        _certificates(files.ca, settings.client_ca_file, "client_ca_file")
        try:
            context.load_verify_locations(cadata=files.ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError):
            raise TlsFileError(
                "client_ca_file", f"{settings.client_ca_file}: not a PEM bundle of CA certificates"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED if settings.client_auth == "required" else ssl.CERT_OPTIONAL
    return LoadedTls(
        context=context,
        not_after=not_after.timestamp(),
        subject=leaf.subject.rfc4514_string(),
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
    )


# OpenSSL's reasons for refusing a pair that concern the certificate, not the key
# (SECLEVEL 2: an RSA key under 2048 bits, a SHA-1 or MD5 signature).
_CERT_REASONS = frozenset({"EE_KEY_TOO_SMALL", "CA_KEY_TOO_SMALL", "CA_MD_TOO_WEAK"})


def _key_problem(settings: TlsSettings, exc: ssl.SSLError) -> TlsFileError:
    reason = exc.reason or ""
    if reason == "KEY_VALUES_MISMATCH":
        return TlsFileError(
            "key_file", f"{settings.key_file} does not hold the private key of the certificate in {settings.cert_file}"
        )
    if reason in _CERT_REASONS:
        what = reason.lower().replace("_", " ")
        return TlsFileError("cert_file", f"{settings.cert_file}: refused by OpenSSL's security level ({what})")
    return TlsFileError("key_file", f"{settings.key_file}: no usable PEM private key in the file")
