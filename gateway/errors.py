"""The closed vocabulary of reasons a request is refused or fails.

One `Reason` drives the HTTP status, the JSON body, the `WWW-Authenticate` challenge
(RFC 6750 §3), the log field and the metric label, so they can never disagree. Client
descriptions are fixed strings: they never carry a token, a claim or exception text.
"""

from __future__ import annotations

import enum
import json
import traceback

_INVALID = "the access token is invalid"


class Reason(enum.Enum):
    """Why the gateway answered instead of the upstream. `ident` values are stable."""

    # ident, status, body error code, RFC 6750 challenge error (None: no challenge,
    # "": challenge without an error attribute), client description.
    NO_ROUTE = ("no_route", 404, "not_found", None, "no route matches this request")
    BAD_PATH = ("bad_path", 400, "invalid_request", None, "the request path is not acceptable")
    BAD_REQUEST = ("bad_request", 400, "invalid_request", None, "the request could not be parsed")
    BAD_METHOD = ("bad_method", 405, "method_not_allowed", None, "this request method is not accepted")

    TOKEN_MISSING = ("token_missing", 401, "invalid_token", "", "a bearer token is required")
    MULTIPLE_AUTHORIZATION = (
        "multiple_authorization",
        400,
        "invalid_request",
        "invalid_request",
        "send exactly one Authorization header",
    )
    MALFORMED_AUTHORIZATION = (
        "malformed_authorization",
        400,
        "invalid_request",
        "invalid_request",
        "the Authorization header is not 'Bearer <token>'",
    )
    QUERY_TOKEN = (
        "query_token",
        400,
        "invalid_request",
        "invalid_request",
        "send the token in the Authorization header (Bearer), not in the URL",
    )
    TOKEN_TOO_LARGE = ("token_too_large", 401, "invalid_token", "invalid_token", "the access token is too large")
    MALFORMED_TOKEN = ("malformed_token", 401, "invalid_token", "invalid_token", "the access token is malformed")
    ALG_NOT_ALLOWED = ("alg_not_allowed", 401, "invalid_token", "invalid_token", _INVALID)
    KEY_IN_TOKEN = ("key_in_token", 401, "invalid_token", "invalid_token", _INVALID)
    UNKNOWN_CRIT = ("unknown_crit", 401, "invalid_token", "invalid_token", _INVALID)
    TYP_MISMATCH = ("typ_mismatch", 401, "invalid_token", "invalid_token", _INVALID)
    ISSUER_MISMATCH = ("issuer_mismatch", 401, "invalid_token", "invalid_token", _INVALID)
    UNKNOWN_KID = ("unknown_kid", 401, "invalid_token", "invalid_token", _INVALID)
    BAD_SIGNATURE = ("bad_signature", 401, "invalid_token", "invalid_token", _INVALID)
    MISSING_CLAIM = ("missing_claim", 401, "invalid_token", "invalid_token", _INVALID)
    INVALID_CLAIM = ("invalid_claim", 401, "invalid_token", "invalid_token", _INVALID)
    EXPIRED = ("expired", 401, "invalid_token", "invalid_token", "the access token has expired")
    NOT_YET_VALID = ("not_yet_valid", 401, "invalid_token", "invalid_token", "the access token is not valid yet")
    ISSUED_IN_FUTURE = ("issued_in_future", 401, "invalid_token", "invalid_token", _INVALID)
    LIFETIME_TOO_LONG = ("lifetime_too_long", 401, "invalid_token", "invalid_token", _INVALID)
    AUDIENCE_MISMATCH = ("audience_mismatch", 401, "invalid_token", "invalid_token", _INVALID)
    REVOKED = ("revoked", 401, "invalid_token", "invalid_token", "the access token has been revoked")
    UNFORWARDABLE_CLAIM = (
        "unforwardable_claim",
        401,
        "invalid_token",
        "invalid_token",
        "the access token carries a claim that cannot be forwarded",
    )
    INSUFFICIENT_SCOPE = (
        "insufficient_scope",
        403,
        "insufficient_scope",
        "insufficient_scope",
        "the access token lacks a required scope",
    )
    CLAIM_MISMATCH = (
        "claim_mismatch",
        403,
        "insufficient_scope",
        "insufficient_scope",
        "the access token does not grant access to this resource",
    )
    # A CORS preflight the route's `cors` does not grant (gateway/cors.py). Answered here
    # with 403 and no CORS headers, never forwarded: to the browser any non-2xx preflight
    # is a failure, and to operators it is a counted refusal with its reason.
    CORS_ORIGIN_NOT_ALLOWED = (
        "cors_origin_not_allowed",
        403,
        "forbidden",
        None,
        "cross-origin requests from this origin are not allowed",
    )
    CORS_METHOD_NOT_ALLOWED = (
        "cors_method_not_allowed",
        403,
        "forbidden",
        None,
        "this method is not allowed for cross-origin requests",
    )
    CORS_HEADER_NOT_ALLOWED = (
        "cors_header_not_allowed",
        403,
        "forbidden",
        None,
        "a requested header is not allowed for cross-origin requests",
    )
    CLIENT_CERT_MISMATCH = (
        "client_cert_mismatch",
        403,
        "forbidden",
        None,
        "this resource requires a client certificate it accepts",
    )
    KEYS_UNAVAILABLE = (
        "keys_unavailable",
        503,
        "temporarily_unavailable",
        None,
        "token verification is not available yet; retry shortly",
    )

    OVERLOADED = (
        "overloaded",
        503,
        "temporarily_unavailable",
        None,
        "the gateway has too many connections; retry shortly",
    )

    WEBSOCKETS_FULL = (
        "websocket_limit",
        503,
        "temporarily_unavailable",
        None,
        "the gateway has too many WebSocket connections; retry shortly",
    )

    UPSTREAM_UNREACHABLE = (
        "upstream_unreachable",
        502,
        "bad_gateway",
        None,
        "the upstream service could not be reached",
    )
    UPSTREAM_ERROR = ("upstream_error", 502, "bad_gateway", None, "the upstream service sent an invalid response")
    UPSTREAM_TIMEOUT = ("upstream_timeout", 504, "gateway_timeout", None, "the upstream service did not answer in time")
    INTERNAL = ("internal", 500, "internal_error", None, "the gateway failed to handle this request")

    def __init__(self, ident: str, status: int, error: str, challenge: str | None, description: str) -> None:
        self.ident = ident
        self.status = status
        self.error = error
        self.challenge = challenge
        self.description = description
        # Precomputed once: the refusal path only writes these bytes.
        self.body = json.dumps({"error": error, "error_description": description}).encode()

    def www_authenticate(self, realm: str, scope: str = "") -> str | None:
        """The RFC 6750 §3 challenge for this reason, or None when none applies."""
        if self.challenge is None:
            return None
        parts = [f'realm="{realm}"']
        if self.challenge:
            parts.append(f'error="{self.challenge}"')
            parts.append(f'error_description="{self.description}"')
        if scope and self.status == 403:
            parts.append(f'scope="{scope}"')
        return "Bearer " + ", ".join(parts)

    def __str__(self) -> str:
        return self.ident


# Refusals made by the authentication step; counted in gateway_auth_failures_total.
AUTH_REASONS = frozenset(
    {
        Reason.TOKEN_MISSING,
        Reason.MULTIPLE_AUTHORIZATION,
        Reason.MALFORMED_AUTHORIZATION,
        Reason.QUERY_TOKEN,
        Reason.TOKEN_TOO_LARGE,
        Reason.MALFORMED_TOKEN,
        Reason.ALG_NOT_ALLOWED,
        Reason.KEY_IN_TOKEN,
        Reason.UNKNOWN_CRIT,
        Reason.TYP_MISMATCH,
        Reason.ISSUER_MISMATCH,
        Reason.UNKNOWN_KID,
        Reason.BAD_SIGNATURE,
        Reason.MISSING_CLAIM,
        Reason.INVALID_CLAIM,
        Reason.EXPIRED,
        Reason.NOT_YET_VALID,
        Reason.ISSUED_IN_FUTURE,
        Reason.LIFETIME_TOO_LONG,
        Reason.AUDIENCE_MISMATCH,
        Reason.REVOKED,
        Reason.UNFORWARDABLE_CLAIM,
        Reason.INSUFFICIENT_SCOPE,
        Reason.CLAIM_MISMATCH,
        Reason.CLIENT_CERT_MISMATCH,
        Reason.KEYS_UNAVAILABLE,
        # Access refusals too (of a browser origin rather than a token): counted in the
        # same family, so that one query shows everything the gateway turned away.
        Reason.CORS_ORIGIN_NOT_ALLOWED,
        Reason.CORS_METHOD_NOT_ALLOWED,
        Reason.CORS_HEADER_NOT_ALLOWED,
    }
)


def bug_report(exc: BaseException) -> str:
    """An unexpected exception for the log: its type and where it was raised, never its
    message, which can quote request data (URLs with query secrets, header values)."""
    return f"{type(exc).__name__}\n" + "".join(traceback.format_tb(exc.__traceback__)).rstrip()
