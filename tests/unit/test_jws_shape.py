"""Every token parse_jws accepts starts `eyJ`, the shape the access log redacts."""

from __future__ import annotations

import base64

import pytest

from gateway.auth.jws import Jws, parse_jws
from gateway.errors import Reason
from gateway.obs.redact import MARKER, Redactor


def _b64(data: str) -> str:
    return base64.urlsafe_b64encode(data.encode()).rstrip(b"=").decode()


_CLAIMS = _b64('{"sub":"alice"}')


def _token(header: str) -> str:
    return f"{_b64(header)}.{_CLAIMS}.{_b64('signature')}"


@pytest.mark.parametrize(
    "header",
    [
        '{ "alg":"RS256"}',  # eyAi…
        '{\n"alg":"RS256"}',  # ewoi…
        '{"0":1,"alg":"RS256"}',  # eyIw…
        '{"":1,"alg":"RS256"}',  # eyIi…
    ],
)
def test_a_header_not_written_as_jose_libraries_write_it_is_malformed(header: str) -> None:
    # Found by tests/unit/test_properties_jwtshape.py: parse_jws checked only for `{`,
    # so these were accepted (and, if validly signed, verified), while the access log,
    # which finds tokens by `eyJ`, would have logged them whole in a Referer or path.
    token = _token(header)
    assert not token.startswith("eyJ")
    assert parse_jws(token) is Reason.MALFORMED_TOKEN


@pytest.mark.parametrize("header", ['{"alg":"RS256","kid":"k"}', '{"_x":1,"alg":"RS256"}', '{"\\u0061lg":"RS256"}'])
def test_a_jose_shaped_header_is_accepted_and_redacted(header: str) -> None:
    token = _token(header)
    assert isinstance(parse_jws(token), Jws)
    assert Redactor().text(f"see {token} here") == f"see {MARKER} here"
