"""The closed vocabulary of reasons a request is refused or fails.

One `Reason` drives the HTTP status, the JSON body, the log field and (later) the
metric label, so the four can never disagree.
"""

from __future__ import annotations

import enum
import json


class Reason(enum.Enum):
    """Why the gateway answered instead of the upstream. Values are stable identifiers."""

    # (status, OAuth-style error code, client-facing description)
    NO_ROUTE = ("no_route", 404, "not_found", "no route matches this request")
    BAD_PATH = ("bad_path", 400, "invalid_request", "the request path is not acceptable")
    UPSTREAM_UNREACHABLE = (
        "upstream_unreachable",
        502,
        "bad_gateway",
        "the upstream service could not be reached",
    )
    UPSTREAM_ERROR = (
        "upstream_error",
        502,
        "bad_gateway",
        "the upstream service sent an invalid response",
    )
    UPSTREAM_TIMEOUT = (
        "upstream_timeout",
        504,
        "gateway_timeout",
        "the upstream service did not answer in time",
    )
    INTERNAL = ("internal", 500, "internal_error", "the gateway failed to handle this request")

    def __init__(self, ident: str, status: int, error: str, description: str) -> None:
        self.ident = ident
        self.status = status
        self.error = error
        self.description = description
        # Precomputed once: the hot path only writes these bytes.
        self.body = json.dumps({"error": error, "error_description": description}).encode()

    def __str__(self) -> str:
        return self.ident
