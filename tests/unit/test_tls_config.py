"""TLS settings at load: every unusable file stops the load with file:line, the field
and what is wrong (never the key's content); the handshake reasons are a closed set."""

from __future__ import annotations

import datetime
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.obs.metrics import TLS_FAILURE_REASONS, TLS_VERSIONS
from gateway.policy import ConfigError, load_policy
from gateway.tls import context
from gateway.tls.context import ChangedWhileReadingError, TlsSettings, load_tls
from gateway.tls.handshake import FAILURE_REASONS, failure_reason, version_label
from tests.certs import Authority
from tests.procs import gateway_cmd

ROUTES = """\
routes:
  - {name: ok, match: {prefix: /ok}, upstream: "http://127.0.0.1:81", auth: public}
"""


def policy(tmp_path: Path, tls: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"listen: 127.0.0.1:0\ntls:\n{tls}{ROUTES}")
    return path


def errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_policy(str(path))
    return list(info.value.lines)


PAIR = "  cert_file: tls.crt\n  key_file: tls.key\n"


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    authority = Authority()
    authority.server().write(tmp_path / "tls.crt", tmp_path / "tls.key")
    return authority


def test_a_good_pair_loads_with_secure_defaults(tmp_path: Path, ca: Authority) -> None:
    compiled = load_policy(str(policy(tmp_path, PAIR)))
    assert compiled.tls is not None
    context = compiled.tls.context
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE  # no client certificates asked for
    assert context.options & ssl.OP_NO_TICKET
    assert context.options & ssl.OP_NO_COMPRESSION
    assert compiled.tls.handshake_timeout == 10.0
    # The certificate files are not policy inputs: each worker re-reads them itself.
    assert compiled.inputs == (str(tmp_path / "gateway.yaml"),)


@pytest.mark.parametrize("spelling", ["1.3", "'1.3'"])
def test_min_version_1_3_is_allowed_quoted_or_not(tmp_path: Path, ca: Authority, spelling: str) -> None:
    compiled = load_policy(str(policy(tmp_path, PAIR + f"  min_version: {spelling}\n")))
    assert compiled.tls is not None
    assert compiled.tls.context.minimum_version == ssl.TLSVersion.TLSv1_3


def test_an_expired_certificate_stops_the_load_with_file_and_line(tmp_path: Path, ca: Authority) -> None:
    now = datetime.datetime.now(datetime.UTC)
    expired = ca.server(not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=2))
    expired.write(tmp_path / "tls.crt", tmp_path / "tls.key")
    path = policy(tmp_path, PAIR)
    when = expired.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert errors(path) == [f"{path}:3: tls.cert_file: {tmp_path}/tls.crt: the certificate expired at {when}"]


def test_a_key_that_does_not_match_the_certificate_stops_the_load(tmp_path: Path, ca: Authority) -> None:
    (tmp_path / "tls.key").write_bytes(ca.server().key_pem)
    path = policy(tmp_path, PAIR)
    assert errors(path) == [
        f"{path}:4: tls.key_file: {tmp_path}/tls.key does not hold the private key of the certificate"
        f" in {tmp_path}/tls.crt"
    ]


def test_unreadable_files_stop_the_load(tmp_path: Path, ca: Authority) -> None:
    path = policy(tmp_path, "  cert_file: missing.crt\n  key_file: tls.key\n")
    assert errors(path) == [f"{path}:3: tls.cert_file: cannot read {tmp_path}/missing.crt: No such file or directory"]
    path = policy(tmp_path, "  cert_file: tls.crt\n  key_file: missing.key\n")
    assert errors(path) == [f"{path}:4: tls.key_file: cannot read {tmp_path}/missing.key: No such file or directory"]


def test_files_without_pem_content_stop_the_load_and_are_never_quoted(tmp_path: Path, ca: Authority) -> None:
    (tmp_path / "tls.crt").write_text("hello\n")
    path = policy(tmp_path, PAIR)
    assert errors(path) == [
        f"{path}:3: tls.cert_file: {tmp_path}/tls.crt: no PEM certificate in the file"
        " (expected -----BEGIN CERTIFICATE-----)"
    ]
    ca.server().write(tmp_path / "tls.crt", tmp_path / "tls.key")
    secret = "SECRET-KEY-MATERIAL"
    (tmp_path / "tls.key").write_text(f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n")
    (line,) = errors(path)
    assert line == f"{path}:4: tls.key_file: {tmp_path}/tls.key: no usable PEM private key in the file"
    assert secret not in line


def test_an_encrypted_key_is_refused_without_a_prompt(tmp_path: Path, ca: Authority) -> None:
    issued = ca.server()
    key = load_pem_private_key(issued.key_pem, None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    (tmp_path / "tls.crt").write_bytes(issued.cert_pem)
    (tmp_path / "tls.key").write_bytes(encrypted)
    path = policy(tmp_path, PAIR)
    assert errors(path) == [
        f"{path}:4: tls.key_file: {tmp_path}/tls.key: the key is encrypted (expected an unencrypted PEM key)"
    ]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("  min_version: 1.1\n", "5: tls.min_version: unsupported TLS version '1.1' (expected 1.2 or 1.3;"),
        ("  min_version: '1.0'\n", "5: tls.min_version: unsupported TLS version '1.0' (expected 1.2 or 1.3;"),
        ("  handshake_timeout: 0s\n", "5: tls.handshake_timeout: 0s is out of range (expected 100ms to 1m)"),
        ("  handshake_timeout: 2m\n", "5: tls.handshake_timeout: 2m is out of range (expected 100ms to 1m)"),
        ("  client_auth: optional\n", "2: tls: client_auth need client_ca_file"),
        ("  client_ca_file: nope.pem\n", "5: tls.client_ca_file: cannot read"),
        ("  bogus: 1\n", "5: tls.bogus: unknown field 'bogus'"),
    ],
)
def test_bad_settings_are_located(tmp_path: Path, ca: Authority, extra: str, expected: str) -> None:
    path = policy(tmp_path, PAIR + extra)
    (line,) = errors(path)
    assert line.startswith(f"{path}:{expected}"), line


def test_gateway_check_refuses_an_expired_certificate_with_exit_2_and_describes_a_good_one(
    tmp_path: Path, ca: Authority
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca.server(not_before=now - datetime.timedelta(days=3), not_after=now - datetime.timedelta(seconds=1)).write(
        tmp_path / "tls.crt", tmp_path / "tls.key"
    )
    path = policy(tmp_path, PAIR)
    result = subprocess.run(
        gateway_cmd("check", "--config", str(path)), capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert f"{path}:3: tls.cert_file: {tmp_path}/tls.crt: the certificate expired at" in result.stderr
    # A good one is described: what it names, when it expires, which one it is.
    good = ca.server()
    good.write(tmp_path / "tls.crt", tmp_path / "tls.key")
    result = subprocess.run(
        gateway_cmd("check", "--config", str(path)), capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    expires = good.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    fingerprint = good.fingerprint.hex()[:16]
    expected = f"tls: subject CN=localhost, expires {expires}, sha256 {fingerprint}, TLS 1.2 or newer"
    assert expected in result.stdout.splitlines()


def test_failure_reasons_are_the_closed_set_the_metrics_bind() -> None:
    assert set(FAILURE_REASONS) == set(TLS_FAILURE_REASONS)
    assert {version_label(v) for v in ("TLSv1.2", "TLSv1.3", "TLSv1", None, "x")} == set(TLS_VERSIONS)


def _ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] something the peer sent")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (_ssl_error("UNSUPPORTED_PROTOCOL"), "protocol_version"),
        (_ssl_error("HTTP_REQUEST"), "not_tls"),
        (_ssl_error("WRONG_VERSION_NUMBER"), "not_tls"),
        (_ssl_error("NO_SHARED_CIPHER"), "no_shared_cipher"),
        (_ssl_error("TLSV1_ALERT_UNKNOWN_CA"), "certificate_refused"),
        (_ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"), "no_client_cert"),
        (_ssl_error("CERTIFICATE_VERIFY_FAILED"), "bad_client_cert"),
        (_ssl_error("SOMETHING_NEW"), "other"),
        (_ssl_error("GET / HTTP/1.1 chosen by the peer"), "other"),
        (ssl.SSLEOFError(8, "EOF"), "closed"),
        (ConnectionAbortedError("SSL handshake is taking longer than 10 seconds"), "timeout"),
        (ConnectionResetError(), "closed"),
        (ValueError("anything"), "other"),
    ],
)
def test_handshake_failures_map_to_a_closed_set(exc: BaseException, reason: str) -> None:
    assert failure_reason(exc) == reason
    assert reason in FAILURE_REASONS


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("X_Auth_Subject", "tls.client_subject_header: 'X_Auth_Subject' is the same header as 'X-Auth-Subject'"),
        ("Host", "tls.client_subject_header: 'Host' cannot carry a claim"),
        ("X-Forwarded-User", "tls.client_subject_header: 'X-Forwarded-User' cannot carry a claim"),
    ],
)
def test_the_subject_header_cannot_be_another_identity_header_or_a_forbidden_one(
    tmp_path: Path, ca: Authority, header: str, expected: str
) -> None:
    ca.write(tmp_path / "clients.pem")
    path = policy(tmp_path, PAIR + f"  client_ca_file: clients.pem\n  client_subject_header: {header}\n")
    assert any(expected in line for line in errors(path)), errors(path)


def test_the_subject_header_is_removed_from_every_inbound_request(tmp_path: Path, ca: Authority) -> None:
    ca.write(tmp_path / "clients.pem")
    path = policy(tmp_path, PAIR + "  client_ca_file: clients.pem\n  client_subject_header: X-Client-Subject\n")
    compiled = load_policy(str(path))
    assert compiled.identity.reserved("x-client-subject")
    assert compiled.tls is not None
    assert compiled.tls.context.verify_mode == ssl.CERT_REQUIRED  # client_auth defaults to required


def test_a_route_client_cert_requirement_needs_a_client_ca_and_rfc_4514_subjects(tmp_path: Path, ca: Authority) -> None:
    route = '  - {name: ok, match: {prefix: /ok}, upstream: "http://127.0.0.1:81", auth: public, '
    path = tmp_path / "gateway.yaml"
    path.write_text(f"tls:\n{PAIR}routes:\n{route}client_cert: {{subjects: [CN=ops]}}}}\n")
    assert errors(path) == [
        f"{path}:5: routes[0].client_cert: needs tls.client_ca_file (client certificates are only asked for with it)"
    ]
    ca.write(tmp_path / "clients.pem")
    path.write_text(
        f"tls:\n{PAIR}  client_ca_file: clients.pem\nroutes:\n"
        f"{route}client_cert: {{subjects: [CN=ops, 'O=A, CN=b']}}}}\n"
    )
    assert errors(path) == [
        f"{path}:6: routes[0].client_cert.subjects[1]: not an RFC 4514 name: 'O=A, CN=b'"
        " (expected e.g. CN=billing,O=Acme)"
    ]


def test_a_file_rewritten_while_it_is_loaded_is_reported_as_changed_not_as_bad(
    tmp_path: Path, ca: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = TlsSettings(cert_file=str(tmp_path / "tls.crt"), key_file=str(tmp_path / "tls.key"))
    assert load_tls(settings, time.time()).subject == "CN=localhost"
    real = context._read
    reads: list[str] = []
    newer = ca.server()

    def read(path: str, field: context.FileField) -> bytes:
        reads.append(field)
        # A rotation lands between the certificate's read and the key's: the key read is
        # the new one, and so is every read after it.
        if field == "key_file":
            return newer.key_pem
        return newer.cert_pem if reads.count("cert_file") > 1 else real(path, field)

    monkeypatch.setattr(context, "_read", read)
    with pytest.raises(ChangedWhileReadingError):
        load_tls(settings, time.time())
