"""Test certificates: a real CA, server and client certificates signed by it, with any
validity window (an expired one is backdated, never faked), written as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str, organisation: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organisation is not None:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    return x509.Name(parts)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM."""

    cert: x509.Certificate
    cert_pem: bytes
    key_pem: bytes

    def key_pem_encrypted(self, password: bytes) -> bytes:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )

    def write(self, cert_path: Path, key_path: Path) -> None:
        cert_path.write_bytes(self.cert_pem)
        key_path.write_bytes(self.key_pem)
        key_path.chmod(0o600)

    @property
    def fingerprint(self) -> bytes:
        return self.cert.fingerprint(hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Authority:
    """A self-signed CA that issues certificates."""

    name: str = "Test CA"
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        now = _now()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(self.name))
            .issuer_name(_name(self.name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.pem)
        return path

    def server(
        self,
        host: str = "localhost",
        *,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        loopback: bool = True,
    ) -> Issued:
        """A server certificate for `host` (and 127.0.0.1, unless not `loopback`)."""
        sans: list[x509.GeneralName] = [x509.DNSName(host)]
        if loopback:
            sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        return self._issue(_name(host), sans, ExtendedKeyUsageOID.SERVER_AUTH, not_before, not_after)

    def client(
        self, common_name: str, organisation: str | None = None, *, not_after: datetime.datetime | None = None
    ) -> Issued:
        """A client certificate whose subject is CN=`common_name` (and O=`organisation`)."""
        return self._issue(_name(common_name, organisation), [], ExtendedKeyUsageOID.CLIENT_AUTH, None, not_after)

    def _issue(
        self,
        subject: x509.Name,
        sans: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        not_before: datetime.datetime | None,
        not_after: datetime.datetime | None,
    ) -> Issued:
        now = _now()
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - DAY)
            .not_valid_after(not_after or now + 10 * DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            # Python 3.13's default contexts verify strictly (VERIFY_X509_STRICT), which
            # wants these two, as any real CA's certificates have them.
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert, cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))
